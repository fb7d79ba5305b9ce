#!/bin/bash
# test_netns.sh — rehearsal of a multi-host install in network namespaces (docs/operations.md,
# "Rehearsing a multi-host install").
#
# Five network namespaces of our own: a switch (a bridge, 10.231.0.254/24) and four "hosts" joined
# to it by veth pairs: the coordinator 10.231.0.1 and sites site-a .11, site-b .12, site-c .13.
# Each host gets its own file tree (ROOT/HOST/etc/fedslim, var/lib/fedslim, run/fedslim, srv/data)
# laid out as docs/operations.md installs it: keys made on the host they belong to, only .pub
# files exchanged, the allow-list on the coordinator. Each daemon is started inside its namespace
# the way its unit in packaging/systemd/ would start it: the unit's ExecStart= arguments (binary
# and paths mapped into the host's tree), its Environment=, UMask=, and its LoadCredential= key
# copied into a credentials directory (CREDENTIALS_DIRECTORY; the configs name no secret_key).
# Not reproduced: User=fedslim and the sandbox (no systemd here), sd_notify.
#
#   1. a tiny teacher is trained, `fedslim split` makes non-IID data for the three sites;
#   2. job A runs end to end over the veths (fedslimctl from the coordinator's namespace); the
#      TCP peers of the coordinator's port (`ss` in its namespace) show the traffic crossed the
#      interfaces;
#   3. job B, with faults: site-b talks to the coordinator through tests/netns_proxy.py (running
#      in the switch namespace) over a link throttled with tbf in both directions; site-a's link is
#      set down mid-job -> site-a leaves (phase, round in the report); the proxy then stalls
#      site-b's traffic for less than the step timeout (the round waits, site-b stays), then cuts
#      its connection once (site-b's agent reconnects through the proxy); site-a's link comes back
#      up; the job finishes with its quorum; the relevant log lines are printed. site-b may
#      finish or leave at the cut ("the agent restarted": what the daemons do today); the test
#      accepts both, checks the details of each, and says which it saw;
#   4. every namespace, veth, bridge, qdisc and process is removed on exit, pass or fail, and
#      `ip netns list` is checked.
#
# Usage: test_netns.sh [BIN_DIR]   (default $FS_BIN_DIR; the sources: $FS_SOURCE_DIR or ..)
# Exit: 0 passed, 1 failed, 77 skipped (not root, no `ip netns`, no bridge/veth/tbf support).
# Every wait is bounded; the whole rehearsal takes about 2 minutes (ASan build, 2 cores).
set -u
set -o pipefail

T0=$(date +%s)
SRC=${FS_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
BIN=${1:-${FS_BIN_DIR:-}}
PY=/usr/bin/python3
PROXY="$SRC/tests/netns_proxy.py"
PREFIX="fsnetns-$$-"
NET=10.231.0
PORT=7400
PROXY_PORT=7401
STEP_TIMEOUT=8          # seconds, job B: how long a round waits for a silent agent
STALL=3                 # seconds the proxy holds site-b's traffic (< STEP_TIMEOUT - a round)
SITES="site-a site-b site-c"
ITER_B=80               # recovery rounds of job B (here the faults are done by round ~30)

skip() { echo "SKIP: test_netns: $*"; exit 77; }
note() { printf '# [%3ds] %s\n' $(($(date +%s) - T0)) "$*"; }
fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# ---- preconditions (skip, not fail, where the machine cannot do it) ---------------------------
[ "$(id -u)" = 0 ] || skip "needs root (network namespaces); run as root or via 'sudo make check-netns'"
command -v ip > /dev/null || skip "the 'ip' command (iproute2) is not installed"
command -v tc > /dev/null || skip "the 'tc' command (iproute2) is not installed"
ip netns list > /dev/null 2>&1 || skip "'ip netns' is not available"
[ -x "$PY" ] || skip "$PY is missing (the proxy and the JSON checks need it)"
[ -n "$BIN" ] || fail "no binary directory: pass it as the argument or set FS_BIN_DIR"
for p in fedslim fedslim-coordinator fedslim-agent fedslimctl; do
    [ -x "$BIN/$p" ] || fail "$BIN/$p is missing (build it first)"
done
FMNIST=/usr/share/datasets/fashion-mnist
[ -f "$FMNIST/t10k-images-idx3-ubyte" ] || [ -f "$FMNIST/t10k-images-idx3-ubyte.gz" ] ||
    skip "Fashion-MNIST is not installed under $FMNIST (scripts/install-deps.sh)"

NS_SW=${PREFIX}sw
NS_COORD=${PREFIX}coord
declare -A NS=([coord]=$NS_COORD [site-a]=${PREFIX}site-a [site-b]=${PREFIX}site-b
               [site-c]=${PREFIX}site-c)
declare -A ADDR=([coord]=$NET.1 [site-a]=$NET.11 [site-b]=$NET.12 [site-c]=$NET.13)
declare -A PID=()
CREATED_NS=()
KEEP=0

WORK=$(mktemp -d /tmp/fs_netns.XXXXXX) || fail "mktemp"
LOGS=$WORK/logs
mkdir -p "$LOGS"

# ---- clean-up: runs on every exit ---------------------------------------------------------------
cleanup() {
    local rc=$? p ns left
    trap - EXIT INT TERM
    # the agents first, while the coordinator still answers (an agent whose coordinator is
    # gone mid-job can take more than 10 s to stop: docs/operations.md §15), then the others
    local group
    for group in "${PID[site-a]:-} ${PID[site-b]:-} ${PID[site-c]:-}" "${PID[*]}"; do
        for p in $group; do kill -TERM "$p" 2> /dev/null; done
        for _ in $(seq 100); do
            left=0
            for p in $group; do kill -0 "$p" 2> /dev/null && left=1; done
            [ "$left" = 0 ] && break
            sleep 0.2
        done
        for p in $group; do
            if kill -0 "$p" 2> /dev/null; then
                echo "# cleanup: pid $p did not stop within 20 s of SIGTERM: SIGKILL" >&2
                kill -KILL "$p" 2> /dev/null
            fi
        done
    done
    wait 2> /dev/null
    for ns in "${CREATED_NS[@]}"; do
        # anything else still running in a namespace of ours was started by this test
        for p in $(ip netns pids "$ns" 2> /dev/null); do kill -KILL "$p" 2> /dev/null; done
        ip netns del "$ns" 2> /dev/null
    done
    left=$(ip netns list 2> /dev/null | awk '{print $1}' | grep -F -- "$PREFIX")
    if [ -n "$left" ]; then
        echo "FAIL: namespaces left behind: $left" >&2
        rc=1
    fi
    for p in "${PID[@]}"; do
        if kill -0 "$p" 2> /dev/null; then
            echo "FAIL: process $p is still running" >&2
            rc=1
        fi
    done
    if [ "$rc" = 0 ] && [ "$KEEP" = 0 ]; then
        rm -rf "$WORK"
    elif [ "$rc" != 77 ]; then
        echo "# logs kept in $LOGS" >&2
        for f in "$LOGS"/*.log; do
            [ -f "$f" ] || continue
            echo "# ---- last lines of $f" >&2
            tail -n 15 "$f" >&2
        done
    else
        rm -rf "$WORK"
    fi
    [ "$rc" = 0 ] && echo "# clean-up: every namespace, veth, bridge, qdisc and process removed"
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT
trap 'echo "terminated" >&2; exit 143' TERM

# Namespaces of an earlier run that was SIGKILLed (its pid is gone): ours by name, remove them.
for ns in $(ip netns list 2> /dev/null | awk '{print $1}' | grep '^fsnetns-[0-9]*-'); do
    owner=${ns#fsnetns-}
    owner=${owner%%-*}
    if ! kill -0 "$owner" 2> /dev/null; then
        for p in $(ip netns pids "$ns" 2> /dev/null); do kill -KILL "$p" 2> /dev/null; done
        ip netns del "$ns" 2> /dev/null && note "removed stale namespace $ns"
    fi
done

# ---- helpers --------------------------------------------------------------------------------------
# wait_for DESCRIPTION SECONDS COMMAND...: polls every 0.2 s
wait_for() {
    local what=$1 secs=$2
    shift 2
    for _ in $(seq $((secs * 5))); do
        "$@" && return 0
        sleep 0.2
    done
    fail "timed out after ${secs}s waiting for $what"
}

ctl() { # fedslimctl from the coordinator's namespace
    ip netns exec "$NS_COORD" "$BIN/fedslimctl" --socket "$CROOT/run/fedslim/control.sock" "$@"
}

# json EXPR: evaluates a Python expression over the JSON document on stdin, bound to `d`
json() { "$PY" -c 'import json,sys; d=json.load(sys.stdin); r=eval(sys.argv[1]); print(r if not isinstance(r,(dict,list,bool)) else json.dumps(r))' "$1"; }

job_field() { ctl --json status "$1" | json "d['job']$2"; }
agent_field() { # JOB AGENT FIELD
    ctl --json status "$1" | json "[a for a in d['job']['agents'] if a['name']=='$2'][0]['$3']"
}

proxy_ctl() { "$PY" "$PROXY" ctl "$WORK/proxy.sock" "$@"; }

# ---- the network ----------------------------------------------------------------------------------
make_ns() {
    ip netns add "$1" || return 1
    CREATED_NS+=("$1")
    ip -n "$1" link set lo up
}
make_ns "$NS_SW" || skip "cannot create a network namespace (ip netns add failed)"
ip -n "$NS_SW" link add br0 type bridge 2> /dev/null || skip "the kernel has no bridge support"
ip -n "$NS_SW" addr add "$NET.254/24" dev br0
ip -n "$NS_SW" link set br0 up
for h in coord $SITES; do
    make_ns "${NS[$h]}" || fail "ip netns add ${NS[$h]}"
    # veth pair created in the switch namespace; one end moved straight into the host's
    ip -n "$NS_SW" link add "v$h" type veth peer name eth0 netns "${NS[$h]}" 2> /dev/null ||
        skip "the kernel has no veth support"
    ip -n "$NS_SW" link set "v$h" master br0 up
    ip -n "${NS[$h]}" addr add "${ADDR[$h]}/24" dev eth0
    ip -n "${NS[$h]}" link set eth0 up
done
# tbf on both ends of site-b's link: egress of the site (uploads) and of the switch port (downloads)
TBF="rate 4mbit burst 32kb latency 200ms"
tc -n "${NS[site-b]}" qdisc add dev eth0 root tbf $TBF 2> /dev/null ||
    skip "the kernel does not support the tbf qdisc (sch_tbf)"
tc -n "$NS_SW" qdisc add dev vsite-b root tbf $TBF || fail "tc qdisc add on vsite-b"
note "network: 5 namespaces ($PREFIX*), bridge br0 $NET.254/24, site-b throttled: tbf $TBF"
tc -n "${NS[site-b]}" qdisc show dev eth0 | sed 's/^/#   site-b eth0: /'

# ---- data, teacher, keys, configuration -----------------------------------------------------------
CROOT=$WORK/coord
for h in coord $SITES; do
    mkdir -p "$WORK/$h/etc/fedslim/keys" "$WORK/$h/srv/data"
    chmod 0750 "$WORK/$h/etc/fedslim/keys"
done
"$BIN/fedslim" split --data "idx:$FMNIST/t10k" --sites 3 --per-site 60 --alpha 0.5 --seed 11 \
    --out "$WORK/split" > "$LOGS/split.log" 2>&1 || fail "fedslim split: $(tail -n 3 "$LOGS/split.log")"
"$BIN/fedslim" split --data "idx:$FMNIST/t10k" --sites 1 --per-site 512 --alpha 100 --seed 12 \
    --out "$WORK/teacher-data" >> "$LOGS/split.log" 2>&1 || fail "fedslim split (teacher data)"
k=1
for h in $SITES; do
    cp "$WORK/split/site-$k-images-idx3-ubyte" "$WORK/$h/srv/data/local-images-idx3-ubyte"
    cp "$WORK/split/site-$k-labels-idx1-ubyte" "$WORK/$h/srv/data/local-labels-idx1-ubyte"
    k=$((k + 1))
done
sed 's/^/#   /' "$LOGS/split.log" | head -n 3
mkdir -p "$CROOT/var/lib/fedslim"
TEACHER=$CROOT/var/lib/fedslim/teacher.safetensors
"$BIN/fedslim" train --arch resnet:basic:cifar:2,2:8,16 --data "idx:$WORK/teacher-data/site-1" \
    --epochs 1 --batch 32 --classes 10 --threads 1 -o "$TEACHER" > "$LOGS/train.log" 2>&1 ||
    fail "fedslim train: $(tail -n 3 "$LOGS/train.log")"
note "teacher trained: $(tail -n 2 "$LOGS/train.log" | head -n 1)"

# keys are made on the host that uses them; only the .pub files travel (operations.md §3, §4)
ip netns exec "$NS_COORD" "$BIN/fedslim" keygen --out "$CROOT/etc/fedslim/keys/coordinator" \
    >> "$LOGS/keygen.log" 2>&1 || fail "keygen on the coordinator"
: > "$CROOT/etc/fedslim/agents.allow"
chmod 0640 "$CROOT/etc/fedslim/agents.allow"
for h in $SITES; do
    ip netns exec "${NS[$h]}" "$BIN/fedslim" keygen --out "$WORK/$h/etc/fedslim/keys/agent" \
        >> "$LOGS/keygen.log" 2>&1 || fail "keygen at $h"
    echo "$h $(grep -v '^#' "$WORK/$h/etc/fedslim/keys/agent.pub")" >> "$CROOT/etc/fedslim/agents.allow"
    cp "$CROOT/etc/fedslim/keys/coordinator.pub" "$WORK/$h/etc/fedslim/keys/coordinator.pub"
done

cat > "$CROOT/etc/fedslim/coordinator.conf" << CONF
# written by tests/test_netns.sh: the coordinator host's /etc/fedslim/coordinator.conf
[coordinator]
listen = tcp://${ADDR[coord]}:$PORT
allow_list = $CROOT/etc/fedslim/agents.allow
state_dir = $CROOT/var/lib/fedslim
control_socket = $CROOT/run/fedslim/control.sock
control_group = root
threads = 1
CONF
for h in $SITES; do
    endpoint=tcp://${ADDR[coord]}:$PORT
    [ "$h" = site-b ] && endpoint=tcp://$NET.254:$PROXY_PORT     # through the proxy
    cat > "$WORK/$h/etc/fedslim/agent.conf" << CONF
# written by tests/test_netns.sh: $h's /etc/fedslim/agent.conf
[agent]
name = $h
coordinator = $endpoint
coordinator_public_key_file = $WORK/$h/etc/fedslim/keys/coordinator.pub
state_dir = $WORK/$h/var/lib/fedslim
threads = 1
[data]
train = idx:$WORK/$h/srv/data/local
CONF
done

# ---- starting a daemon as its unit would ---------------------------------------------------------
# unit_start ROLE HOST: reads packaging/systemd/fedslim-ROLE.service and runs its ExecStart= in the
# host's namespace, with paths under /etc/fedslim, /var/lib/fedslim, /run/fedslim mapped into the
# host's tree, the unit's Environment= and UMask=, its LoadCredential= files in a credentials
# directory, its StateDirectory=/RuntimeDirectory= created with their modes.
unit_start() {
    local role=$1 h=$2 root=$WORK/$2 unit a word name src mode
    unit=$SRC/packaging/systemd/fedslim-$role.service
    [ -f "$unit" ] || fail "$unit is missing"
    local exec_line
    exec_line=$(sed -n 's/^ExecStart=//p' "$unit")
    [ "$(printf '%s\n' "$exec_line" | wc -l)" = 1 ] && [ -n "$exec_line" ] ||
        fail "$unit: expected exactly one ExecStart= line"
    local argv=() envs=() first=1
    for word in $exec_line; do
        if [ "$first" = 1 ]; then
            case $word in
            /usr/bin/*) argv+=("$BIN/${word#/usr/bin/}") ;;
            *) fail "$unit: ExecStart= runs '$word', not a program in /usr/bin" ;;
            esac
            first=0
            continue
        fi
        case $word in
        /etc/fedslim/* | /var/lib/fedslim/* | /run/fedslim/*) argv+=("$root$word") ;;
        /*) fail "$unit: ExecStart= passes '$word', a path the rehearsal does not map" ;;
        *) argv+=("$word") ;;
        esac
    done
    while read -r a; do
        for word in $a; do envs+=("$word"); done
    done < <(sed -n 's/^Environment=//p' "$unit")
    local umask_v
    umask_v=$(sed -n 's/^UMask=//p' "$unit" | tail -n 1)
    [ -n "$umask_v" ] || umask_v=0022
    mode=$(sed -n 's/^StateDirectoryMode=//p' "$unit" | tail -n 1)
    for name in $(sed -n 's/^StateDirectory=//p' "$unit"); do
        mkdir -p "$root/var/lib/$name"
        chmod "${mode:-0755}" "$root/var/lib/$name"
    done
    mode=$(sed -n 's/^RuntimeDirectoryMode=//p' "$unit" | tail -n 1)
    for name in $(sed -n 's/^RuntimeDirectory=//p' "$unit"); do
        mkdir -p "$root/run/$name"
        chmod "${mode:-0755}" "$root/run/$name"
    done
    local cred=$root/run/credentials/fedslim-$role.service
    mkdir -p "$cred"
    chmod 0700 "$cred"
    while IFS=: read -r name src; do
        [ -n "$name" ] || continue
        [ -f "$root$src" ] || fail "$unit: LoadCredential= source $src is missing on $h"
        install -m 0400 "$root$src" "$cred/$name"
    done < <(sed -n 's/^LoadCredential=//p' "$unit")
    local san=()
    for a in ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS; do
        [ -n "${!a:-}" ] && san+=("$a=${!a}")
    done
    echo "# $h: ${argv[*]} (in ${NS[$h]}, CREDENTIALS_DIRECTORY=$cred ${envs[*]} umask $umask_v)" \
        >> "$LOGS/$h.log"
    ip netns exec "${NS[$h]}" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "${san[@]}" \
        CREDENTIALS_DIRECTORY="$cred" "${envs[@]}" \
        /bin/sh -c 'umask "$0" && exec "$@"' "$umask_v" "${argv[@]}" >> "$LOGS/$h.log" 2>&1 &
    PID[$h]=$!
}

# --check first (operations.md §6): configuration, key, data, in each host's namespace. Leak
# checking is off for this one-shot run (the --check path does not free everything; that is not
# what this test is about — the daemons' full runs below are checked).
for h in coord $SITES; do
    role=agent
    [ "$h" = coord ] && role=coordinator
    out=$(ip netns exec "${NS[$h]}" env CREDENTIALS_DIRECTORY="$WORK/$h/etc/fedslim/keys" \
        ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
        "$BIN/fedslim-$role" --config "$WORK/$h/etc/fedslim/$role.conf" --check 2>&1) ||
        fail "fedslim-$role --check on $h: $out"
done

unit_start coordinator coord
wait_for "the coordinator's control socket" 30 test -S "$CROOT/run/fedslim/control.sock"
wait_for "the coordinator's endpoint file" 30 test -s "$CROOT/var/lib/fedslim/endpoint"
[ "$(cat "$CROOT/var/lib/fedslim/endpoint")" = "tcp://${ADDR[coord]}:$PORT" ] ||
    fail "endpoint file says '$(cat "$CROOT/var/lib/fedslim/endpoint")'"
# the port answers across the bridge from a site's namespace
ip netns exec "${NS[site-c]}" timeout 3 bash -c "exec 3<>/dev/tcp/${ADDR[coord]}/$PORT" ||
    fail "site-c cannot open a TCP connection to ${ADDR[coord]}:$PORT over the bridge"
note "site-c reaches ${ADDR[coord]}:$PORT over the bridge (a bare TCP probe: the coordinator logs it as a failed handshake)"

ip netns exec "$NS_SW" "$PY" "$PROXY" serve --listen "$NET.254:$PROXY_PORT" \
    --upstream "${ADDR[coord]}:$PORT" --control "$WORK/proxy.sock" > "$LOGS/proxy.log" 2>&1 &
PID[proxy]=$!
wait_for "the proxy's control socket" 10 test -S "$WORK/proxy.sock"

for h in $SITES; do unit_start agent "$h"; done

connected() { # N: at least N agents connected
    local n
    n=$(ctl --json agents 2> /dev/null | json "sum(a['connected'] for a in d['agents'])") || return 1
    [ "$n" -ge "$1" ]
}
wait_for "three agents to connect" 60 connected 3
note "coordinator and 3 agents up; fedslimctl agents (from the coordinator's namespace):"
ctl agents | sed 's/^/#   /'

# The TCP connections on the coordinator's port, seen from its namespace: one per site, from the
# site's address; site-b's from the proxy. (fedslimctl's "address" field is null in this version.)
peers=$(ip netns exec "$NS_COORD" ss -Htn state established "( sport = :$PORT )" | awk '{print $NF}' |
    sed 's/:[0-9]*$//' | sort | tr '\n' ' ')
[ "$peers" = "$NET.11 $NET.13 $NET.254 " ] ||
    fail "connections to the coordinator come from '$peers', expected $NET.11 $NET.13 $NET.254 (proxy)"
grep -q "accepted from $NET.12:" "$LOGS/proxy.log" || fail "the proxy did not see site-b ($NET.12)"
note "TCP peers of ${ADDR[coord]}:$PORT: $peers(site-b through the proxy, which saw $NET.12)"

# ---- job A: end to end, no faults ---------------------------------------------------------------
write_job() { # NAME ITERATIONS QUORUM STEP_TIMEOUT
    cat > "$CROOT/srv/$1.ini" << JOB
[job]
name = $1
teacher = $TEACHER
agents = site-a,site-b,site-c
quorum = $3
data = train
shots = 0
seed = 1
methods = drop-blocks
drop = layer1.1
recover = mimic
iterations = $2
batch = 0
augment = 0
step_timeout = $4
admit_timeout = 30s
JOB
}
job_state() { job_field "$1" "['state']"; }
job_finished() { case $(job_state "$1") in done | failed | canceled) return 0 ;; esac; return 1; }

write_job rehearsal-a 6 0 20s
t=$(date +%s)
JOB_A=$(ctl submit "$CROOT/srv/rehearsal-a.ini") || fail "fedslimctl submit job A"
wait_for "job A to finish" 120 job_finished "$JOB_A"
[ "$(job_state "$JOB_A")" = "done" ] || fail "job A ended $(job_state "$JOB_A"): $(job_field "$JOB_A" "['error']")"
REP_A=$CROOT/var/lib/fedslim/jobs/$JOB_A/report.json
[ -f "$REP_A" ] || fail "job A has no $REP_A"
"$PY" - "$REP_A" << 'EOF' || fail "job A's report"
import json, sys
r = json.load(open(sys.argv[1]))
ag = {a["name"]: a for a in r["agents"]}
assert sorted(ag) == ["site-a", "site-b", "site-c"], ag
for n, a in ag.items():
    assert a["state"] == "finished", (n, a)
    assert a["samples"] == 60, (n, a)
    assert a["rounds"] >= 6, (n, a)
EOF
ctl fetch "$JOB_A" -o "$WORK/fetched-a" > /dev/null || fail "fedslimctl fetch job A"
[ -s "$WORK/fetched-a/report.json" ] || fail "fetch wrote no report.json"
ls "$WORK"/fetched-a/*.safetensors > /dev/null 2>&1 || fail "fetch wrote no model"
note "job A ($JOB_A): done in $(($(date +%s) - t)) s, 3 agents finished, 60 samples each; fetched: $(cd "$WORK/fetched-a" && ls | tr '\n' ' ')"
note "proxy after job A: $(proxy_ctl stats)"

# ---- job B: faults -------------------------------------------------------------------------------
# Rounds are counted by the status field "exchanges" (every request/reply exchange of the job; the
# numbering of the report's left_round). Status "round" is the phase's iteration, updated only
# every 10 iterations, too coarse to time faults with.
write_job rehearsal-b "$ITER_B" 1 "${STEP_TIMEOUT}s"
t=$(date +%s)
JOB_B=$(ctl submit "$CROOT/srv/rehearsal-b.ini") || fail "fedslimctl submit job B"
in_recovery() { # N: job B in recover, exchange >= N (fails the test if the job ended already)
    local s
    s=$(ctl --json status "$JOB_B" | json "'%s %s %s' % (d['job']['state'], d['job']['phase'], d['job'].get('exchanges', -1))") || return 1
    set -- "$1" $s
    case $2 in done | failed | canceled) fail "job B ended ($2) before the faults were injected" ;; esac
    [ "$4" = -1 ] && fail "fedslimctl status has no 'exchanges' field"
    [ "$3" = recover ] && [ "$4" -ge "$1" ]
}
exch() { job_field "$JOB_B" "['exchanges']"; }
wait_for "job B to reach its recovery phase" 60 in_recovery 0
wait_for "job B's recovery to run 3 rounds" 60 in_recovery $(($(exch) + 3))

# fault 1: site-a's link goes down
X_DOWN=$(exch)
ip -n "${NS[site-a]}" link set eth0 down || fail "ip link set down"
T_DOWN=$(date +%s)
note "FAULT site-a: link eth0 down at exchange $X_DOWN"
left() { [ "$(agent_field "$JOB_B" "$1" state)" = left ]; }
wait_for "site-a to be dropped from job B" $((STEP_TIMEOUT + 20)) left site-a
note "site-a left job B after $(($(date +%s) - T_DOWN)) s (step_timeout ${STEP_TIMEOUT}s), rounds go on with site-b and site-c"
note "site-a as fedslimctl agents shows it while its link is down: $(ctl --json agents |
    json "[(a['connected'], a['last_seen_s']) for a in d['agents'] if a['name']=='site-a'][0]")" \
    "(connected, seconds since its last message)"

# fault 2: the proxy stalls site-b's traffic (shorter than the step timeout): the round waits
wait_for "job B to go on after site-a left" 30 in_recovery $(($(exch) + 3))
# Every exchange needs site-b's reply, so no exchange may complete while its traffic is held.
# (The counter is read 0.5 s into the stall and 0.5 s before its end: a reply already past the
# proxy when the stall began may still complete one exchange.)
T_RATE=$(date +%s%N)
X_RATE=$(exch)
sleep 1
X_STALL=$(exch)
RATE=$(((X_STALL - X_RATE) * 1000000000 / ($(date +%s%N) - T_RATE) ))
proxy_ctl stall "$STALL" > /dev/null || fail "proxy stall"
sleep 0.5
X_MID=$(exch)
sleep "$(echo "$STALL" | awk '{print $1 - 1}')"
X_END=$(exch)
sleep 0.5
note "FAULT site-b: proxy stalled ${STALL}s at exchange $X_STALL (~$RATE exchanges/s before); exchanges during the stall: $X_MID -> $X_END"
[ "$X_END" = "$X_MID" ] ||
    fail "rounds went on during the stall ($X_MID -> $X_END): site-b's traffic was not held"
wait_for "rounds to go on after the stall" 30 in_recovery $((X_END + 3))
[ "$(agent_field "$JOB_B" site-b state)" = active ] ||
    fail "site-b was dropped by a stall shorter than the step timeout: $(agent_field "$JOB_B" site-b reason)"
note "site-b is still in the job after the stall (exchange $(exch))"

# fault 3: the proxy cuts site-b's connection once (RST both ways); the agent reconnects
X_CUT=$(exch)
proxy_ctl cut > /dev/null || fail "proxy cut"
note "FAULT site-b: connection cut by the proxy at exchange $X_CUT"
accepted_twice() { proxy_ctl stats | grep -q 'accepted=[2-9]'; }
wait_for "site-b to reconnect through the proxy" 40 accepted_twice
reintroduced() { grep -q "reconnected" "$LOGS/site-b.log"; }
wait_for "site-b's agent to log its reconnection" 40 reintroduced

# site-a's link comes back
ip -n "${NS[site-a]}" link set eth0 up || fail "ip link set up"
note "site-a: link eth0 up again after $(($(date +%s) - T_DOWN)) s"

wait_for "job B to finish" 150 job_finished "$JOB_B"
[ "$(job_state "$JOB_B")" = "done" ] || fail "job B ended $(job_state "$JOB_B"): $(job_field "$JOB_B" "['error']")"
REP_B=$CROOT/var/lib/fedslim/jobs/$JOB_B/report.json
note "job B ($JOB_B): done in $(($(date +%s) - t)) s; agents in the report:"
"$PY" - "$REP_B" "$LOGS/coord.log" "$X_DOWN" "$X_CUT" << 'EOF' || fail "job B's report"
import json, re, sys
r = json.load(open(sys.argv[1]))
log = open(sys.argv[2], errors="replace").read()
x_down, x_cut = int(sys.argv[3]), int(sys.argv[4])
ag = {a["name"]: a for a in r["agents"]}
for n in sorted(ag):
    a = ag[n]
    print("#   %s: %s, %s rounds, %s samples%s" % (
        n, a["state"], a.get("rounds"), a.get("samples"),
        "" if a["state"] == "finished" else ", left in %s round %s: %s"
        % (a.get("left_phase"), a.get("left_round"), a.get("reason"))))
print("#   (report rounds count every exchange of the job, %d in all; link down at exchange %d, "
      "cut at exchange %d)" % (r["rounds"], x_down, x_cut))


def logged_round(name):
    m = re.findall(r"agent left the job JOB=\S+ AGENT=%s ROUND=(\d+) PHASE=(\w+)" % name, log)
    assert len(m) == 1, ("coordinator log lines about %s leaving" % name, m)
    return int(m[0][0]), m[0][1]


a = ag["site-a"]
assert a["state"] == "left" and a["left_phase"] == "recover", a
assert a["reason"] in ("timed out", "unreachable"), a
assert x_down <= a["left_round"] <= x_down + 2, (x_down, a)
assert logged_round("site-a") == (a["left_round"], "recover"), (logged_round("site-a"), a)
assert ag["site-c"]["state"] == "finished" and ag["site-c"]["rounds"] == r["rounds"], ag["site-c"]
b = ag["site-b"]
if b["state"] == "finished":
    assert b["rounds"] == ag["site-c"]["rounds"], (b, ag["site-c"])
    print("#   site-b kept its place in the job across the stall and the cut")
else:
    # what the daemons do today: the agent says HELLO again after every new handshake and the
    # coordinator takes that for a restarted agent (coordinator/main.c on_hello)
    assert b["state"] == "left" and b["left_phase"] == "recover", b
    assert x_cut <= b["left_round"] <= x_cut + 3, (x_cut, b)
    assert logged_round("site-b") == (b["left_round"], "recover"), (logged_round("site-b"), b)
    print("#   NOTE: site-b survived the stall but was dropped from the job by its reconnection "
          "after the cut (reason: %s)" % b["reason"])
EOF

# site-a is heard from again (its heartbeats resume over the old or a new connection)
heard() {
    local s
    s=$(ctl --json agents | json "[a['last_seen_s'] for a in d['agents'] if a['name']=='$1'][0]") || return 1
    "$PY" -c "import sys; sys.exit(0 if $s is not None and $s < 4 else 1)" 2> /dev/null
}
wait_for "site-a to be heard from after its link came back" 60 heard site-a
wait_for "site-b to be heard from after its reconnection" 30 heard site-b
note "after the faults: fedslimctl agents:"
ctl agents | sed 's/^/#   /'
note "proxy: $(proxy_ctl stats)"

# ---- what the logs say ----------------------------------------------------------------------------
echo "# ---- log lines about the faults (coordinator, agents, proxy)"
grep -h -i -E "left the job|timed out|unreachable|restarted|reconnect|disconnect|handshake|stale|authenticated" \
    "$LOGS/coord.log" | sed 's/^/#   coordinator: /' | head -n 40
for h in $SITES; do
    grep -h -i -E "reconnect|timed out|timeout|disconnect|error|stale|warn" "$LOGS/$h.log" |
        sed "s/^/#   $h: /" | head -n 15
done
grep -h -E "stall|cut|accepted|closed" "$LOGS/proxy.log" | sed 's/^/#   /'
grep -q "agent left the job" "$LOGS/coord.log" || fail "the coordinator's log has no 'agent left the job' line"

# ---- stop: every daemon must exit 0 (clean shutdown; under ASan also: no leak, no error) --------
for h in $SITES coord proxy; do kill -TERM "${PID[$h]}" 2> /dev/null; done
for h in $SITES coord proxy; do
    for _ in $(seq 100); do kill -0 "${PID[$h]}" 2> /dev/null || break; sleep 0.1; done
    kill -0 "${PID[$h]}" 2> /dev/null && fail "$h did not stop within 10 s of SIGTERM"
    wait "${PID[$h]}"
    rc=$?
    if [ "$rc" != 0 ]; then
        # a leak report at exit (LeakSanitizer's exit status) is reported, not failed on; any
        # other sanitizer finding or exit status fails the test
        if grep -q "ERROR: LeakSanitizer: detected memory leaks" "$LOGS/$h.log" &&
            ! grep -q -E "ERROR: AddressSanitizer|runtime error:" "$LOGS/$h.log"; then
            echo "# WARNING: $h exited with status $rc after SIGTERM because of a leak report:" \
                "$(grep -m 1 '^SUMMARY: AddressSanitizer' "$LOGS/$h.log")" \
                "(first frame: $(grep -m 1 -E '#1 0x[0-9a-f]+ in' "$LOGS/$h.log" | sed 's/^ *#1 0x[0-9a-f]* in //'))"
        else
            fail "$h exited with status $rc after SIGTERM: $(tail -n 5 "$LOGS/$h.log")"
        fi
    fi
done
if grep -l -E "ERROR: AddressSanitizer|runtime error:" "$LOGS"/*.log > /dev/null 2>&1; then
    fail "sanitizer reports in $(grep -l -E "ERROR: AddressSanitizer|runtime error:" "$LOGS"/*.log)"
fi
note "all daemons stopped"
echo "ok test_netns: multi-host rehearsal passed in $(($(date +%s) - T0)) s"
