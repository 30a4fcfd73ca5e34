#!/usr/bin/env bash
# One gateway benchmark run: start the gateway BINARY with its own topics and database,
# wait until /readyz returns 200, offer 15 s of open-loop load with fieldforce-replay, sample
# the gateway's VmRSS every second, then stop it. ROUNDS=n (default 1) repeats the load on
# the same gateway with seeds SEED, SEED+1, ..., each followed by IDLE_S seconds without
# load (default 5). VmRSS is printed after each load and each idle time. That separates
# memory that grows with the submissions seen from memory held only at full load. The
# gateway's CPU time (user plus system) during each load is printed too. Needs the stack
# (`make up`) and release builds of fieldforce-topics and fieldforce-replay in target/release;
# REPLAY=path runs another build of the load tool. The run's topics are deleted at the end
# (KEEP_TOPICS=1 keeps them): a batch run at 3,000 requests/s leaves about 1 GB in Kafka.
# Its database stays, a few hundred MB after such a run. `make clean-stack` removes every
# database, which a long series of runs needs now and then.
#
# usage: stack/bench-gateway.sh BINARY TAG FORMAT RATE SEED [BATCH]
#   TAG     names the topics (bench-TAG.), the database (bench_TAG) and the files under
#           target/bench/; the first run of a TAG registers the form and geofences
#   FORMAT  json, openrosa or batch (fieldforce-replay load --format)
#   RATE    requests per second offered
#   SEED    load seed; use a new one per run, because a repeated seed repeats instanceIDs
#   BATCH   submissions per batch request (default 20)
set -euo pipefail

if (($# < 5)); then
    sed -n '15,21p' "$0" >&2
    exit 2
fi
binary=$1 tag=$2 format=$3 rate=$4 seed=$5 batch=${6:-20}

cd "$(dirname "$0")/.."
out=target/bench
mkdir -p "$out"
export FIELDFORCE_KAFKA__TOPIC_PREFIX=bench-$tag. FIELDFORCE_MONGODB__DATABASE=bench_$tag
export FIELDFORCE_GATEWAY__LISTEN_ADDR=127.0.0.1:18090
export FIELDFORCE_GATEWAY__BLOB_DIR=$out/blobs-$tag
export FIELDFORCE_GATEWAY_URL=http://127.0.0.1:18090 RUST_LOG=warn
boundaries=$(stack/fetch-boundaries)
replay=${REPLAY:-target/release/fieldforce-replay}

target/release/fieldforce-topics apply >/dev/null
"$binary" >"$out/gateway-$tag.log" 2>&1 &
gateway=$!
trap 'kill "$gateway" 2>/dev/null || true' EXIT
for _ in $(seq 300); do
    curl -fs -o /dev/null "$FIELDFORCE_GATEWAY_URL/readyz" && break
    sleep 0.2
done

ledger=$out/ledger-$tag.jsonl
if [[ ! -e $ledger ]]; then
    "$replay" --ledger "$ledger" load --rate 20 --duration-s 2 \
        --format json --bad-share 0 --geofences "$boundaries" >/dev/null
fi

rss=$out/rss-$tag-$seed.txt
(while kill -0 "$gateway" 2>/dev/null; do
    awk '/VmRSS/ {print $2}' "/proc/$gateway/status" 2>/dev/null || true
    sleep 1
done) >"$rss" &

vmrss() {
    awk '/VmRSS/ {print $2}' "/proc/$gateway/status"
}
# User plus system CPU time of the gateway so far, in clock ticks (fields 14 and 15).
cpu_ticks() {
    awk '{print $14 + $15}' "/proc/$gateway/stat"
}
ticks_per_s=$(getconf CLK_TCK)
echo "VmRSS at start $(vmrss) KiB"
for round in $(seq "${ROUNDS:-1}"); do
    ticks_before=$(cpu_ticks)
    # The load tool exits non-zero when requests went unsent or unanswered, which is a
    # result to print, not a reason to stop before the memory and CPU figures.
    # The load tool shares the cores with the gateway, so its CPU time is printed too.
    TIMEFORMAT="load tool CPU %U s user, %S s system"
    { time "$replay" --ledger "$ledger" load --rate "$rate" --duration-s 15 \
        --format "$format" --batch-size "$batch" --bad-share 0 --no-setup \
        --seed "$((seed + round - 1))" --geofences "$boundaries" 2>&1 |
        grep -vE '^load: [0-9]+/[0-9]+ started' || true; } 2>&1
    echo "VmRSS after load $round $(vmrss) KiB"
    echo "gateway CPU during load $round $(awk -v t="$(($(cpu_ticks) - ticks_before))" \
        -v hz="$ticks_per_s" 'BEGIN {printf "%.2f", t / hz}') s user+sys"
    sleep "${IDLE_S:-5}"
    echo "VmRSS after ${IDLE_S:-5} s idle $(vmrss) KiB"
done
kill "$gateway"
wait "$gateway" 2>/dev/null || true
echo "max VmRSS $(sort -n "$rss" | tail -1) KiB, last $(tail -1 "$rss") KiB ($(wc -l <"$rss") samples, 1 s apart)"
if [[ -z ${KEEP_TOPICS:-} ]]; then
    stack/bin/kafka-topics --bootstrap-server "${FIELDFORCE_KAFKA__BOOTSTRAP_SERVERS:-127.0.0.1:9092}" \
        --delete --topic "bench-$tag\\..*" >/dev/null 2>&1 ||
        echo "topics bench-$tag.* not deleted: make clean-stack removes them" >&2
fi
