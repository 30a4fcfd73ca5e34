# Paths, settings and process helpers shared by the stack scripts.
# Sourced, never run: it sets no shell options of its own.

# The one place that picks the document store backend when
# FIELDFORCE_STORE_BACKEND is unset. PostgreSQL took unordered bulk inserts of
# submission-sized documents about 1.3 times faster than SQLite here (figures in
# docs/benchmarks/store.md).
DEFAULT_STORE_BACKEND=postgresql

STACK_SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO_ROOT=$(dirname "$STACK_SRC_DIR")

# Everything the stack downloads, builds or writes lives under one ignored
# folder per checkout. Downloads (Kafka jars, Go binaries) sit apart from data,
# logs and run state, so `make clean-stack` can drop the latter and keep the former.
STACK_DIR=$REPO_ROOT/.stack
STACK_BIN_DIR=$STACK_DIR/bin
KAFKA_LIBS_DIR=$STACK_DIR/kafka/libs
STACK_DATA_DIR=$STACK_DIR/data
STACK_LOG_DIR=$STACK_DIR/logs
STACK_RUN_DIR=$STACK_DIR/run
STACK_CONFIG_DIR=$STACK_DIR/config

KAFKA_HOST=127.0.0.1
KAFKA_PORT=9092
KAFKA_CONTROLLER_PORT=9093
KAFKA_BOOTSTRAP=$KAFKA_HOST:$KAFKA_PORT

FERRETDB_HOST=127.0.0.1
FERRETDB_PORT=27017

# The S3-compatible server that the gateway's S3 blob store is tested against,
# with the one bucket it creates at start.
S3_HOST=127.0.0.1
S3_PORT=9000
S3_BUCKET=fieldforce

# 5433, not 5432, so the project's cluster never collides with a system one.
POSTGRES_HOST=127.0.0.1
POSTGRES_PORT=5433
POSTGRES_USER=fieldforce
POSTGRES_DB=ferretdb

# Seconds to wait, after a start, for a service to respond to a protocol request.
KAFKA_READY_TIMEOUT_SECONDS=${KAFKA_READY_TIMEOUT_SECONDS:-90}
FERRETDB_READY_TIMEOUT_SECONDS=${FERRETDB_READY_TIMEOUT_SECONDS:-30}
S3_READY_TIMEOUT_SECONDS=${S3_READY_TIMEOUT_SECONDS:-30}
# Seconds between SIGTERM and SIGKILL when stopping a service.
STOP_TIMEOUT_SECONDS=${STOP_TIMEOUT_SECONDS:-30}

say() {
    printf 'stack: %s\n' "$*"
}

fail() {
    printf 'stack: %s\n' "$*" >&2
    exit 1
}

# Prints the sha256 of the given files, so an install step can tell whether
# its inputs changed since the artifacts were made.
inputs_digest() {
    cat "$@" | sha256sum | cut -d' ' -f1
}

# Succeeds when PID is alive and its command line contains MARKER. The marker
# guards against a stale pid file whose number the kernel gave to another process.
pid_matches() {
    local pid=$1 marker=$2
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker"
}

# Prints the pid stored in pid file NAME when that process is alive and
# matches MARKER; prints nothing otherwise.
running_pid() {
    local name=$1 marker=$2 pid
    local pid_file=$STACK_RUN_DIR/$name.pid
    [[ -f $pid_file ]] || return 1
    pid=$(<"$pid_file")
    pid_matches "$pid" "$marker" || return 1
    printf '%s\n' "$pid"
}

# Succeeds when something accepts TCP connections on HOST:PORT.
port_open() {
    timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

# Sends SIGTERM to PID, waits up to STOP_TIMEOUT_SECONDS, then sends SIGKILL.
stop_pid() {
    local name=$1 pid=$2
    local deadline=$((SECONDS + STOP_TIMEOUT_SECONDS))

    kill -TERM "$pid" 2>/dev/null || return 0
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            say "$name (pid $pid) did not stop within ${STOP_TIMEOUT_SECONDS}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 1
            break
        fi
        sleep 0.5
    done
}

# Stops every process whose command line contains MARKER. The markers name
# files inside this checkout's .stack folder, so only this checkout's
# processes match, including any whose pid file was lost.
stop_matching() {
    local name=$1 marker=$2 pid
    # pgrep comes from procps, which minimal Debian images lack. The pid files
    # still cover the normal case there.
    command -v pgrep >/dev/null || return 0
    for pid in $(pgrep -f -- "$marker" || true); do
        # Skip this script's own shell, in case its arguments contain the marker.
        pid_matches "$pid" "$marker" || continue
        [[ $pid == "$$" ]] && continue
        say "stopping $name (pid $pid)"
        stop_pid "$name" "$pid"
    done
}

# Runs a command with a deadline, polling every second until it succeeds.
# Fails when the deadline passes or when the process with pid WATCH_PID exits.
wait_until() {
    local timeout_seconds=$1 watch_pid=$2
    shift 2
    local deadline=$((SECONDS + timeout_seconds))
    until "$@"; do
        if [[ -n $watch_pid ]] && ! kill -0 "$watch_pid" 2>/dev/null; then
            return 2
        fi
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 1
    done
}

# Waits until PROBE succeeds for the service NAME started as PID, and exits
# with a message naming LOGS when the service dies or the timeout passes.
wait_for_service() {
    local name=$1 pid=$2 timeout_seconds=$3 request=$4 logs=$5 probe=$6
    local status=0
    wait_until "$timeout_seconds" "$pid" "$probe" || status=$?
    case $status in
        0) return 0 ;;
        2) fail "$name exited during start-up; see $logs" ;;
        *) fail "timed out after ${timeout_seconds}s waiting for $name to answer $request; see $logs" ;;
    esac
}

is_root() {
    [[ $(id -u) -eq 0 ]]
}

# Installs Debian PACKAGE with apt-get when running as root. Otherwise prints
# the package to install and exits, because the stack never runs sudo itself.
require_debian_package() {
    local package=$1 reason=$2
    if ! is_root; then
        fail "$reason: install the Debian package $package (sudo apt-get install $package), then run make up again"
    fi
    say "installing Debian package $package ($reason)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >"$STACK_LOG_DIR/apt-get.log" 2>&1 &&
        apt-get install -y -qq --no-install-recommends "$package" >>"$STACK_LOG_DIR/apt-get.log" 2>&1 ||
        fail "apt-get install $package failed; see $STACK_LOG_DIR/apt-get.log"
}

ensure_dirs() {
    mkdir -p "$STACK_BIN_DIR" "$STACK_DATA_DIR" "$STACK_LOG_DIR" "$STACK_RUN_DIR" "$STACK_CONFIG_DIR"
}
