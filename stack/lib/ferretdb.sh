# FerretDB: build it from the Go module proxy, start it on the selected
# backend, wait for a MongoDB ping, stop. Sourced by stack/stack.sh after
# common.sh and postgres.sh.

FERRETDB_BIN=$STACK_BIN_DIR/ferretdb
MONGO_PING_BIN=$STACK_BIN_DIR/mongo-ping
FERRETDB_SRC_DIR=$STACK_SRC_DIR/ferretdb
FERRETDB_INSTALL_STAMP=$STACK_BIN_DIR/.ferretdb-installed
FERRETDB_SQLITE_DIR=$STACK_DATA_DIR/ferretdb-sqlite
FERRETDB_LOG=$STACK_LOG_DIR/ferretdb.log
FERRETDB_BACKEND_FILE=$STACK_RUN_DIR/ferretdb.backend
FERRETDB_URI="mongodb://$FERRETDB_HOST:$FERRETDB_PORT/"

# The binary path inside this checkout identifies this checkout's FerretDB.
FERRETDB_PROCESS_MARKER="$FERRETDB_BIN --listen-addr=$FERRETDB_HOST:$FERRETDB_PORT"

store_backend() {
    local backend=${FIELDFORCE_STORE_BACKEND:-$DEFAULT_STORE_BACKEND}
    case $backend in
        sqlite | postgresql) printf '%s\n' "$backend" ;;
        *) fail "invalid FIELDFORCE_STORE_BACKEND=$backend: expected sqlite or postgresql" ;;
    esac
}

ferretdb_install() {
    local digest
    digest=$(inputs_digest "$FERRETDB_SRC_DIR/go.mod" "$FERRETDB_SRC_DIR/go.sum" \
        "$FERRETDB_SRC_DIR"/cmd/*/main.go)
    if [[ -x $FERRETDB_BIN && -x $MONGO_PING_BIN && -f $FERRETDB_INSTALL_STAMP &&
        $(<"$FERRETDB_INSTALL_STAMP") == "$digest" ]]; then
        return 0
    fi

    command -v go >/dev/null || require_debian_package golang-go "go is needed to build FerretDB"
    say "building FerretDB and mongo-ping with Go into $STACK_BIN_DIR (about a minute the first time)"
    # -mod=readonly makes a go.sum mismatch an error instead of a silent update.
    (cd "$FERRETDB_SRC_DIR" && GOBIN=$STACK_BIN_DIR GOFLAGS=-mod=readonly go install ./cmd/ferretdb ./cmd/mongo-ping) \
        >"$STACK_LOG_DIR/go-build.log" 2>&1 ||
        fail "building FerretDB failed; see $STACK_LOG_DIR/go-build.log"

    printf '%s\n' "$digest" >"$FERRETDB_INSTALL_STAMP"
}

ferretdb_pid() {
    running_pid ferretdb "$FERRETDB_PROCESS_MARKER"
}

ferretdb_answers_ping() {
    "$MONGO_PING_BIN" -quiet -timeout 2s -uri "$FERRETDB_URI"
}

ferretdb_wait_ready() {
    wait_for_service FerretDB "$1" "$FERRETDB_READY_TIMEOUT_SECONDS" "a MongoDB ping on $FERRETDB_URI" \
        "$FERRETDB_LOG" ferretdb_answers_ping
}

ferretdb_up() {
    local backend pid
    backend=$(store_backend)

    # Start PostgreSQL first, also when FerretDB already runs, because FerretDB fails
    # every request, ping included, while its backend is down, and it recovers
    # once PostgreSQL is back.
    if [[ $backend == postgresql ]]; then
        postgres_up
    fi

    if pid=$(ferretdb_pid); then
        if [[ $(cat "$FERRETDB_BACKEND_FILE" 2>/dev/null) == "$backend" ]]; then
            ferretdb_wait_ready "$pid"
            say "FerretDB is already running (pid $pid, $backend backend) on $FERRETDB_URI"
            return 0
        fi
        say "FerretDB runs on another backend than $backend; restarting it"
        ferretdb_down
    fi

    if port_open "$FERRETDB_HOST" "$FERRETDB_PORT"; then
        fail "port $FERRETDB_PORT on $FERRETDB_HOST is in use by a process this checkout did not start; stop it, then run make up again"
    fi

    ferretdb_install

    local -a backend_args
    case $backend in
        sqlite)
            mkdir -p "$FERRETDB_SQLITE_DIR"
            # FerretDB expects a directory URI with a trailing slash. Each
            # MongoDB database becomes one SQLite file inside it.
            backend_args=(--handler=sqlite "--sqlite-url=file:$FERRETDB_SQLITE_DIR/")
            ;;
        postgresql)
            backend_args=(--handler=postgresql "--postgresql-url=$POSTGRES_URL")
            ;;
    esac

    say "starting FerretDB on $FERRETDB_URI ($backend backend)"
    setsid "$FERRETDB_BIN" --listen-addr="$FERRETDB_HOST:$FERRETDB_PORT" "${backend_args[@]}" \
        </dev/null >>"$FERRETDB_LOG" 2>&1 &
    pid=$!
    printf '%s\n' "$pid" >"$STACK_RUN_DIR/ferretdb.pid"
    printf '%s\n' "$backend" >"$FERRETDB_BACKEND_FILE"

    ferretdb_wait_ready "$pid"
    say "FerretDB is ready on $FERRETDB_URI (pid $pid, $backend backend)"
}

ferretdb_down() {
    local pid
    if pid=$(ferretdb_pid); then
        say "stopping FerretDB (pid $pid)"
        stop_pid FerretDB "$pid"
    fi
    stop_matching FerretDB "$FERRETDB_PROCESS_MARKER"
    rm -f "$STACK_RUN_DIR/ferretdb.pid" "$FERRETDB_BACKEND_FILE"
}

ferretdb_status() {
    local pid
    if pid=$(ferretdb_pid); then
        say "FerretDB: running, pid $pid, $FERRETDB_URI, $(cat "$FERRETDB_BACKEND_FILE" 2>/dev/null || echo unknown) backend"
    else
        say "FerretDB: stopped"
    fi
}
