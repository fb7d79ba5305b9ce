#!/bin/bash
# bench/fewshot.sh — few-shot block dropping on a Fashion-MNIST ResNet-20 (`make bench-fewshot`).
# For 100 and 500 shots (balanced: 10 / 50 per class, fixed seed) and each recovery (none, bn, ce,
# mimic): `fedslim compress --methods drop-blocks --target latency=0.75`, evaluated on the test
# set; appends fewshot_dropblocks_<recovery>_<shots> entries (test accuracy in %, reference = the
# teacher's test accuracy, ratio = ours / teacher's) to bench/results.json, replacing earlier
# entries of the same names. Slow: every run scores the blocks and then recovers for ITERS
# iterations at batch 64 (docs/bench.md).
# Environment:
#   BUILD    build directory with bin/fedslim (default build)
#   TEACHER  teacher model (default /tmp/teacher/resnet20-fmnist.safetensors)
#   DATA     few-shot source (default idx:/usr/share/datasets/fashion-mnist/train)
#   EVAL     test set (default idx:/usr/share/datasets/fashion-mnist/t10k)
#   OUT      results file to append to (default bench/results.json)
#   SEED (1) ITERS (2000) SCORE_ITERS (300) THREADS (0 = all CPUs)
#   SHOTS    per-class shot counts (default "10 50"); RECOVER (default "none bn ce mimic")
#   WORK     directory for the compressed models and reports (default a fresh temporary one)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"
BUILD=${BUILD:-build}
FEDSLIM=$BUILD/bin/fedslim
TEACHER=${TEACHER:-/tmp/teacher/resnet20-fmnist.safetensors}
DATA=${DATA:-idx:/usr/share/datasets/fashion-mnist/train}
EVAL=${EVAL:-idx:/usr/share/datasets/fashion-mnist/t10k}
OUT=${OUT:-bench/results.json}
SEED=${SEED:-1}
ITERS=${ITERS:-2000}
SCORE_ITERS=${SCORE_ITERS:-300}
THREADS=${THREADS:-0}
SHOTS=${SHOTS:-10 50}
RECOVER=${RECOVER:-none bn ce mimic}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

die() { echo "bench/fewshot.sh: $*" >&2; exit 1; }
[ -x "$FEDSLIM" ] || die "$FEDSLIM not found: build first (make build, or set BUILD=<dir>)"
[ -f "$TEACHER" ] || die "teacher $TEACHER not found (set TEACHER=<model.safetensors>)"
for v in SEED ITERS SCORE_ITERS THREADS; do
    case ${!v} in ''|*[!0-9]*) die "$v must be a non-negative integer, got '${!v}'";; esac
done
if [ -z "${WORK:-}" ]; then
    WORK=$(mktemp -d /tmp/fedslim-fewshot.XXXXXX)
fi
mkdir -p "$WORK"
[ -f "$OUT" ] || echo '[]' >"$OUT"

echo "bench/fewshot.sh: teacher $TEACHER, load average $(cut -d' ' -f1-3 /proc/loadavg), work $WORK" >&2
reports=()
for per in $SHOTS; do
    case $per in ''|*[!0-9]*) die "SHOTS must hold positive integers, got '$per'";; esac
    for rec in $RECOVER; do
        shots=$((per * 10))
        tag=${rec}_${shots}
        echo "bench/fewshot.sh: drop-blocks latency=0.75, recover $rec, $shots shots ($per per class)" >&2
        "$FEDSLIM" compress --model "$TEACHER" --data "$DATA" --shots "$per" --per-class \
            --seed "$SEED" --methods drop-blocks --target latency=0.75 --recover "$rec" \
            --iterations "$ITERS" --score-iterations "$SCORE_ITERS" --threads "$THREADS" \
            --eval "$EVAL" -o "$WORK/dropblocks_$tag.safetensors" \
            --report "$WORK/dropblocks_$tag.json" >"$WORK/dropblocks_$tag.txt"
        cat "$WORK/dropblocks_$tag.txt" >&2
        reports+=("$tag=$WORK/dropblocks_$tag.json")
    done
done

python3 - "$OUT" "$ITERS" "$SCORE_ITERS" "$SEED" "${reports[@]}" <<'EOF'
import json, sys
out, iters, siters, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
try:
    results = json.load(open(out))
except ValueError as e:
    sys.exit("bench/fewshot.sh: %s is not JSON: %s" % (out, e))
if not isinstance(results, list):
    sys.exit("bench/fewshot.sh: %s: expected a JSON list" % out)
new = []
for arg in sys.argv[5:]:
    tag, path = arg.split("=", 1)
    rep = json.load(open(path))
    teacher = rep.get("teacher", {})
    models = rep.get("models", [])
    if not models or not teacher.get("eval") or not models[0].get("eval"):
        sys.exit("bench/fewshot.sh: %s: no evaluated model in the report" % path)
    m = models[0]
    acc, tacc = 100.0 * m["accuracy"], 100.0 * teacher["accuracy"]
    new.append({"name": "fewshot_dropblocks_" + tag, "value": round(acc, 2), "unit": "%",
                "reference": round(tacc, 2), "ratio": round(acc / tacc, 4) if tacc > 0 else None,
                "source": "fewshot", "dropped": m.get("dropped"),
                "latency_ratio": round(m.get("latency_ratio", 0), 4),
                "samples": rep.get("samples"), "iterations": iters, "score_iterations": siters,
                "seed": seed, "agreement": round(100.0 * m["eval"]["agreement"], 2)})
names = {e["name"] for e in new}
results = [e for e in results if e.get("name") not in names] + new
with open(out, "w") as f:
    json.dump(results, f, indent=1)
    f.write("\n")
for e in new:
    print("%-32s %6.2f %%  teacher %6.2f %%  dropped %s  latency x%.2f" %
          (e["name"], e["value"], e["reference"], ",".join(e["dropped"] or []), e["latency_ratio"]))
EOF
