#!/usr/bin/python3
"""PyTorch (Debian 1.13, oneDNN) peer figures for bench_kernels: the same ResNet-20 conv layers
(1x28x28 input, batch 64), forward + backward (data and weight), and a full ResNet-20 training
step (conv/BN/ReLU/GAP/linear/xent + SGD momentum). Prints JSON lines like bench_kernels.

    OMP_NUM_THREADS=1 /usr/bin/python3 bench/bench_kernels_torch.py [threads]
"""
import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

T = int(sys.argv[1]) if len(sys.argv) > 1 else 1
torch.set_num_threads(T)
torch.manual_seed(0)
B = 64
LAYERS = [  # name, C, H, OC, K, stride, pad, count
    ("stem_1to16", 1, 28, 16, 3, 1, 1, 1), ("s1_16to16", 16, 28, 16, 3, 1, 1, 6),
    ("s2_16to32_s2", 16, 28, 32, 3, 2, 1, 1), ("s2_down_1x1", 16, 28, 32, 1, 2, 0, 1),
    ("s2_32to32", 32, 14, 32, 3, 1, 1, 5), ("s3_32to64_s2", 32, 14, 64, 3, 2, 1, 1),
    ("s3_down_1x1", 32, 14, 64, 1, 2, 0, 1), ("s3_64to64", 64, 7, 64, 3, 1, 1, 5),
]


def emit(name, value, unit):
    print(json.dumps({"name": name, "value": round(value, 4), "unit": unit, "reference": None,
                      "ratio": None}), flush=True)


# One thread: the calling thread's CPU time (as bench_kernels does), else wall time.
clock = time.thread_time if T == 1 else time.perf_counter


def timeit(fn, reps=5):
    fn()
    ts = []
    for _ in range(reps):
        t0 = clock()
        fn()
        ts.append(clock() - t0)
    ts.sort()
    return ts[len(ts) // 2]


total_flops, total_t = 0.0, 0.0
for (name, C, H, OC, K, s, p, count) in LAYERS:
    x = torch.randn(B, C, H, H, requires_grad=(name != "stem_1to16"))
    w = torch.randn(OC, C, K, K, requires_grad=True)
    y = F.conv2d(x, w, None, s, p)
    g = torch.randn_like(y)
    OH = y.shape[2]
    flops = 2.0 * OC * C * K * K * B * OH * OH

    def step():
        out = F.conv2d(x, w, None, s, p)
        out.backward(g)

    t = timeit(step)
    dirs = 2 if name == "stem_1to16" else 3
    emit("torch_conv_%s_fwd_bwd_t%d" % (name, T), flops * dirs / t * 1e-9, "GFLOP/s")
    total_flops += flops * dirs * count
    total_t += t * count
emit("torch_conv_total_t%d" % T, total_flops / total_t * 1e-9, "GFLOP/s")
emit("torch_conv_only_train_img_per_s_t%d" % T, B / total_t, "img/s")


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x):
        o = F.relu(self.b1(self.c1(x)))
        o = self.b2(self.c2(o))
        return F.relu(o + (self.down(x) if self.down is not None else x))


net = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                    *[Block(16, 16, 1) for _ in range(3)], Block(16, 32, 2),
                    *[Block(32, 32, 1) for _ in range(2)], Block(32, 64, 2),
                    *[Block(64, 64, 1) for _ in range(2)], nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                    nn.Linear(64, 10))
opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
xb = torch.randn(B, 1, 28, 28)
yb = torch.randint(0, 10, (B,))


def train_step():
    opt.zero_grad()
    F.cross_entropy(net(xb), yb).backward()
    opt.step()


emit("torch_resnet20_train_img_per_s_t%d" % T, B / timeit(train_step, 7), "img/s")
