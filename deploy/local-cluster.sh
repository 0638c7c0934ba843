#!/usr/bin/env bash
# local-cluster.sh N — a whole relay cluster on this machine's loopback, for trying it out:
# nats-server with JetStream, N relay nodes joined to it, and HAProxy in front with
# deploy/haproxy.cfg. Everything lives in a temporary directory and stops on Ctrl-C or exit.
#   deploy/local-cluster.sh 3          then connect clients to ws://127.0.0.1:8080/ws
# Ports: CLUSTER_PORT (HAProxy, 8080), FIRST_RELAY_PORT (first relay, 8701), NATS_PORT (4222).
# The relay binary: RELAY_SERVER_BIN, else relay_server/build/relay_server (make -C relay_server).
set -euo pipefail

count=${1:-3}
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
binary=${RELAY_SERVER_BIN:-$root/relay_server/build/relay_server}
front=${CLUSTER_PORT:-8080}
base=${FIRST_RELAY_PORT:-8701}
nats_port=${NATS_PORT:-4222}

fail() { echo "local-cluster: $*" >&2; exit 1; }
[[ $count =~ ^[1-9][0-9]?$ ]] || fail "usage: $0 N (1 to 99 relay nodes)"
[ -x "$binary" ] || fail "no relay binary at $binary (make -C relay_server, or RELAY_SERVER_BIN)"
for tool in nats-server haproxy; do
    command -v "$tool" >/dev/null || fail "$tool is not installed (apt-get install $tool)"
done

work=$(mktemp -d -t relay-cluster.XXXXXX)
pids=()
stop() {
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits until something accepts connections on 127.0.0.1:$1 (bash's /dev/tcp, no curl needed).
wait_for_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    fail "nothing listens on port $1 after 10 s (logs in $work)"
}

nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$work/nats" >"$work/nats.log" 2>&1 &
pids+=($!)
wait_for_port "$nats_port"

# What every node shares (deploy/relay_cluster.env), pointed at this NATS, with one resume key
# (created by whichever relay starts first; the others read it).
set -a
# shellcheck source=relay_cluster.env
. "$here/relay_cluster.env"
set +a
export RELAY_NATS="nats://127.0.0.1:$nats_port" RELAY_SECRET_FILE="$work/resume.key"
servers=""
for i in $(seq 1 "$count"); do
    port=$((base + i - 1))
    "$binary" --listen 127.0.0.1 --port "$port" --state-dir "$work/relay$i" \
        >"$work/relay$i.log" 2>&1 &
    pids+=($!)
    servers+="    server relay$i 127.0.0.1:$port check"$'\n'
done
for i in $(seq 1 "$count"); do wait_for_port $((base + i - 1)); done

# deploy/haproxy.cfg with this cluster's relays and front port.
awk -v servers="$servers" -v front="$front" '
    /# BEGIN relays/ { print; printf "%s", servers; skipping = 1; next }
    /# END relays/ { skipping = 0 }
    skipping { next }
    /^    bind / { print "    bind 127.0.0.1:" front; next }
    { print }' "$here/haproxy.cfg" >"$work/haproxy.cfg"
haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
pids+=($!)
wait_for_port "$front"

echo "cluster ready: ws://127.0.0.1:$front/ws through HAProxy; $count relays on ports" \
    "$base-$((base + count - 1)); NATS on $nats_port; logs in $work (Ctrl-C stops it all)"
# Runs until interrupted, or until any of its processes ends (that is a failure).
wait -n "${pids[@]}"
fail "a process of the cluster exited; its log is in $work"
