# FieldForce services for the demo: start the release binaries in the background
# with a shared configuration file, stop them, show them. Sourced after common.sh.

SERVICES_BIN_DIR=$REPO_ROOT/target/release
DEMO_CONFIG=${FIELDFORCE_CONFIG:-$STACK_SRC_DIR/demo/fieldforce.toml}

# Started from the sink back to the gateway, so that each stage has a consumer before
# records reach it; the operations page last, once there is something to watch.
SERVICES=(fieldforce-webhooks fieldforce-sink fieldforce-analytics fieldforce-quality fieldforce-geo fieldforce-validate fieldforce-gateway fieldforce-ops)

service_log() {
    printf '%s\n' "$STACK_LOG_DIR/$1.log"
}

# The binary path is unique to the checkout, so it marks only this checkout's services.
service_marker() {
    printf '%s\n' "$SERVICES_BIN_DIR/$1"
}

service_pid() {
    running_pid "$1" "$(service_marker "$1")"
}

services_up() {
    local service pid
    for service in "${SERVICES[@]}"; do
        if pid=$(service_pid "$service"); then
            say "$service already runs (pid $pid)"
            continue
        fi
        [[ -x $SERVICES_BIN_DIR/$service ]] || fail "$SERVICES_BIN_DIR/$service is missing; build it with cargo build --release"
        FIELDFORCE_CONFIG=$DEMO_CONFIG nohup "$SERVICES_BIN_DIR/$service" \
            >>"$(service_log "$service")" 2>&1 </dev/null &
        printf '%s\n' "$!" >"$STACK_RUN_DIR/$service.pid"
        say "started $service (pid $!), log $(service_log "$service")"
    done
}

services_down() {
    local service pid
    # Reverse order: the gateway stops taking submissions before the stages behind it stop.
    for ((index = ${#SERVICES[@]} - 1; index >= 0; index--)); do
        service=${SERVICES[index]}
        if pid=$(service_pid "$service"); then
            say "stopping $service (pid $pid)"
            stop_pid "$service" "$pid"
        fi
        stop_matching "$service" "$(service_marker "$service")"
        rm -f "$STACK_RUN_DIR/$service.pid"
    done
}

services_status() {
    local service pid
    for service in "${SERVICES[@]}"; do
        if pid=$(service_pid "$service"); then
            say "$service: running (pid $pid)"
        else
            say "$service: stopped"
        fi
    done
}
