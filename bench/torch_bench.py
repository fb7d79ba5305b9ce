#!/usr/bin/python3
"""torch_bench.py — the PyTorch (1.13, CPU) peer of bench/bench_model.c: same networks, batch,
thread count and measurements, one configuration per call, one JSON line on stdout.

Networks:
  resnet20  1x28x28, conv1 3x3 1->16 (bias=False) + BN + ReLU, 3 stages x 3 BasicBlocks of
            widths 16/32/64, stride 2 and a 1x1-conv + BN shortcut (option B) opening stages 2
            and 3, global average pool, fc 64->10 (torchvision's BasicBlock layout and names).
  mlp       784-512-256-10 with ReLU.
Measurements on random inputs (uniform [-1, 1)) and random labels:
  train  model.train(); forward + F.cross_entropy + backward + SGD(lr 0.01, momentum 0.9,
         weight_decay 5e-4) step -> images/s
  infer  model.eval() under torch.no_grad() -> ms per batch
Median of REPS timed runs after warm-up; with 1 thread the process CPU time is used, with more
threads wall time (both are printed), exactly as bench_model does.

Usage: torch_bench.py MODEL MODE BATCH THREADS [REPS]
Run with OMP_NUM_THREADS=THREADS and the same OPENBLAS_CORETYPE as fedslim's binaries
(bench/run.sh does both).
"""
import json
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        idt = x if self.downsample is None else self.downsample(x)
        return F.relu(out + idt)


class ResNet20(nn.Module):
    def __init__(self, widths=(16, 32, 64), depths=(3, 3, 3), classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        for s, (w, n) in enumerate(zip(widths, depths)):
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(cin, w, 2 if (s > 0 and b == 0) else 1))
                cin = w
            setattr(self, "layer%d" % (s + 1), nn.Sequential(*blocks))
        self.nstages = len(widths)
        self.fc = nn.Linear(cin, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        for s in range(self.nstages):
            x = getattr(self, "layer%d" % (s + 1))(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256),
                         nn.ReLU(), nn.Linear(256, 10))


def fail(msg):
    sys.stderr.write("torch_bench.py: %s\n" % msg)
    sys.exit(2)


def parse_int(s, lo, hi, what):
    try:
        v = int(s)
    except ValueError:
        v = lo - 1
    if not lo <= v <= hi:
        fail("%s must be an integer in %d..%d, got '%s'" % (what, lo, hi, s))
    return v


def main(argv):
    if len(argv) not in (5, 6):
        fail("usage: torch_bench.py resnet20|mlp train|infer BATCH THREADS [REPS]")
    model_name, mode = argv[1], argv[2]
    if model_name not in ("resnet20", "mlp"):
        fail("model must be resnet20 or mlp, got '%s'" % model_name)
    if mode not in ("train", "infer"):
        fail("mode must be train or infer, got '%s'" % mode)
    B = parse_int(argv[3], 1, 1024, "BATCH")
    T = parse_int(argv[4], 1, 64, "THREADS")
    reps = parse_int(argv[5], 1, 64, "REPS") if len(argv) > 5 else 7
    torch.set_num_threads(T)
    torch.manual_seed(1)
    is_resnet = model_name == "resnet20"
    model = ResNet20() if is_resnet else mlp()
    x = torch.rand(B, 1, 28, 28) * 2 - 1
    y = torch.randint(0, 10, (B,))
    train = mode == "train"
    if train:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

        def step():
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
    else:
        model.eval()

        def step():
            with torch.no_grad():
                model(x)
    # same iteration counts as bench_model.c
    if train:
        iters = 2 if is_resnet else 40
    elif is_resnet:
        iters = 100 if B == 1 else 4
    else:
        iters = 2000 if B == 1 else 200
    for _ in range(max(iters, 3)):
        step()
    wall, cpu = [], []
    for _ in range(reps):
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(iters):
            step()
        cpu.append((time.process_time() - c0) / iters)
        wall.append((time.perf_counter() - w0) / iters)
    tw, tc = statistics.median(wall), statistics.median(cpu)
    vw, vc = (B / tw, B / tc) if train else (1e3 * tw, 1e3 * tc)
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({
        "name": "torch_%s_%s_b%d_t%d" % (model_name, mode, B, T),
        "value": round(vc if T == 1 else vw, 5), "unit": "img/s" if train else "ms",
        "clock": "cpu" if T == 1 else "wall", "wall_value": round(vw, 5),
        "cpu_value": round(vc, 5), "reps": reps, "iters": iters, "params": params,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled}),
        flush=True)


if __name__ == "__main__":
    main(sys.argv)
