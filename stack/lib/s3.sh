# S3-compatible server: build it from the Go module proxy, start it, wait until
# it serves an HTTP request, stop. It replaces a cloud bucket when the
# gateway's S3 blob store is tested. Sourced by stack/stack.sh after common.sh.

S3_BIN=$STACK_BIN_DIR/s3-server
S3_SRC_DIR=$STACK_SRC_DIR/s3
S3_INSTALL_STAMP=$STACK_BIN_DIR/.s3-server-installed
S3_DATA_FILE=$STACK_DATA_DIR/s3/objects.db
S3_LOG=$STACK_LOG_DIR/s3.log
S3_ENDPOINT="http://$S3_HOST:$S3_PORT"

# The binary path inside this checkout identifies this checkout's S3 server.
S3_PROCESS_MARKER="$S3_BIN --listen-addr=$S3_HOST:$S3_PORT"

s3_install() {
    local digest
    digest=$(inputs_digest "$S3_SRC_DIR/go.mod" "$S3_SRC_DIR/go.sum" "$S3_SRC_DIR"/cmd/*/main.go)
    if [[ -x $S3_BIN && -f $S3_INSTALL_STAMP && $(<"$S3_INSTALL_STAMP") == "$digest" ]]; then
        return 0
    fi

    command -v go >/dev/null || require_debian_package golang-go "go is needed to build the S3 server"
    say "building the S3 server with Go into $STACK_BIN_DIR (under a minute the first time)"
    # -mod=readonly makes a go.sum mismatch an error instead of a silent update.
    (cd "$S3_SRC_DIR" && GOBIN=$STACK_BIN_DIR GOFLAGS=-mod=readonly go install ./cmd/s3-server) \
        >"$STACK_LOG_DIR/go-build-s3.log" 2>&1 ||
        fail "building the S3 server failed; see $STACK_LOG_DIR/go-build-s3.log"

    printf '%s\n' "$digest" >"$S3_INSTALL_STAMP"
}

s3_pid() {
    running_pid s3-server "$S3_PROCESS_MARKER"
}

# A bucket listing (GET /) is the cheapest request that shows the S3 API, not
# just the TCP port, is served.
s3_serves_http() {
    curl -fsS -o /dev/null --max-time 2 "$S3_ENDPOINT/" 2>/dev/null
}

s3_wait_ready() {
    wait_for_service "the S3 server" "$1" "$S3_READY_TIMEOUT_SECONDS" "GET $S3_ENDPOINT/" \
        "$S3_LOG" s3_serves_http
}

s3_up() {
    local pid
    command -v curl >/dev/null || require_debian_package curl "curl probes the S3 server"

    if pid=$(s3_pid); then
        s3_wait_ready "$pid"
        say "the S3 server is already running (pid $pid) on $S3_ENDPOINT"
        return 0
    fi

    if port_open "$S3_HOST" "$S3_PORT"; then
        fail "port $S3_PORT on $S3_HOST is in use by a process this checkout did not start; stop it, then run make up again"
    fi

    s3_install
    mkdir -p "$(dirname "$S3_DATA_FILE")"

    say "starting the S3 server on $S3_ENDPOINT (bucket $S3_BUCKET)"
    setsid "$S3_BIN" --listen-addr="$S3_HOST:$S3_PORT" --db="$S3_DATA_FILE" --buckets="$S3_BUCKET" \
        </dev/null >>"$S3_LOG" 2>&1 &
    pid=$!
    printf '%s\n' "$pid" >"$STACK_RUN_DIR/s3-server.pid"

    s3_wait_ready "$pid"
    say "the S3 server is ready on $S3_ENDPOINT (pid $pid)"
}

s3_down() {
    local pid
    if pid=$(s3_pid); then
        say "stopping the S3 server (pid $pid)"
        stop_pid "S3 server" "$pid"
    fi
    stop_matching "S3 server" "$S3_PROCESS_MARKER"
    rm -f "$STACK_RUN_DIR/s3-server.pid"
}

s3_status() {
    local pid
    if pid=$(s3_pid); then
        say "S3 server: running, pid $pid, $S3_ENDPOINT, bucket $S3_BUCKET"
    else
        say "S3 server: stopped"
    fi
}
