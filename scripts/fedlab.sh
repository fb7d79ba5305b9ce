#!/bin/sh
# fedlab.sh — a coordinator and N agents on this machine, as separate processes on loopback with
# CURVE: keys, allow-list, configurations, start, stop. Used by `make demo` (scripts/demo.sh) and
# the end-to-end tests. Source it, then call the functions:
#   fedlab_init DIR BIN N_AGENTS DATA_PREFIX   # DATA_PREFIX: agent K reads idx:DATA_PREFIX-K
#   fedlab_start_coordinator / fedlab_start_agent K / fedlab_wait_agents N / fedlab_stop
# Every daemon runs with one compute thread (several processes share two cores here).

fedlab_init() {
    FL_DIR=$1; FL_BIN=$2; FL_N=$3; FL_DATA=$4
    mkdir -p "$FL_DIR/keys" "$FL_DIR/coordinator" "$FL_DIR/logs"
    : > "$FL_DIR/agents.allow"
    [ -f "$FL_DIR/keys/coordinator.key" ] || "$FL_BIN/fedslim" keygen --out "$FL_DIR/keys/coordinator" > /dev/null
    k=1
    while [ "$k" -le "$FL_N" ]; do
        [ -f "$FL_DIR/keys/site-$k.key" ] || "$FL_BIN/fedslim" keygen --out "$FL_DIR/keys/site-$k" > /dev/null
        echo "site-$k $(tail -n 1 "$FL_DIR/keys/site-$k.pub")" >> "$FL_DIR/agents.allow"
        mkdir -p "$FL_DIR/site-$k"
        k=$((k + 1))
    done
    cat > "$FL_DIR/coordinator.conf" <<CONF
[coordinator]
listen = tcp://127.0.0.1:*
secret_key = $FL_DIR/keys/coordinator.key
allow_list = $FL_DIR/agents.allow
state_dir = $FL_DIR/coordinator
control_socket = $FL_DIR/control.sock
threads = 1
[jobs]
step_timeout = 60s
CONF
}

fedlab_start_coordinator() {
    rm -f "$FL_DIR/coordinator/endpoint"
    "$FL_BIN/fedslim-coordinator" --config "$FL_DIR/coordinator.conf" \
        >> "$FL_DIR/logs/coordinator.log" 2>&1 &
    FL_COORD_PID=$!
    i=0
    while [ ! -s "$FL_DIR/coordinator/endpoint" ]; do
        i=$((i + 1))
        if [ "$i" -gt 300 ] || ! kill -0 "$FL_COORD_PID" 2>/dev/null; then
            echo "fedlab: the coordinator did not start:" >&2
            tail -n 5 "$FL_DIR/logs/coordinator.log" >&2
            return 1
        fi
        sleep 0.1
    done
    FL_ENDPOINT=$(cat "$FL_DIR/coordinator/endpoint")
}

fedlab_start_agent() {
    k=$1
    cat > "$FL_DIR/site-$k/agent.conf" <<CONF
[agent]
name = site-$k
coordinator = $FL_ENDPOINT
coordinator_public_key_file = $FL_DIR/keys/coordinator.pub
secret_key = $FL_DIR/keys/site-$k.key
state_dir = $FL_DIR/site-$k
threads = 1
[data]
train = idx:$FL_DATA-$k
CONF
    "$FL_BIN/fedslim-agent" --config "$FL_DIR/site-$k/agent.conf" \
        >> "$FL_DIR/logs/site-$k.log" 2>&1 &
    FL_AGENT_PIDS="${FL_AGENT_PIDS:-} $!"
}

fedlab_ctl() {
    "$FL_BIN/fedslimctl" --socket "$FL_DIR/control.sock" "$@"
}

# waits until N agents are connected
fedlab_wait_agents() {
    i=0
    while :; do
        n=$(fedlab_ctl --json agents 2>/dev/null | /usr/bin/python3 -c \
            'import json,sys; print(sum(a["connected"] for a in json.load(sys.stdin)["agents"]))' 2>/dev/null || echo 0)
        [ "$n" -ge "$1" ] && return 0
        i=$((i + 1))
        if [ "$i" -gt 300 ]; then
            echo "fedlab: only $n of $1 agents connected" >&2
            return 1
        fi
        sleep 0.1
    done
}

fedlab_stop() {
    # agents first (they would otherwise keep reconnecting), then the coordinator
    for p in ${FL_AGENT_PIDS:-} ${FL_COORD_PID:-}; do kill -TERM "$p" 2>/dev/null || true; done
    for p in ${FL_AGENT_PIDS:-} ${FL_COORD_PID:-}; do wait "$p" 2>/dev/null || true; done
    FL_AGENT_PIDS=
    FL_COORD_PID=
}
