#!/bin/sh
# test_cli_model.sh — the model commands as a user runs them: `fedslim import` of a state_dict saved
# from PyTorch, `fedslim inspect` (text and --json), `fedslim eval --json` on real Fashion-MNIST
# images, and clear one-line errors (non-zero exit, naming the file) for bad input.
set -eu
BIN=${FS_BIN_DIR:?}
SRC=${FS_SOURCE_DIR:?}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$BIN/fedslim" import "$SRC/tests/fixtures/model/resnet20.safetensors" --input 1x28x28 \
    --mean 0.286 --std 0.353 -o "$T/r20.safetensors" 2> "$T/import.err" || fail "import: $(cat "$T/import.err")"
"$BIN/fedslim" inspect "$T/r20.safetensors" > "$T/inspect.txt"
grep -q "layer3.2.conv2" "$T/inspect.txt" || fail "inspect lists no layer3.2.conv2"
"$BIN/fedslim" inspect --json "$T/r20.safetensors" > "$T/inspect.json"
/usr/bin/python3 - "$T/inspect.json" "$SRC/tests/fixtures/model/resnet20.safetensors" <<'PY' || fail "inspect --json"
import json, struct, sys
j = json.load(open(sys.argv[1]))
raw = open(sys.argv[2], "rb").read()
hdr = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
want = 0
for name, t in hdr.items():     # parameters as PyTorch counts them: no BN buffers
    if name == "__metadata__" or name.endswith(("running_mean", "running_var", "num_batches_tracked")):
        continue
    n = 1
    for s in t["shape"]:
        n *= s
    want += n
assert j["params"] == want, (j["params"], want)
assert j["arch"]["stages"][2]["width"] == 64
assert sum(l["params"] for l in j["layers"]) == j["params"]
PY
# the first 500 test images as an IDX pair of their own (the whole set is slow under ASan)
/usr/bin/python3 - "$T" <<'PY'
import gzip, struct, sys
d = "/usr/share/datasets/fashion-mnist/t10k"
img = gzip.open(d + "-images-idx3-ubyte.gz").read()
lab = gzip.open(d + "-labels-idx1-ubyte.gz").read()
n = 500
open(sys.argv[1] + "/small-images-idx3-ubyte", "wb").write(struct.pack(">IIII", 0x803, n, 28, 28) + img[16:16 + n * 784])
open(sys.argv[1] + "/small-labels-idx1-ubyte", "wb").write(struct.pack(">II", 0x801, n) + lab[8:8 + n])
PY
"$BIN/fedslim" eval --model "$T/r20.safetensors" --data "idx:$T/small" --json > "$T/eval.json"
/usr/bin/python3 -c "import json,sys; j=json.load(open('$T/eval.json')); assert j['n']==500 and 0<=j['accuracy']<=1 and len(j['per_class'])==10" \
    || fail "eval --json"

# bad input: one line naming the problem, non-zero exit, no crash
printf 'garbage' > "$T/bad.safetensors"
if "$BIN/fedslim" inspect "$T/bad.safetensors" 2> "$T/err"; then fail "inspect accepted garbage"; fi
[ "$(wc -l < "$T/err")" -eq 1 ] || fail "more than one error line: $(cat "$T/err")"
grep -q "bad.safetensors" "$T/err" || fail "error does not name the file: $(cat "$T/err")"
if "$BIN/fedslim" eval --model "$T/r20.safetensors" --data idx:/nonexistent/x 2> "$T/err"; then
    fail "eval accepted a missing dataset"
fi
grep -q "/nonexistent/x" "$T/err" || fail "error does not name the data: $(cat "$T/err")"
if "$BIN/fedslim" train --arch resnet99 --data idx:/usr/share/datasets/fashion-mnist/t10k -o "$T/x" 2> "$T/err"; then
    fail "train accepted an unknown architecture"
fi
grep -q "resnet99" "$T/err" || fail "error does not name the architecture"
if "$BIN/fedslim" import "$SRC/tests/fixtures/model/resnet20.safetensors" --input 1x28 --mean 0 --std 1 -o "$T/y" 2> "$T/err"; then
    fail "import accepted a bad --input"
fi
echo "1 passed, 0 failed"
