# PostgreSQL for FerretDB's postgresql backend: a cluster owned by this
# checkout under .stack/, run with Debian's server binaries. Sourced by
# stack/stack.sh after common.sh.

# Prints the folder that holds the cluster's data, socket and log. As root the cluster runs
# as the postgres user, which cannot enter a checkout under a private folder (a home folder,
# a mktemp -d folder); such a checkout keeps its cluster under /var/tmp instead, in a folder
# named after the checkout's path so that two checkouts never share one.
postgres_base_dir() {
    if is_root && ! runuser -u postgres -- test -x "$REPO_ROOT" 2>/dev/null; then
        printf '/var/tmp/fieldforce-postgresql-%s\n' "$(printf '%s' "$REPO_ROOT" | sha256sum | cut -c1-12)"
    else
        printf '%s\n' "$STACK_DATA_DIR/postgresql-cluster"
    fi
}

POSTGRES_BASE_DIR=$(postgres_base_dir)
POSTGRES_DATA_DIR=$POSTGRES_BASE_DIR/data
# The server writes its Unix socket and lock file here instead of /run/postgresql,
# which belongs to the Debian system cluster.
POSTGRES_SOCKET_DIR=$POSTGRES_BASE_DIR/run
POSTGRES_LOG=$POSTGRES_BASE_DIR/postgresql.log
POSTGRES_URL="postgres://$POSTGRES_USER@$POSTGRES_HOST:$POSTGRES_PORT/$POSTGRES_DB"

# Prints the newest Debian server bin folder, for example /usr/lib/postgresql/15/bin.
postgres_bin_dir() {
    local dir
    dir=$(compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" | sort -V | tail -n 1)
    [[ -n $dir ]] || return 1
    dirname "$dir"
}

# PostgreSQL refuses to run as root, so as root the cluster belongs to the
# Debian postgres user; anyone else runs it as themselves.
postgres_os_user() {
    if is_root; then
        printf 'postgres\n'
    else
        id -un
    fi
}

postgres_as_owner() {
    if is_root; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

postgres_install() {
    postgres_bin_dir >/dev/null && return 0
    require_debian_package postgresql "the postgresql store backend needs the PostgreSQL server"
    postgres_bin_dir >/dev/null || fail "the postgresql package is installed but no /usr/lib/postgresql/*/bin/pg_ctl exists"
}

# Creates the data, socket and log paths and hands them to the cluster's OS user.
postgres_prepare_dirs() {
    local owner
    owner=$(postgres_os_user)
    mkdir -p "$POSTGRES_DATA_DIR" "$POSTGRES_SOCKET_DIR"
    touch "$POSTGRES_LOG"
    if is_root; then
        chown "$owner:" "$POSTGRES_BASE_DIR" "$POSTGRES_DATA_DIR" "$POSTGRES_SOCKET_DIR" "$POSTGRES_LOG"
        chmod 700 "$POSTGRES_DATA_DIR"
    fi

    # The postgres user must be able to reach the checkout, which fails for
    # example under a private home folder or a mktemp -d folder.
    postgres_as_owner test -w "$POSTGRES_DATA_DIR" ||
        fail "user $owner cannot write $POSTGRES_DATA_DIR (a parent folder is not searchable by $owner); use FIELDFORCE_STORE_BACKEND=sqlite"
}

postgres_init_cluster() {
    [[ -f $POSTGRES_DATA_DIR/PG_VERSION ]] && return 0

    local bin_dir
    bin_dir=$(postgres_bin_dir)
    say "creating PostgreSQL cluster in $POSTGRES_DATA_DIR"
    # Trust authentication is acceptable only because the server listens on
    # loopback and on a socket inside the checkout. Do not copy it to a shared host.
    postgres_as_owner "$bin_dir/initdb" --pgdata="$POSTGRES_DATA_DIR" --username="$POSTGRES_USER" \
        --auth=trust --encoding=UTF8 --locale=C.UTF-8 >>"$POSTGRES_LOG" 2>&1 ||
        fail "initdb failed; see $POSTGRES_LOG"
}

postgres_pid() {
    local pid
    [[ -f $POSTGRES_DATA_DIR/postmaster.pid ]] || return 1
    pid=$(head -n 1 "$POSTGRES_DATA_DIR/postmaster.pid" 2>/dev/null)
    pid_matches "$pid" "$POSTGRES_DATA_DIR" || return 1
    printf '%s\n' "$pid"
}

postgres_answers() {
    "$(postgres_bin_dir)/pg_isready" -q -h "$POSTGRES_HOST" -p "$POSTGRES_PORT" -U "$POSTGRES_USER" -d postgres
}

postgres_create_database() {
    local bin_dir exists
    bin_dir=$(postgres_bin_dir)
    exists=$("$bin_dir/psql" -h "$POSTGRES_HOST" -p "$POSTGRES_PORT" -U "$POSTGRES_USER" -d postgres \
        -tAc "SELECT 1 FROM pg_database WHERE datname = '$POSTGRES_DB'") ||
        fail "psql could not query PostgreSQL on $POSTGRES_HOST:$POSTGRES_PORT; see $POSTGRES_LOG"
    [[ $exists == 1 ]] && return 0
    "$bin_dir/createdb" -h "$POSTGRES_HOST" -p "$POSTGRES_PORT" -U "$POSTGRES_USER" "$POSTGRES_DB" ||
        fail "createdb $POSTGRES_DB failed; see $POSTGRES_LOG"
}

postgres_up() {
    local pid bin_dir
    postgres_install
    bin_dir=$(postgres_bin_dir)

    if pid=$(postgres_pid); then
        wait_until 10 "$pid" postgres_answers || fail "PostgreSQL (pid $pid) does not accept connections; see $POSTGRES_LOG"
        say "PostgreSQL is already running (pid $pid) on $POSTGRES_HOST:$POSTGRES_PORT"
        return 0
    fi

    if port_open "$POSTGRES_HOST" "$POSTGRES_PORT"; then
        fail "port $POSTGRES_PORT on $POSTGRES_HOST is in use by a process this checkout did not start; stop it, then run make up again"
    fi

    postgres_prepare_dirs
    postgres_init_cluster

    say "starting PostgreSQL $("$bin_dir/postgres" --version | awk '{print $3}') on $POSTGRES_HOST:$POSTGRES_PORT"
    # pg_ctl -w returns once the server accepts connections, or fails after -t seconds.
    postgres_as_owner "$bin_dir/pg_ctl" start --pgdata="$POSTGRES_DATA_DIR" --log="$POSTGRES_LOG" \
        --wait --timeout=60 --silent \
        -o "-c listen_addresses=$POSTGRES_HOST -c port=$POSTGRES_PORT -c unix_socket_directories=$POSTGRES_SOCKET_DIR" ||
        fail "PostgreSQL did not start; see $POSTGRES_LOG"

    postgres_create_database
    say "PostgreSQL is ready on $POSTGRES_HOST:$POSTGRES_PORT (pid $(postgres_pid))"
}

postgres_down() {
    local pid bin_dir
    pid=$(postgres_pid) || return 0
    bin_dir=$(postgres_bin_dir)
    say "stopping PostgreSQL (pid $pid)"
    # Fast shutdown rolls back open transactions and exits cleanly. The
    # SIGTERM/SIGKILL fallback runs only when pg_ctl times out or fails.
    postgres_as_owner "$bin_dir/pg_ctl" stop --pgdata="$POSTGRES_DATA_DIR" --mode=fast \
        --wait --timeout="$STOP_TIMEOUT_SECONDS" --silent || stop_pid PostgreSQL "$pid"
}

postgres_status() {
    local pid
    if pid=$(postgres_pid); then
        say "PostgreSQL: running, pid $pid, $POSTGRES_HOST:$POSTGRES_PORT, database $POSTGRES_DB"
    else
        say "PostgreSQL: stopped"
    fi
}
