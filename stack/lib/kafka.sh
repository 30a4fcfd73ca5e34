# Kafka: resolve the jars with Maven, format KRaft storage once, start,
# wait for metadata, stop. Sourced by stack/stack.sh after common.sh.

KAFKA_DATA_DIR=$STACK_DATA_DIR/kafka
KAFKA_CONFIG=$STACK_CONFIG_DIR/server.properties
KAFKA_READY_CONFIG=$STACK_CONFIG_DIR/readiness-admin.properties
KAFKA_SERVER_LOG=$STACK_LOG_DIR/kafka-server.log
KAFKA_STDOUT_LOG=$STACK_LOG_DIR/kafka.out
KAFKA_INSTALL_STAMP=$KAFKA_LIBS_DIR/.installed
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}

# The broker's command line contains this path, which is unique to the
# checkout; status and stop use it to find the broker.
KAFKA_PROCESS_MARKER="kafka.Kafka $KAFKA_CONFIG"

kafka_java() {
    printf '%s\n' "${JAVA:-java}"
}

# Kafka 4 needs Java 17 or newer for the broker and the tools.
kafka_check_java() {
    local java version
    java=$(kafka_java)
    command -v "$java" >/dev/null || fail "java not found: install a JDK 17 or newer, or set JAVA to its java binary"
    version=$("$java" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
    [[ ${version%%.*} -ge 17 ]] 2>/dev/null ||
        fail "$java is Java ${version:-unknown}; Kafka 4 needs Java 17 or newer (set JAVA to another java binary)"
}

kafka_install() {
    local digest
    digest=$(inputs_digest "$STACK_SRC_DIR/pom.xml")
    if [[ -f $KAFKA_INSTALL_STAMP && $(<"$KAFKA_INSTALL_STAMP") == "$digest" ]]; then
        return 0
    fi

    command -v mvn >/dev/null || require_debian_package maven "mvn is needed to resolve the Kafka jars"
    say "resolving Kafka jars with Maven into $KAFKA_LIBS_DIR"
    rm -rf "$KAFKA_LIBS_DIR"
    mkdir -p "$KAFKA_LIBS_DIR"
    mvn -q -B -f "$STACK_SRC_DIR/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS_DIR" \
        >"$STACK_LOG_DIR/maven.log" 2>&1 ||
        fail "Maven could not resolve the Kafka jars; see $STACK_LOG_DIR/maven.log"

    # Written last, so an interrupted download is retried on the next start.
    printf '%s\n' "$digest" >"$KAFKA_INSTALL_STAMP"
}

kafka_render_config() {
    sed -e "s|@KAFKA_DATA_DIR@|$KAFKA_DATA_DIR|g" \
        "$STACK_SRC_DIR/config/server.properties.in" >"$KAFKA_CONFIG"

    # The readiness probe must fail fast while the broker is still starting,
    # instead of retrying for the admin client's default 60 s.
    cat >"$KAFKA_READY_CONFIG" <<PROPS
request.timeout.ms=5000
default.api.timeout.ms=8000
PROPS
}

kafka_run_class() {
    "$STACK_SRC_DIR/lib/run-kafka-class" "$@"
}

# KRaft storage needs formatting with a cluster id before the first start.
# meta.properties marks a formatted log directory, so later starts skip this.
kafka_format_storage() {
    [[ -f $KAFKA_DATA_DIR/meta.properties ]] && return 0

    local cluster_id
    mkdir -p "$KAFKA_DATA_DIR"
    cluster_id=$(kafka_run_class kafka.tools.StorageTool random-uuid) ||
        fail "kafka.tools.StorageTool random-uuid failed"
    say "formatting Kafka storage in $KAFKA_DATA_DIR (cluster id $cluster_id)"
    kafka_run_class kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_CONFIG" \
        >"$STACK_LOG_DIR/kafka-format.log" 2>&1 ||
        fail "formatting Kafka storage failed; see $STACK_LOG_DIR/kafka-format.log"
}

kafka_pid() {
    running_pid kafka "$KAFKA_PROCESS_MARKER"
}

# Sends a real metadata request: list the topics through the admin client.
kafka_answers_metadata() {
    port_open "$KAFKA_HOST" "$KAFKA_PORT" || return 1
    "$STACK_SRC_DIR/bin/kafka-topics" --bootstrap-server "$KAFKA_BOOTSTRAP" \
        --command-config "$KAFKA_READY_CONFIG" --list >/dev/null 2>&1
}

kafka_wait_ready() {
    wait_for_service Kafka "$1" "$KAFKA_READY_TIMEOUT_SECONDS" "a metadata request on $KAFKA_BOOTSTRAP" \
        "$KAFKA_SERVER_LOG and $KAFKA_STDOUT_LOG" kafka_answers_metadata
}

kafka_up() {
    local pid
    if pid=$(kafka_pid); then
        kafka_wait_ready "$pid"
        say "Kafka is already running (pid $pid) on $KAFKA_BOOTSTRAP"
        return 0
    fi

    if port_open "$KAFKA_HOST" "$KAFKA_PORT" || port_open "$KAFKA_HOST" "$KAFKA_CONTROLLER_PORT"; then
        fail "port $KAFKA_PORT or $KAFKA_CONTROLLER_PORT on $KAFKA_HOST is in use by a process this checkout did not start; stop it, then run make up again"
    fi

    kafka_check_java
    kafka_install
    kafka_render_config
    kafka_format_storage

    say "starting Kafka $(kafka_version) on $KAFKA_BOOTSTRAP"
    # setsid puts the broker in a session of its own, so a Ctrl-C in the
    # terminal that ran make does not reach it. make down stops it.
    # shellcheck disable=SC2086 # KAFKA_HEAP_OPTS holds several JVM options.
    setsid "$(kafka_java)" $KAFKA_HEAP_OPTS -XX:+UseG1GC -Djava.awt.headless=true \
        -Dkafka.logs.dir="$STACK_LOG_DIR" \
        -Dlog4j2.configurationFile="$STACK_SRC_DIR/config/log4j2.xml" \
        -cp "$KAFKA_LIBS_DIR/*" kafka.Kafka "$KAFKA_CONFIG" \
        </dev/null >"$KAFKA_STDOUT_LOG" 2>&1 &
    pid=$!
    printf '%s\n' "$pid" >"$STACK_RUN_DIR/kafka.pid"

    kafka_wait_ready "$pid"
    say "Kafka is ready on $KAFKA_BOOTSTRAP (pid $pid)"
}

kafka_version() {
    local jar
    jar=$(compgen -G "$KAFKA_LIBS_DIR/kafka-clients-*.jar" | head -n 1)
    jar=${jar##*/kafka-clients-}
    printf '%s\n' "${jar%.jar}"
}

kafka_down() {
    local pid
    if pid=$(kafka_pid); then
        say "stopping Kafka (pid $pid)"
        stop_pid Kafka "$pid"
    fi
    stop_matching Kafka "$KAFKA_PROCESS_MARKER"
    rm -f "$STACK_RUN_DIR/kafka.pid"
}

kafka_status() {
    local pid
    if pid=$(kafka_pid); then
        say "Kafka $(kafka_version): running, pid $pid, $KAFKA_BOOTSTRAP (controller 127.0.0.1:$KAFKA_CONTROLLER_PORT)"
    else
        say "Kafka: stopped"
    fi
}
