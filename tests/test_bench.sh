#!/bin/sh
# test_bench.sh — bench/bench_model, bench/merge.py and bench/torch_bench.py (tests/bench.cmake).
# Needs FS_SOURCE_DIR and FS_BIN_DIR (set by ctest).
set -eu
src=${FS_SOURCE_DIR:?}
bin=${FS_BIN_DIR:?}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "test_bench: FAIL: $*" >&2; exit 1; }
export FS_NO_BLAS_REEXEC=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

# 1. one JSON line per configuration, with the fields run.sh and merge.py rely on
"$bin/bench_model" mlp train 8 1 1 >"$tmp/mlp.json" || fail "bench_model mlp train failed"
"$bin/bench_model" resnet20 infer 2 2 1 >"$tmp/res.json" || fail "bench_model resnet20 infer failed"
python3 - "$tmp/mlp.json" "$tmp/res.json" <<'PY' || fail "bench_model output"
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert len(a) == 1 and len(b) == 1, (a, b)
a, b = a[0], b[0]
assert a["name"] == "mlp_train_b8_t1" and a["unit"] == "img/s" and a["value"] > 0, a
assert a["clock"] == "cpu" and a["value"] == a["cpu_value"] and a["params"] == 535818, a
assert b["name"] == "resnet20_infer_b2_t2" and b["unit"] == "ms" and b["value"] > 0, b
assert b["clock"] == "wall" and b["value"] == b["wall_value"] and b["params"] == 272186, b
assert 62 < b["mflop_per_img"] < 63, b
PY
"$bin/bench_model" --describe | python3 -c 'import json,sys; d=json.load(sys.stdin); assert "OpenBLAS" in d["blas"], d' \
    || fail "bench_model --describe"

# 2. bad arguments: exit status 2 and a message naming the argument
for args in "vgg train 8 1" "mlp fit 8 1" "mlp train 0 1" "mlp train 8 x" "mlp train 8 1 65" "mlp"; do
    # shellcheck disable=SC2086
    if "$bin/bench_model" $args >/dev/null 2>"$tmp/err"; then fail "bench_model $args succeeded"; fi
    [ -s "$tmp/err" ] || fail "bench_model $args: no message"
done
"$bin/bench_model" mlp train 8 1 65 2>"$tmp/err" >/dev/null && fail "REPS 65 accepted"
grep -q "REPS must be" "$tmp/err" || fail "bench_model: the REPS error does not name REPS"

# 3. merge.py: pairs ours with PyTorch's, ratio > 1 means fedslim is ahead for both units
cat >"$tmp/raw.jsonl" <<'RAW'
{"source":"bench_model","pair":0,"name":"m_train_b64_t1","value":100,"unit":"img/s","params":5}
{"source":"torch_bench","pair":0,"name":"torch_m_train_b64_t1","value":40,"unit":"img/s","params":5}
{"source":"torch_bench","pair":1,"name":"torch_m_train_b64_t1","value":60,"unit":"img/s","params":5}
{"source":"bench_model","pair":1,"name":"m_train_b64_t1","value":100,"unit":"img/s","params":5}
{"source":"bench_model","pair":2,"name":"m_infer_b1_t1","value":2,"unit":"ms","params":5}
{"source":"torch_bench","pair":2,"name":"torch_m_infer_b1_t1","value":3,"unit":"ms","params":5}
{"source":"bench_kernels","name":"conv_gemm_efficiency","value":1.3,"unit":"ratio","reference":1,"ratio":1.3}
RAW
python3 "$src/bench/merge.py" "$tmp/raw.jsonl" "$tmp/out.json" || fail "merge.py failed"
python3 - "$tmp/out.json" <<'PY' || fail "merge.py output"
import json, sys
r = {e["name"]: e for e in json.load(open(sys.argv[1]))}
t = r["m_train_b64_t1"]
assert t["value"] == 100 and t["reference"] == 50 and t["ratio"] == 2, t
i = r["m_infer_b1_t1"]
assert i["reference"] == 3 and i["ratio"] == 1.5, i
k = r["conv_gemm_efficiency"]
assert k["ratio"] == 1.3 and k["source"] == "bench_kernels", k
PY
sed 's/"torch_m_infer_b1_t1","value":3,"unit":"ms","params":5/"torch_m_infer_b1_t1","value":3,"unit":"ms","params":6/' \
    "$tmp/raw.jsonl" >"$tmp/bad.jsonl"
if python3 "$src/bench/merge.py" "$tmp/bad.jsonl" "$tmp/bad.json" 2>"$tmp/err"; then
    fail "merge.py accepted different parameter counts"
fi
grep -q "parameter counts differ" "$tmp/err" || fail "merge.py: no parameter-count message"
echo 'not json' >>"$tmp/raw.jsonl"
if python3 "$src/bench/merge.py" "$tmp/raw.jsonl" "$tmp/bad.json" 2>"$tmp/err"; then
    fail "merge.py accepted a non-JSON line"
fi
grep -q "raw.jsonl:8: not JSON" "$tmp/err" || fail "merge.py: bad line not named"

# 4. torch_bench.py builds networks of the same size as fedslim's (when PyTorch is installed)
if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
    for m in resnet20 mlp; do
        /usr/bin/python3 "$src/bench/torch_bench.py" $m infer 2 1 1 >"$tmp/t.json" \
            || fail "torch_bench.py $m failed"
        "$bin/bench_model" $m infer 2 1 1 >"$tmp/o.json" || fail "bench_model $m infer failed"
        python3 - "$tmp/t.json" "$tmp/o.json" <<'PY' || fail "torch_bench.py $m: different network"
import json, sys
t, o = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
assert t["name"] == "torch_" + o["name"] and t["unit"] == o["unit"], (t, o)
assert t["params"] == o["params"], (t["params"], o["params"])
PY
    done
else
    echo "test_bench: PyTorch not installed, torch_bench.py not checked"
fi
# 5. bench_round: two idle agent processes, one streamed and one whole-reply run; the entries
#    run.sh expects, and the summed gradient checked inside (exit status)
for mode in "" --whole; do
    # shellcheck disable=SC2086
    "$bin/bench_round" 0.27m 2 1 $mode >"$tmp/round.json" 2>"$tmp/round.err" \
        || { cat "$tmp/round.err" >&2; fail "bench_round 0.27m 2 1 $mode failed"; }
    python3 - "$tmp/round.json" "$mode" <<'PY' || fail "bench_round output"
import json, sys
rows = {r["name"]: r for r in map(json.loads, open(sys.argv[1]))}
sfx = "_whole" if sys.argv[2] else ""
t, m = rows["round_overhead_0.27m_2" + sfx], rows["coordinator_rss_0.27m_2" + sfx]
assert t["unit"] == "s" and 0 < t["value"] < 60 and t["reference"] > 0 and t["params"] == 272474, t
assert m["unit"] == "B" and m["value"] > 1e6 and m["reference"] > 0 and m["ratio"] > 0, m
PY
done
if "$bin/bench_round" 1m 2 >/dev/null 2>"$tmp/err"; then fail "bench_round 1m accepted"; fi
grep -q "usage" "$tmp/err" || fail "bench_round: no usage message"
echo "test_bench: ok"
