#!/bin/bash
# bench/run.sh — runs fedslim's benchmarks and writes bench/results.json (docs/bench.md).
# Builds nothing: `make bench` builds first. Environment:
#   BUILD      build directory whose bin/ holds bench_model, bench_kernels, bench_transfer,
#              bench_round
#              (default build)
#   OUT        results file (default bench/results.json); bench/results-env.json and
#              bench/results-raw.jsonl are written next to it
#   PYTHON     interpreter with PyTorch for the peer figures (default /usr/bin/python3)
#   REPS       timed runs per configuration (default 7)
#   ROUNDS     timed rounds per bench_round configuration (default 5)
#   OMP_WAIT_POLICY  default passive (for both fedslim and PyTorch: both use libgomp)
# Each model configuration runs ours, PyTorch, PyTorch, ours back to back, so both sides see the
# same machine state; results.json holds the means of the two runs of each side.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"
BUILD=${BUILD:-build}
BIN=$BUILD/bin
OUT=${OUT:-bench/results.json}
PYTHON=${PYTHON:-/usr/bin/python3}
REPS=${REPS:-7}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
outdir=$(dirname "$OUT")
ENV_OUT=$outdir/results-env.json
RAW=$outdir/results-raw.jsonl

die() { echo "bench/run.sh: $*" >&2; exit 1; }
for b in bench_model bench_kernels bench_transfer bench_round; do
    [ -x "$BIN/$b" ] || die "$BIN/$b not found: build first (make build, or set BUILD=<dir>)"
done
command -v python3 >/dev/null || die "python3 is needed to merge the results"
case $REPS in ''|*[!0-9]*) die "REPS must be a positive integer, got '$REPS'";; esac

have_torch=1
if ! "$PYTHON" -c 'import torch' 2>/dev/null; then
    echo "bench/run.sh: $PYTHON cannot import torch: PyTorch peer figures are skipped" >&2
    have_torch=0
fi

# The OpenBLAS kernels our binaries end up with (fs_blas_select_core may re-execute them with
# OPENBLAS_CORETYPE set): the same value is exported for bench_kernels (its cblas_sgemm reference)
# and for PyTorch (whose BLAS is the same OpenBLAS), so both sides use the same BLAS kernels.
describe=$("$BIN/bench_model" --describe) || die "bench_model --describe failed"
coretype=$(printf '%s' "$describe" | python3 -c 'import json,sys; print(json.load(sys.stdin)["openblas_coretype"])')
if [ -n "$coretype" ]; then
    export OPENBLAS_CORETYPE=$coretype
fi

start=$(date -u +%Y-%m-%dT%H:%M:%SZ)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
t0=$(date +%s)
: >"$RAW"

# tag SOURCE [PAIR]: adds "source" (and "pair") to each JSON line read on stdin
tag() {
    local extra="\"source\":\"$1\","
    [ $# -gt 1 ] && extra="$extra\"pair\":$2,"
    sed -n "s/^{/{$extra/p"
}

run_ours() { # model mode batch threads pair
    OMP_NUM_THREADS=$4 OPENBLAS_NUM_THREADS=$4 "$BIN/bench_model" "$1" "$2" "$3" "$4" "$REPS" |
        tag bench_model "$5" >>"$RAW"
}
run_torch() {
    [ $have_torch = 1 ] || return 0
    OMP_NUM_THREADS=$4 OPENBLAS_NUM_THREADS=$4 "$PYTHON" "$here/torch_bench.py" "$1" "$2" "$3" \
        "$4" "$REPS" | tag torch_bench "$5" >>"$RAW"
}

configs=(
    "resnet20 train 64 2" "resnet20 train 64 1" "resnet20 infer 1 1" "resnet20 infer 64 2"
    "mlp train 64 2" "mlp train 64 1" "mlp infer 1 1" "mlp infer 64 2"
)
i=0
for c in "${configs[@]}"; do
    # shellcheck disable=SC2086
    set -- $c
    echo "bench/run.sh: $c (ours, PyTorch, PyTorch, ours)" >&2
    run_ours "$@" $i
    run_torch "$@" $i
    run_torch "$@" $((i + 1))
    run_ours "$@" $((i + 1))
    i=$((i + 2))
done

echo "bench/run.sh: bench_kernels (conv layers vs cblas_sgemm, 1 and 2 threads)" >&2
"$BIN/bench_kernels" 5 1,2 | tag bench_kernels >>"$RAW"
echo "bench/run.sh: bench_transfer (64 MiB over loopback)" >&2
"$BIN/bench_transfer" 5 | tag bench_transfer >>"$RAW"
ROUNDS=${ROUNDS:-5}
case $ROUNDS in ''|*[!0-9]*) die "ROUNDS must be a positive integer, got '$ROUNDS'";; esac
for size in 0.27m 11.7m; do
    for n in 2 4 8 16; do
        echo "bench/run.sh: bench_round $size $n (coordinator round overhead and peak RSS)" >&2
        "$BIN/bench_round" "$size" "$n" "$ROUNDS" | tag bench_round >>"$RAW"
    done
done

load_after=$(cut -d' ' -f1-3 /proc/loadavg)
end=$(date -u +%Y-%m-%dT%H:%M:%SZ)
python3 "$here/merge.py" "$RAW" "$OUT"

torch_version=none
[ $have_torch = 1 ] && torch_version=$("$PYTHON" -c 'import torch; print(torch.__version__)')
python3 - "$ENV_OUT" <<EOF
import json, os, platform, subprocess, sys
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True).stdout.strip())
except OSError:
    commit, dirty = "", None
env = {
    "start": "$start", "end": "$end", "seconds": $(date +%s) - $t0,
    "cpu_model": cpu, "cpus": os.cpu_count(), "avx512f": "avx512f" in flags,
    "kernel": platform.release(),
    "loadavg_before": "$load_before", "loadavg_after": "$load_after",
    "fedslim_blas": json.loads('''$describe'''),
    "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", ""),
    "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", ""),
    "torch": "$torch_version", "python": "$PYTHON", "reps": $REPS,
    "build_dir": "$BUILD", "git_commit": commit, "git_dirty": dirty,
}
json.dump(env, open(sys.argv[1], "w"), indent=1)
open(sys.argv[1], "a").write("\n")
EOF
echo "bench/run.sh: wrote $OUT, $ENV_OUT, $RAW (load average $load_before -> $load_after)" >&2
python3 - "$OUT" <<'EOF'
import json, sys
want = ("resnet20_", "mlp_", "conv_gemm_efficiency", "transfer_curve_64mib", "transfer_plain_64mib",
        "tcp_raw_64mib", "round_overhead_", "coordinator_rss_")
for e in json.load(open(sys.argv[1])):
    if e["name"].startswith(want) and "chunk" not in e["name"] and "per_cpu" not in e["name"]:
        ref = "" if e["reference"] is None else "  reference %g  ratio %g" % (e["reference"], e["ratio"])
        print("%-28s %10g %-7s%s" % (e["name"], e["value"], e["unit"], ref))
EOF
