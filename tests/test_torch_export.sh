#!/bin/sh
# test_torch_export.sh — compressed models load into PyTorch and compute what fedslim computes:
# a tiny teacher trained by `fedslim train` on a slice of Fashion-MNIST is compressed with
# drop-blocks, int8, N:M, N:M + int8 and drop-blocks + int8; for each output, `fedslim eval --json`
# and tools/fedslim_torch.py on the same images must agree (accuracy equal, loss within 1e-4
# relative). Also: int8 files hold I8 weights, N:M files are smaller than dense ones, and a bad
# --calibration is refused in one line.
set -eu
BIN=${FS_BIN_DIR:?}
SRC=${FS_SOURCE_DIR:?}
PY=/usr/bin/python3
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# IDX slices: 600 training images, 200 evaluation images (uncompressed IDX files)
$PY - "$T" <<'PY' || fail "making the IDX slices"
import gzip, sys
d = sys.argv[1]
base = "/usr/share/datasets/fashion-mnist/t10k-%s-idx%d-ubyte.gz"
for kind, nd, item in (("images", 3, 784), ("labels", 1, 1)):
    raw = gzip.open(base % (kind, nd)).read()
    off = 4 + 4 * nd
    for name, start, n in (("train", 0, 600), ("eval", 600, 200)):
        hdr = bytearray(raw[:off])
        hdr[4:8] = n.to_bytes(4, "big")
        with open("%s/%s-%s-idx%d-ubyte" % (d, name, kind, nd), "wb") as f:
            f.write(bytes(hdr) + raw[off + start * item:off + (start + n) * item])
PY

"$BIN/fedslim" train --arch resnet:basic:cifar:2,2:8,16 --data "idx:$T/train" --epochs 3 --batch 32 \
    --threads 1 -o "$T/teacher.safetensors" > "$T/train.log" 2>&1 || fail "train: $(tail -3 "$T/train.log")"

compress() {    # compress OUT ARGS...: from the teacher, 64 shots of the training slice
    out=$1
    shift
    "$BIN/fedslim" compress --model "$T/teacher.safetensors" --data "idx:$T/train" --shots 64 \
        --threads 1 --iterations 5 --score-iterations 2 --batch 16 --lr 0.002 \
        -o "$T/$out.safetensors" "$@" > "$T/$out.log" 2>&1 || fail "compress $out: $(tail -3 "$T/$out.log")"
}
compress dropped --methods drop-blocks --drop layer1.1
compress int8 --methods int8 --calibration mse
compress nm --methods nm
compress nm-int8 --methods nm,int8
compress dropped-int8 --methods drop-blocks,int8 --drop layer2.1 --calibration minmax

for m in teacher dropped int8 nm nm-int8 dropped-int8; do
    "$BIN/fedslim" eval --model "$T/$m.safetensors" --data "idx:$T/eval" --json --threads 1 \
        > "$T/$m.c.json" 2> "$T/$m.c.err" || fail "eval $m: $(cat "$T/$m.c.err")"
    $PY "$SRC/tools/fedslim_torch.py" "$T/$m.safetensors" \
        --eval-idx "$T/eval-images-idx3-ubyte" "$T/eval-labels-idx1-ubyte" > "$T/$m.t.json" \
        2> "$T/$m.t.err" || fail "fedslim_torch.py $m: $(tail -3 "$T/$m.t.err")"
    $PY - "$T/$m.c.json" "$T/$m.t.json" "$m" <<'PY' || fail "$m: fedslim and PyTorch disagree"
import json, sys
c, t = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
print("%-13s fedslim acc %.4f loss %.6f | torch acc %.4f loss %.6f"
      % (sys.argv[3], c["accuracy"], c["loss"], t["accuracy"], t["loss"]))
assert c["n"] == t["n"] == 200, (c["n"], t["n"])
assert round(c["correct"]) == round(t["accuracy"] * t["n"]), (c["correct"], t["accuracy"])
assert abs(c["loss"] - t["loss"]) <= 1e-4 * abs(t["loss"]), (c["loss"], t["loss"])
PY
done

# what the files hold: I8 weights for int8, packed positions for N:M, and smaller files
$PY - "$T" <<'PY' || fail "stored layers"
import json, os, struct, sys
d = sys.argv[1]
def header(name):
    raw = open("%s/%s.safetensors" % (d, name), "rb").read()
    return json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
size = {n: os.path.getsize("%s/%s.safetensors" % (d, n)) for n in ("teacher", "int8", "nm", "nm-int8")}
print("bytes:", size)
h = header("int8")
assert h["layer1.0.conv1.weight"]["dtype"] == "I8" and h["conv1.weight"]["dtype"] == "I8"
assert h["fc.weight"]["dtype"] == "I8" and "bn1.weight" not in h and "conv1.bias" in h
h = header("nm")
assert h["layer1.0.conv1.weight"]["shape"] == [8, 36], h["layer1.0.conv1.weight"]
assert h["layer1.0.conv1.weight_nm_index"] == {**h["layer1.0.conv1.weight_nm_index"],
                                               "dtype": "U8", "shape": [8, 9]}
assert h["conv1.weight"]["shape"] == [8, 1, 3, 3]       # the stem stays dense
assert size["nm"] < size["teacher"] * 0.75 and size["int8"] < size["teacher"] * 0.5
assert size["nm-int8"] < size["int8"]
PY

if "$BIN/fedslim" compress --model "$T/teacher.safetensors" --data "idx:$T/train" --shots 8 \
    --methods int8 --calibration kl -o "$T/x.safetensors" 2> "$T/err"; then
    fail "compress accepted --calibration kl"
fi
[ "$(wc -l < "$T/err")" -eq 1 ] && grep -q "'kl'" "$T/err" || fail "bad --calibration: $(cat "$T/err")"
echo "1 passed, 0 failed"
