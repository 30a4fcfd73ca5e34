#!/usr/bin/env bash
# FieldForce's main job end to end: start the stack and every service, replay real
# submissions through the gateway, run a generated workload, wait until everything
# accepted is stored, and print a summary. The stack and services stay up afterwards.
#
# Usage: stack/demo.sh
# INPUT=dir      folder of submissions to replay (default tools/replay/samples)
# AREA=code      boundary (ISO 3166-1 alpha-3) that becomes the replayed project's geofence (default KEN)
# RATE=n         generated requests per second (default 100)
# DURATION_S=n   seconds of generated load (default 20; 0 skips it)
set -euo pipefail

lib_dir=$(dirname "${BASH_SOURCE[0]}")/lib
# shellcheck source=lib/common.sh
source "$lib_dir/common.sh"
# shellcheck source=lib/services.sh
source "$lib_dir/services.sh"

INPUT=${INPUT:-$REPO_ROOT/tools/replay/samples}
AREA=${AREA:-KEN}
RATE=${RATE:-100}
DURATION_S=${DURATION_S:-20}
LEDGER=$STACK_RUN_DIR/accepted.jsonl
GATEWAY_URL=http://127.0.0.1:8080
# Tokens of the demo organisations in stack/demo/fieldforce.toml.
DEMO_TOKENS=demo-token-north,demo-token-south,demo-token-east

cd "$REPO_ROOT"
"$STACK_SRC_DIR/stack.sh" up

say "building the services (release)"
cargo build --release --quiet \
    -p fieldforce-gateway -p fieldforce-processors -p fieldforce-sink-mongodb \
    -p fieldforce-kafka -p fieldforce-replay -p fieldforce-ops

export FIELDFORCE_CONFIG=$DEMO_CONFIG
say "creating the catalog's topics"
"$SERVICES_BIN_DIR/fieldforce-topics" apply

boundaries=$("$STACK_SRC_DIR/fetch-boundaries")
say "real boundaries: $boundaries"

services_up
gateway_ready() {
    curl -fsS "$GATEWAY_URL/readyz" >/dev/null 2>&1
}
wait_until 60 "" gateway_ready ||
    fail "the gateway did not become ready; see $(service_log fieldforce-gateway)"

replay() {
    "$SERVICES_BIN_DIR/fieldforce-replay" --gateway "$GATEWAY_URL" --ledger "$LEDGER" "$@"
}

rm -f "$LEDGER"
echo
say "replaying $INPUT"
replay replay --project demo --geofences "$boundaries" --area "$AREA" "$INPUT"

if [[ $DURATION_S != 0 ]]; then
    echo
    say "generated workload: $RATE requests/s for ${DURATION_S}s"
    replay load --rate "$RATE" --duration-s "$DURATION_S" --tokens "$DEMO_TOKENS" \
        --geofences "$boundaries"
fi

echo
summary_status=0
replay summary || summary_status=$?

cat <<TEXT

The stack and the services are still running.
  logs:           $STACK_LOG_DIR
  the data:       database fieldforce, collection submissions at mongodb://127.0.0.1:27017/
                  (any MongoDB client, such as mongosh, reads it)
  operations:     http://127.0.0.1:9400/ (lag per group and partition, throughput, dead letters)
  consumer lag:   stack/bin/kafka-consumer-groups --bootstrap-server $KAFKA_BOOTSTRAP --describe --all-groups
  raw topic:      stack/bin/kafka-console-consumer --bootstrap-server $KAFKA_BOOTSTRAP --topic fieldforce.submissions.raw --from-beginning
  stop it all:    make down
TEXT
exit "$summary_status"
