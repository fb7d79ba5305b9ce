#!/bin/bash
# bench/fewshot.sh — few-shot compression quality on a Fashion-MNIST ResNet-20 (`make bench-fewshot`).
# For 100 and 500 shots (balanced: 10 / 50 per class, fixed seed), evaluated on the test set:
#   dropblocks  `--methods drop-blocks --target latency=0.75`, each recovery (none, bn, ce, mimic)
#   prunechannels `--methods prune-channels --target flops=0.5`, each recovery
#   int8        `--methods int8` on the teacher, calibrated on the same shots, each calibration
# and appends fewshot_<method>_<recovery>_<shots> (int8: fewshot_int8_<calibration>_<shots>)
# entries (test accuracy in %, reference = the float teacher's test accuracy, ratio = ours /
# teacher's) to bench/results.json after every run, replacing earlier entries of the same names.
# Slow: drop-blocks scores the blocks, and every recovery but none/bn runs ITERS iterations at
# batch 64 (docs/bench.md).
# Environment:
#   BUILD    build directory with bin/fedslim (default build)
#   TEACHER  teacher model (default models/resnet20-fmnist.safetensors)
#   DATA     few-shot source (default idx:/usr/share/datasets/fashion-mnist/train)
#   EVAL     test set (default idx:/usr/share/datasets/fashion-mnist/t10k)
#   OUT      results file to append to (default bench/results.json)
#   SEED (1) ITERS (2000) SCORE_ITERS (300) THREADS (0 = all CPUs)
#   LR, BN   passed as --lr / --bn when set (default: the CLI's defaults)
#   METHODS  (default "dropblocks prunechannels int8"); SHOTS per-class counts (default "10 50");
#   RECOVER  (default "none bn ce mimic"); CALIB int8 calibrations (default "minmax percentile mse")
#   WORK     directory for the compressed models and reports (default a fresh temporary one).
#            Resumable: a run whose report is already in WORK is not repeated (its entry is
#            merged again), so rerunning with the same WORK finishes an interrupted table.
# Drop-blocks scores the blocks once per shot count: the later recoveries drop the blocks the
# first run at that shot count chose (--drop), so all recoveries compare the same student.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"
BUILD=${BUILD:-build}
FEDSLIM=$BUILD/bin/fedslim
TEACHER=${TEACHER:-models/resnet20-fmnist.safetensors}
DATA=${DATA:-idx:/usr/share/datasets/fashion-mnist/train}
EVAL=${EVAL:-idx:/usr/share/datasets/fashion-mnist/t10k}
OUT=${OUT:-bench/results.json}
SEED=${SEED:-1}
ITERS=${ITERS:-2000}
SCORE_ITERS=${SCORE_ITERS:-300}
THREADS=${THREADS:-0}
METHODS=${METHODS:-dropblocks prunechannels int8}
SHOTS=${SHOTS:-10 50}
RECOVER=${RECOVER:-none bn ce mimic}
CALIB=${CALIB:-minmax percentile mse}
LR=${LR:-}
BN=${BN:-}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

die() { echo "bench/fewshot.sh: $*" >&2; exit 1; }
[ -x "$FEDSLIM" ] || die "$FEDSLIM not found: build first (make build, or set BUILD=<dir>)"
[ -f "$TEACHER" ] || die "teacher $TEACHER not found (set TEACHER=<model.safetensors>)"
for v in SEED ITERS SCORE_ITERS THREADS; do
    case ${!v} in ''|*[!0-9]*) die "$v must be a non-negative integer, got '${!v}'";; esac
done
for m in $METHODS; do
    case $m in dropblocks|prunechannels|int8) ;; *) die "METHODS: '$m' is not dropblocks, prunechannels or int8";; esac
done
for r in $RECOVER; do
    case $r in none|bn|ce|mimic|kd) ;; *) die "RECOVER: '$r' is not none, bn, ce, mimic or kd";; esac
done
for c in $CALIB; do
    case $c in minmax|percentile|mse) ;; *) die "CALIB: '$c' is not minmax, percentile or mse";; esac
done
for per in $SHOTS; do
    case $per in ''|*[!0-9]*|0) die "SHOTS must hold positive integers, got '$per'";; esac
done
case $BN in ''|frozen|train) ;; *) die "BN must be frozen or train, got '$BN'";; esac
extra=()
[ -n "$LR" ] && extra+=(--lr "$LR")
[ -n "$BN" ] && extra+=(--bn "$BN")
if [ -z "${WORK:-}" ]; then
    WORK=$(mktemp -d /tmp/fedslim-fewshot.XXXXXX)
fi
mkdir -p "$WORK"
[ -f "$OUT" ] || echo '[]' >"$OUT"

# merge NAME REPORT KIND: replaces the entry NAME in $OUT by the report's first model
merge() {
    flock "${TMPDIR:-/tmp}/fedslim-fewshot.lock" python3 - "$OUT" "$1" "$2" "$3" "$ITERS" "$SCORE_ITERS" "$SEED" <<'EOF'
import json, sys
out, name, path, kind = sys.argv[1:5]
iters, siters, seed = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
try:
    results = json.load(open(out))
except ValueError as e:
    sys.exit("bench/fewshot.sh: %s is not JSON: %s" % (out, e))
if not isinstance(results, list):
    sys.exit("bench/fewshot.sh: %s: expected a JSON list" % out)
rep = json.load(open(path))
teacher = rep.get("teacher", {})
models = rep.get("models", [])
if not models or not teacher.get("eval") or not models[0].get("eval"):
    sys.exit("bench/fewshot.sh: %s: no evaluated model in the report" % path)
m = models[0]
acc, tacc = 100.0 * m["accuracy"], 100.0 * teacher["accuracy"]
e = {"name": name, "value": round(acc, 2), "unit": "%", "reference": round(tacc, 2),
     "ratio": round(acc / tacc, 4) if tacc > 0 else None, "source": "fewshot",
     "samples": rep.get("samples"), "seed": seed,
     "agreement": round(100.0 * m["eval"]["agreement"], 2),
     "latency_ratio": round(m.get("latency_ratio", 0), 4),
     "flops_ratio": round(m["flops"] / teacher["flops"], 4) if teacher.get("flops") else None}
if kind == "dropblocks":
    e["dropped"] = m.get("dropped")
    e["score_iterations"] = siters
if kind != "int8":
    rc = rep.get("recovery", {})
    e["iterations"] = iters if rep.get("recover") not in ("none", "bn") else 0
    e["lr"] = round(rc.get("lr", 0), 6)
    e["bn"] = rc.get("bn")
results = [x for x in results if x.get("name") != name] + [e]
with open(out, "w") as f:
    json.dump(results, f, indent=1)
    f.write("\n")
extra = ""
if e.get("dropped"):
    extra = "  dropped " + ",".join(e["dropped"])
print("%-34s %6.2f %%  teacher %6.2f %%  latency x%.2f  flops x%.2f%s" %
      (name, e["value"], e["reference"], e["latency_ratio"], e["flops_ratio"] or 0, extra))
EOF
}

# run NAME KIND ARGS...: one `fedslim compress`, skipped when its report is already in $WORK
run() {
    local name=$1 kind=$2
    shift 2
    if [ -s "$WORK/$name.json" ]; then
        echo "bench/fewshot.sh: $name: report already in $WORK, not rerun" >&2
    else
        echo "bench/fewshot.sh: $name: $* ($(date -u +%H:%M:%S), load $(cut -d' ' -f1 /proc/loadavg))" >&2
        if ! "$FEDSLIM" compress --model "$TEACHER" --data "$DATA" --seed "$SEED" \
            --threads "$THREADS" --eval "$EVAL" "$@" -o "$WORK/$name.safetensors" \
            --report "$WORK/$name.json.part" >"$WORK/$name.txt"; then
            # e.g. a recovery that diverged: no entry, the other runs go on
            echo "$name FAILED: $*" | tee -a "$WORK/summary.txt" >&2
            failed=$((failed + 1))
            return 0
        fi
        mv "$WORK/$name.json.part" "$WORK/$name.json"
        cat "$WORK/$name.txt" >&2
    fi
    merge "$name" "$WORK/$name.json" "$kind" | tee -a "$WORK/summary.txt"
}

# dropped blocks of an earlier drop-blocks report at the same shots, comma-separated, or nothing
dropped_of() {
    local f
    for f in "$WORK"/fewshot_dropblocks_*_"$1".json; do
        [ -s "$f" ] || continue
        python3 -c 'import json,sys; print(",".join(json.load(open(sys.argv[1]))["models"][0]["dropped"]))' "$f"
        return
    done
}

failed=0
echo "bench/fewshot.sh: teacher $TEACHER, load average $(cut -d' ' -f1-3 /proc/loadavg), work $WORK" >&2
for per in $SHOTS; do
    shots=$((per * 10))
    common=(--shots "$per" --per-class)
    for method in $METHODS; do
        case $method in
        dropblocks)
            for rec in $RECOVER; do
                blocks=$(dropped_of "$shots")
                sel=(--target latency=0.75 --score-iterations "$SCORE_ITERS")
                [ -n "$blocks" ] && sel=(--drop "$blocks")
                run "fewshot_dropblocks_${rec}_$shots" dropblocks "${common[@]}" \
                    --methods drop-blocks "${sel[@]}" --recover "$rec" --iterations "$ITERS" \
                    ${extra[@]+"${extra[@]}"}
            done;;
        prunechannels)
            for rec in $RECOVER; do
                run "fewshot_prunechannels_${rec}_$shots" prune "${common[@]}" --methods prune-channels \
                    --target flops=0.5 --recover "$rec" --iterations "$ITERS" \
                    ${extra[@]+"${extra[@]}"}
            done;;
        int8)
            for cal in $CALIB; do
                run "fewshot_int8_${cal}_$shots" int8 "${common[@]}" --methods int8 \
                    --calibration "$cal" --recover none
            done;;
        esac
    done
done
echo "bench/fewshot.sh: done; reports in $WORK, summary $WORK/summary.txt" >&2
[ "$failed" -eq 0 ] || die "$failed run(s) failed (see $WORK/summary.txt)"
