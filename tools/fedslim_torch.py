#!/usr/bin/python3
"""Load a fedslim model into PyTorch.

    import fedslim_torch
    model, arch = fedslim_torch.load("student.safetensors")   # torch.nn.Module in eval mode
    logits = model(fedslim_torch.normalize(images, arch))      # images: float [N, C, H, W] in [0, 1]

A fedslim model is a safetensors file: tensors under torchvision state_dict names and the
architecture as JSON under __metadata__["fedslim.arch"] (docs/model-format.md). This module builds
the matching torch.nn.Module from that JSON -- ResNets (BasicBlock / Bottleneck, CIFAR or ImageNet
stem, any depths and per-block widths, blocks dropped and renumbered, factorized "<name>.0/.1"
layers, int8 and N:M-sparse layers) and MLPs -- and loads the weights with
load_state_dict(strict=True), so every tensor must match. It needs only torch and the standard
library (no `safetensors` package).

int8 layers ("qbits": 8) run as fedslim runs them: the weight is dequantized (I8 code x
weight_scale per output channel), the layer's batch norm is folded into its bias, and its input is
fake-quantized to uint8 with input_scale / input_zero_point, rounding half to even as fedslim does.
N:M layers ("nm": [N, M]) store only the kept weights plus "<name>.weight_nm_index"; they are
decompressed to dense weights with zeros.

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


def fake_quant_u8(x, scale, zero_point):
    """(clamp(round(x / s) + z, 0, 255) - z) * s: fedslim's uint8 input quantization."""
    return (torch.clamp(torch.round(x / scale) + zero_point, 0, 255) - zero_point) * scale


class _QuantInput:
    def _quant_buffers(self, out):
        self.register_buffer("weight_scale", torch.ones(out))
        self.register_buffer("input_scale", torch.ones(1))
        self.register_buffer("input_zero_point", torch.zeros(1))

    def _q(self, x):
        return fake_quant_u8(x, self.input_scale, self.input_zero_point)


class QConv2d(nn.Conv2d, _QuantInput):
    """An int8 conv (weights already dequantized) with a fake-quantized uint8 input."""
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._quant_buffers(self.out_channels)

    def forward(self, x):
        return super().forward(self._q(x))


class QLinear(nn.Linear, _QuantInput):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._quant_buffers(self.out_features)

    def forward(self, x):
        return super().forward(self._q(x))


def _conv(cin, cout, k, stride, pad, opts):
    opts = opts or {}
    rank, q8 = opts.get("rank", 0), opts.get("qbits") == 8
    conv = QConv2d if q8 else nn.Conv2d
    if rank:       # an int8 layer's folded batch norm is the bias of its last factor
        return nn.Sequential(conv(cin, rank, k, stride, pad, bias=False),
                             conv(rank, cout, 1, 1, 0, bias=q8))
    return conv(cin, cout, k, stride, pad, bias=q8)


def _bn(width, opts):
    """The batch norm after a conv, or nothing if it was folded into an int8 conv."""
    return nn.Identity() if (opts or {}).get("qbits") == 8 else nn.BatchNorm2d(width)


def _linear(cin, cout, opts):
    opts = opts or {}
    rank = opts.get("rank", 0)
    lin = QLinear if opts.get("qbits") == 8 else nn.Linear
    if rank:
        return nn.Sequential(lin(cin, rank, bias=False), lin(rank, cout))
    return lin(cin, cout)


class BasicBlock(nn.Module):
    def __init__(self, cin, b, width):
        super().__init__()
        opts = b.get("conv", [{}, {}])
        mid = b["mid"][0]
        self.conv1 = _conv(cin, mid, 3, b["stride"], 1, opts[0])
        self.bn1 = _bn(mid, opts[0])
        self.conv2 = _conv(mid, width, 3, 1, 1, opts[1])
        self.bn2 = _bn(width, opts[1])
        self.downsample = None
        if b["downsample"]:
            self.downsample = nn.Sequential(_conv(cin, width, 1, b["stride"], 0, b.get("ds")),
                                            _bn(width, b.get("ds")))

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
        self.bn1 = _bn(m1, opts[0])
        self.conv2 = _conv(m1, m2, 3, b["stride"], 1, opts[1])
        self.bn2 = _bn(m2, opts[1])
        self.conv3 = _conv(m2, width, 1, 1, 0, opts[2])
        self.bn3 = _bn(width, opts[2])
        self.downsample = None
        if b["downsample"]:
            self.downsample = nn.Sequential(_conv(cin, width, 1, b["stride"], 0, b.get("ds")),
                                            _bn(width, b.get("ds")))

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
        self.bn1 = _bn(a["stem_width"], a.get("stem_opts"))
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
    for layer in _layer_opts(arch).values():
        if layer.get("qbits") not in (None, 0, 8):
            raise ValueError("qbits %r is not supported (8 only)" % layer.get("qbits"))
    return ResNet(arch) if arch["type"] == "resnet" else MLP(arch)


def _layer_opts(arch):
    """module name -> layer options, for every conv / linear layer of the architecture"""
    if arch["type"] != "resnet":
        return {"fc%d" % (i + 1): o or {} for i, o in enumerate(arch.get("layers") or [])}
    out = {"conv1": arch.get("stem_opts") or {}, "fc": arch.get("fc_opts") or {}}
    for s, st in enumerate(arch.get("stages", [])):
        for i, b in enumerate(st["blocks"]):
            for k, o in enumerate(b.get("conv", [])):
                out["layer%d.%d.conv%d" % (s + 1, i, k + 1)] = o or {}
            out["layer%d.%d.downsample.0" % (s + 1, i)] = b.get("ds") or {}
    return out


def _unpack(tensors, arch, expected):
    """Stored layers -> dense float tensors: I8 weights x weight_scale, N:M kept values placed at
    their positions (weight_nm_index) among zeros."""
    opts = _layer_opts(arch)
    out = {}
    for name, t in tensors.items():
        if name.endswith(".weight_nm_index"):
            continue
        if name.endswith(".weight") and t.dtype == torch.int8:
            scale = tensors[name[:-len("weight")] + "weight_scale"].float()
            t = t.float() * scale.view(-1, *([1] * (t.dim() - 1)))
        index = tensors.get(name + "_nm_index")
        if index is not None:
            module = name[:-len(".weight")]
            o = opts.get(module) or opts.get(module.rsplit(".", 1)[0]) or {}
            n, m = o["nm"]
            shape = expected[name].shape
            oc, kept = t.shape
            groups = kept // n
            # positions packed b bits each (b = 1, 2, 4 or 8), low bits first, rows byte-aligned
            b = 1 if m <= 2 else 2 if m <= 4 else 4 if m <= 16 else 8
            bit = torch.arange(kept) * b
            pos = (index.long()[:, bit // 8] >> (bit % 8)) & ((1 << b) - 1)
            dense = torch.zeros(oc, groups, m, dtype=torch.float32)
            dense.scatter_(2, pos.view(oc, groups, n), t.float().view(oc, groups, n))
            t = dense.view(shape)
        out[name] = t
    return out


def load(path):
    """(model in eval mode, arch dict) from a fedslim .safetensors file."""
    tensors, meta = read_safetensors(path)
    if "fedslim.arch" not in meta:
        raise ValueError("%s: no fedslim.arch metadata (a plain state_dict?)" % path)
    arch = json.loads(meta["fedslim.arch"])
    model = build(arch)
    tensors = _unpack(tensors, arch, model.state_dict())
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
