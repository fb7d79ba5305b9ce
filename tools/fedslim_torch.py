#!/usr/bin/python3
"""Load a fedslim model into PyTorch.

    import fedslim_torch
    model, arch = fedslim_torch.load("student.safetensors")   # torch.nn.Module in eval mode
    logits = model(fedslim_torch.normalize(images, arch))      # images: float [N, C, H, W] in [0, 1]

A fedslim model is a safetensors file: tensors under torchvision state_dict names and the
architecture as JSON under __metadata__["fedslim.arch"] (docs/model-format.md). This module builds
the matching torch.nn.Module from that JSON -- ResNets (BasicBlock / Bottleneck, CIFAR or ImageNet
stem, any depths and per-block widths, blocks dropped and renumbered, factorized "<name>.0/.1"
layers) and MLPs -- and loads the weights with load_state_dict(strict=True), so every tensor must
match. It needs only torch and the standard library (no `safetensors` package).

Command line (used by the tests):
    fedslim_torch.py MODEL.safetensors --eval-idx IMAGES.gz LABELS.gz [--limit N]
prints {"n", "accuracy", "loss"} as JSON: PyTorch's evaluation of the model on an IDX dataset.
"""
import argparse
import gzip
import json
import math
import struct
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I8": torch.int8,
           "U8": torch.uint8, "I32": torch.int32, "I64": torch.int64}


def read_safetensors(path):
    """Returns (tensors: dict name -> torch.Tensor, metadata: dict)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", None) or {}
    base = 8 + n
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        buf = bytearray(data[base + begin:base + end])
        dtype = _DTYPES[info["dtype"]]
        t = torch.frombuffer(buf, dtype=dtype) if len(buf) else torch.empty(0, dtype=dtype)
        tensors[name] = t.reshape(info["shape"]).clone()
    return tensors, meta


def _conv(cin, cout, k, stride, pad, opts):
    rank = (opts or {}).get("rank", 0)
    if rank:
        return nn.Sequential(nn.Conv2d(cin, rank, k, stride, pad, bias=False),
                             nn.Conv2d(rank, cout, 1, 1, 0, bias=False))
    return nn.Conv2d(cin, cout, k, stride, pad, bias=False)


def _linear(cin, cout, opts):
    rank = (opts or {}).get("rank", 0)
    if rank:
        return nn.Sequential(nn.Linear(cin, rank, bias=False), nn.Linear(rank, cout))
    return nn.Linear(cin, cout)


class BasicBlock(nn.Module):
    def __init__(self, cin, b, width):
        super().__init__()
        opts = b.get("conv", [{}, {}])
        mid = b["mid"][0]
        self.conv1 = _conv(cin, mid, 3, b["stride"], 1, opts[0])
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = _conv(mid, width, 3, 1, 1, opts[1])
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = None
        if b["downsample"]:
            self.downsample = nn.Sequential(_conv(cin, width, 1, b["stride"], 0, b.get("ds")),
                                            nn.BatchNorm2d(width))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    def __init__(self, cin, b, width):
        super().__init__()
        opts = b.get("conv", [{}, {}, {}])
        m1, m2 = b["mid"]
        self.conv1 = _conv(cin, m1, 1, 1, 0, opts[0])
        self.bn1 = nn.BatchNorm2d(m1)
        self.conv2 = _conv(m1, m2, 3, b["stride"], 1, opts[1])
        self.bn2 = nn.BatchNorm2d(m2)
        self.conv3 = _conv(m2, width, 1, 1, 0, opts[2])
        self.bn3 = nn.BatchNorm2d(width)
        self.downsample = None
        if b["downsample"]:
            self.downsample = nn.Sequential(_conv(cin, width, 1, b["stride"], 0, b.get("ds")),
                                            nn.BatchNorm2d(width))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class ResNet(nn.Module):
    def __init__(self, a):
        super().__init__()
        c = a["input"][0]
        imagenet = a["stem"] == "imagenet"
        self.conv1 = _conv(c, a["stem_width"], 7 if imagenet else 3, 2 if imagenet else 1,
                           3 if imagenet else 1, a.get("stem_opts"))
        self.bn1 = nn.BatchNorm2d(a["stem_width"])
        self.maxpool = nn.MaxPool2d(3, 2, 1) if imagenet else None
        block = BasicBlock if a["block"] == "basic" else Bottleneck
        cin = a["stem_width"]
        for i, st in enumerate(a["stages"]):
            blocks = []
            for b in st["blocks"]:
                blocks.append(block(cin, b, st["width"]))
                cin = st["width"]
            setattr(self, "layer%d" % (i + 1), nn.Sequential(*blocks))
        self.n_stages = len(a["stages"])
        self.fc = _linear(cin, a["num_classes"], a.get("fc_opts"))

    def features(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        for i in range(self.n_stages):
            x = getattr(self, "layer%d" % (i + 1))(x)
        return x

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class MLP(nn.Module):
    def __init__(self, a):
        super().__init__()
        c, h, w = a["input"]
        dims = [c * h * w] + list(a.get("hidden", [])) + [a["num_classes"]]
        opts = a.get("layers") or [{}] * (len(dims) - 1)
        self.n = len(dims) - 1
        for i in range(self.n):
            setattr(self, "fc%d" % (i + 1), _linear(dims[i], dims[i + 1], opts[i]))

    def forward(self, x):
        x = torch.flatten(x, 1)
        for i in range(self.n):
            x = getattr(self, "fc%d" % (i + 1))(x)
            if i + 1 < self.n:
                x = F.relu(x)
        return x


def build(arch):
    """torch.nn.Module for a fedslim architecture (the parsed fedslim.arch JSON)."""
    if arch.get("version") != 1:
        raise ValueError("fedslim.arch version %r is not supported (this reads 1)"
                         % arch.get("version"))
    for layer in _layer_opts(arch):
        if layer.get("qbits") or layer.get("nm"):
            raise ValueError("int8 and N:M layers are not supported by this loader yet")
    return ResNet(arch) if arch["type"] == "resnet" else MLP(arch)


def _layer_opts(arch):
    out = [arch.get("stem_opts") or {}, arch.get("fc_opts") or {}]
    for st in arch.get("stages", []):
        for b in st["blocks"]:
            out += b.get("conv", []) + [b.get("ds") or {}]
    return out + list(arch.get("layers") or [])


def load(path):
    """(model in eval mode, arch dict) from a fedslim .safetensors file."""
    tensors, meta = read_safetensors(path)
    if "fedslim.arch" not in meta:
        raise ValueError("%s: no fedslim.arch metadata (a plain state_dict?)" % path)
    arch = json.loads(meta["fedslim.arch"])
    model = build(arch)
    state = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    for k, v in model.state_dict().items():   # PyTorch keeps a counter fedslim does not store
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = v
    model.load_state_dict(state, strict=True)
    return model.eval(), arch


def normalize(x, arch):
    """(x - mean) / std per channel, with the model's own normalisation."""
    c = x.shape[1]
    mean = torch.tensor(arch.get("mean", [0.0] * c), dtype=x.dtype).view(1, c, 1, 1)
    std = torch.tensor(arch.get("std", [1.0] * c), dtype=x.dtype).view(1, c, 1, 1)
    return (x - mean) / std


def _read_idx(path):
    raw = open(path, "rb").read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    return torch.frombuffer(bytearray(raw[4 + 4 * ndim:]), dtype=torch.uint8).reshape(dims)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--eval-idx", nargs=2, metavar=("IMAGES", "LABELS"), required=True)
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, arch = load(args.model)
    images = _read_idx(args.eval_idx[0]).float() / 255.0
    labels = _read_idx(args.eval_idx[1]).long()
    if args.limit:
        images, labels = images[:args.limit], labels[:args.limit]
    x = normalize(images.unsqueeze(1), arch)
    with torch.no_grad():
        logits = torch.cat([model(x[i:i + 500]) for i in range(0, len(x), 500)])
    loss = F.cross_entropy(logits, labels, reduction="sum").item() / len(labels)
    acc = (logits.argmax(1) == labels).float().mean().item()
    json.dump({"n": len(labels), "accuracy": acc, "loss": loss}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
