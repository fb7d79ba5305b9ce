#!/bin/sh
# demo.sh — `make demo`: a federated compression job on this machine.
#
# One coordinator and three agents run as separate processes on loopback, talking ZeroMQ over
# CURVE. Each agent holds a different non-IID slice of the Fashion-MNIST training set (Dirichlet
# alpha 0.5, 100 images each); no image leaves its agent. The job drops residual blocks of a
# ResNet-20 teacher down to 0.75 of its latency (PRACTISE: blocks scored by recoverability per unit
# of latency saved) and recovers the student by feature mimicking, with every gradient summed
# across the agents. The report lands in build/demo/report.json.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${FS_BIN:-$ROOT/build/bin}
DEMO=$ROOT/build/demo
FMNIST=/usr/share/datasets/fashion-mnist
TEACHER=${FS_DEMO_TEACHER:-$ROOT/models/resnet20-fmnist.safetensors}
t0=$(date +%s)

say() { printf '\n== %s\n' "$*"; }

rm -rf "$DEMO"
mkdir -p "$DEMO"
if [ ! -f "$TEACHER" ]; then
    # the repository ships one (docs/demo.md says how it was trained); without it, a short run
    TEACHER=$DEMO/teacher.safetensors
    say "training a ResNet-20 teacher on Fashion-MNIST (2 epochs; the shipped one took 10)"
    "$BIN/fedslim" train --arch resnet20 --data idx:$FMNIST/train --epochs 2 --threads 2 \
        -o "$TEACHER"
fi

say "teacher"
"$BIN/fedslim" inspect "$TEACHER" | tail -n 1

say "three sites, each with its own non-IID slice of the training set (counts per class)"
"$BIN/fedslim" split --data idx:$FMNIST/train --sites 3 --per-site 100 --alpha 0.5 --seed 7 \
    --out "$DEMO/data"

say "keys, allow-list, coordinator and agents (CURVE on loopback)"
. "$ROOT/scripts/fedlab.sh"
trap 'fedlab_stop' EXIT INT TERM
fedlab_init "$DEMO/lab" "$BIN" 3 "$DEMO/data/site"
fedlab_start_coordinator
for k in 1 2 3; do fedlab_start_agent "$k"; done
fedlab_wait_agents 3
fedlab_ctl agents

cat > "$DEMO/job.ini" <<INI
[job]
name = demo
teacher = $TEACHER
agents = site-1, site-2, site-3
methods = drop-blocks
target = latency=0.75
recover = mimic
score_iterations = 40
iterations = 300
batch = 64
seed = 7
eval = idx:$FMNIST/t10k
INI
say "submitting the job (drop blocks to 0.75 of the teacher's latency, recover by feature mimicking)"
job=$(fedlab_ctl submit "$DEMO/job.ini")
fedlab_ctl watch "$job"
fedlab_ctl fetch "$job" -o "$DEMO/results" > /dev/null
cp "$DEMO/results/report.json" "$DEMO/report.json"
fedlab_stop
trap - EXIT INT TERM

say "report (build/demo/report.json)"
/usr/bin/python3 - "$DEMO/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
t, s = r["teacher"], r["models"][0]
print("%-10s %9s %13s %11s %11s" % ("", "test acc", "latency b64", "params", "MFLOPs"))
print("%-10s %8.2f%% %10.2f ms %11d %11.2f" % ("teacher", 100 * r["teacher_accuracy"],
      t["latency_b64_ms"], t["params"], t["flops"] / 1e6))
print("%-10s %8.2f%% %10.2f ms %11d %11.2f" % ("student", 100 * r["student_accuracy"],
      s["latency_b64_ms"], s["params"], s["flops"] / 1e6))
print("latency ratio %.3f, blocks dropped: %s" % (r["latency_ratio"], ", ".join(s["dropped"])))
print("agents (what each contributed, in counts):")
for a in r["agents"]:
    print("  %-8s %-9s %4d images, %4d rounds answered" % (a["name"], a["state"], a["samples"], a["rounds"]))
PY
echo "demo finished in $(( $(date +%s) - t0 )) s; models and plot in $DEMO/results/"
