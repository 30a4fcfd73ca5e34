#!/usr/bin/env bash
# Installs, starts and stops the local stack: one KRaft Kafka node, FerretDB
# on SQLite or PostgreSQL and an S3-compatible server, all under .stack/ in
# this checkout.
#
# Usage: stack/stack.sh up|down|status|logs|clean
# FIELDFORCE_STORE_BACKEND=sqlite|postgresql picks FerretDB's backend; the
# default is DEFAULT_STORE_BACKEND in stack/lib/common.sh.
set -euo pipefail

lib_dir=$(dirname "${BASH_SOURCE[0]}")/lib
# shellcheck source=lib/common.sh
source "$lib_dir/common.sh"
# shellcheck source=lib/kafka.sh
source "$lib_dir/kafka.sh"
# shellcheck source=lib/postgres.sh
source "$lib_dir/postgres.sh"
# shellcheck source=lib/ferretdb.sh
source "$lib_dir/ferretdb.sh"
# shellcheck source=lib/s3.sh
source "$lib_dir/s3.sh"
# shellcheck source=lib/services.sh
source "$lib_dir/services.sh"
# shellcheck source=lib/chromium.sh
source "$lib_dir/chromium.sh"

print_logs() {
    say "logs are in $STACK_LOG_DIR:"
    say "  Kafka broker:    $KAFKA_SERVER_LOG (also kafka-controller.log, kafka-state-change.log)"
    say "  Kafka stdout:    $KAFKA_STDOUT_LOG"
    say "  FerretDB:        $FERRETDB_LOG"
    say "  PostgreSQL:      $POSTGRES_LOG"
    say "  S3 server:       $S3_LOG"
}

stack_up() {
    # Reject an invalid backend before spending time on Kafka.
    store_backend >/dev/null
    ensure_dirs
    # kcat is how partner systems are played in the tests: a plain Kafka client, not ours.
    command -v kcat >/dev/null || require_debian_package kcat "kcat is the partner-side Kafka client of the tests"
    chromium_install
    kafka_up
    ferretdb_up
    s3_up
    print_logs
}

stack_down() {
    # The demo's services go first, while Kafka and the store can still take their last
    # commits and writes.
    services_down
    s3_down
    # Stop FerretDB before PostgreSQL, so that it does not lose its backend
    # while it still serves requests.
    ferretdb_down
    postgres_down
    kafka_down
    say "stack stopped"
}

stack_status() {
    services_status
    kafka_status
    ferretdb_status
    postgres_status
    s3_status
}

# Removes data, logs, generated config and run state, but keeps the
# downloaded jars and built binaries, so the next make up starts from empty
# storage without fetching anything.
stack_clean() {
    stack_down
    rm -rf "$STACK_DATA_DIR" "$STACK_LOG_DIR" "$STACK_RUN_DIR" "$STACK_CONFIG_DIR" "$POSTGRES_BASE_DIR"
    say "removed data, logs and config under $STACK_DIR (downloads kept)"
}

case ${1:-} in
    up) stack_up ;;
    down) stack_down ;;
    status) stack_status ;;
    logs) print_logs ;;
    clean) stack_clean ;;
    *) fail "usage: stack/stack.sh up|down|status|logs|clean" ;;
esac
