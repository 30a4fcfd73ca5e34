#!/usr/bin/env bash
# One whole-pipeline benchmark run. It starts the gateway, the three processors and the
# sink from target/release with their own topics, database and consumer groups, and offers
# open-loop load with fieldforce-replay. It samples every group's lag every 2 s until the
# sink has caught up, then reports the accepted-to-stored latency and each group's highest
# lag.
# Needs the stack (`make up`) and `cargo build --release --workspace --bins`. BIN=DIR takes
# the services from DIR instead of target/release, to compare two builds.
#
# usage: stack/bench-pipeline.sh TAG FORMAT RATE DURATION_S SEED [BATCH]
#   TAG         names the topics (bench-TAG.), the database (bench_TAG), the consumer groups
#               and the files under target/bench/; use a new TAG per run
#   FORMAT      openrosa, json, batch or mix (fieldforce-replay load --format)
#   RATE        requests per second offered
#   DURATION_S  how long the load runs
#   SEED        load seed
#   BATCH       submissions per batch request (default 20)
set -euo pipefail

if (($# < 5)); then
    sed -n '10,17p' "$0" >&2
    exit 2
fi
tag=$1 format=$2 rate=$3 duration_s=$4 seed=$5 batch=${6:-20}

cd "$(dirname "$0")/.."
out=target/bench
bin=${BIN:-target/release}
mkdir -p "$out"
export FIELDFORCE_KAFKA__TOPIC_PREFIX=bench-$tag. FIELDFORCE_MONGODB__DATABASE=bench_$tag
export FIELDFORCE_PROCESSORS__GROUP_ID_PREFIX=bench-$tag. FIELDFORCE_SINK__GROUP_ID_PREFIX=bench-$tag.
export FIELDFORCE_GATEWAY__LISTEN_ADDR=127.0.0.1:18091
export FIELDFORCE_GATEWAY__BLOB_DIR=$out/blobs-$tag
export FIELDFORCE_GATEWAY_URL=http://127.0.0.1:18091 RUST_LOG=warn
boundaries=$(stack/fetch-boundaries)
ledger=$out/pipeline-ledger-$tag.jsonl
lag_log=$out/pipeline-lag-$tag.txt
rm -f "$ledger" "$lag_log"

"$bin/fieldforce-topics" apply >/dev/null
services=(sink quality geo validate gateway)
pids=()
stop_services() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop_services EXIT
# From the sink back to the gateway, so that every stage has its consumer before records
# reach it.
for service in "${services[@]}"; do
    "$bin/fieldforce-$service" >"$out/pipeline-$service-$tag.log" 2>&1 &
    pids+=("$!")
done
for _ in $(seq 300); do
    curl -fs -o /dev/null "$FIELDFORCE_GATEWAY_URL/readyz" && break
    sleep 0.2
done

groups=(
    "--group" "bench-$tag.fieldforce-validation=bench-$tag.submissions.raw"
    "--group" "bench-$tag.fieldforce-geo=bench-$tag.submissions.validated"
    "--group" "bench-$tag.fieldforce-quality=bench-$tag.submissions.located"
    "--group" "bench-$tag.fieldforce-sink=bench-$tag.submissions.processed"
)

# Prints the CPU seconds (user plus system) each process has used, one "name seconds" line
# each. Kafka, FerretDB and PostgreSQL belong to the stack, and PostgreSQL sums its processes.
cpu_seconds() {
    local index pid
    for index in "${!services[@]}"; do
        printf '%s %s\n' "${services[index]}" "$(process_cpu "${pids[index]}")"
    done
    printf 'kafka %s\n' "$(process_cpu "$(pgrep -f kafka.Kafka | head -1)")"
    printf 'ferretdb %s\n' "$(process_cpu "$(pgrep -x ferretdb | head -1)")"
    local total=0
    for pid in $(pgrep -x postgres); do
        total=$(awk -v a="$total" -v b="$(process_cpu "$pid")" 'BEGIN { print a + b }')
    done
    printf 'postgresql %s\n' "$total"
}
# Prints the CPU seconds of one process, 0 when it is gone.
process_cpu() {
    local ticks
    ticks=$(getconf CLK_TCK)
    awk -v ticks="$ticks" '{ sub(/^.*\) /, ""); print ($12 + $13) / ticks }' "/proc/$1/stat" 2>/dev/null ||
        echo 0
}

# A short setup load registers the form and the geofences and lets every consumer group
# join before the measured load starts.
"$bin/fieldforce-replay" --ledger "$out/pipeline-setup-$tag.jsonl" load --rate 5 --duration-s 2 \
    --format json --bad-share 0 --seed "$((seed + 100000))" --geofences "$boundaries" >/dev/null
"$bin/fieldforce-replay" --ledger "$out/pipeline-setup-$tag.jsonl" summary --wait-s 120 >/dev/null

"$bin/fieldforce-lag" --watch --interval-s 2 "${groups[@]}" >"$lag_log" 2>&1 &
lag_watch=$!
pids+=("$lag_watch")

cpu_seconds >"$out/pipeline-cpu-start-$tag.txt"
started=$(date +%s.%N)
echo "== load: $format at $rate requests/s for $duration_s s"
/usr/bin/time -f 'replay %U %S' -o "$out/pipeline-cpu-replay-$tag.txt" \
    "$bin/fieldforce-replay" --ledger "$ledger" load --rate "$rate" --duration-s "$duration_s" \
    --format "$format" --batch-size "$batch" --bad-share 0 --no-setup --seed "$seed" \
    --geofences "$boundaries" 2>&1 | tail -5
# The summary reads the whole collection on every poll. Waiting on the groups' committed
# offsets first keeps those reads out of the measured time.
for _ in $(seq 600); do
    # fieldforce-lag exits 1 while a group lags, so its status is left out.
    lag=$({ "$bin/fieldforce-lag" --interval-s 1 "${groups[@]}" 2>/dev/null || true; } |
        awk '$1 ~ /^bench-/ && NF == 7 { total += $6 } END { print total + 0 }')
    [[ $lag == 0 ]] && break
done
cpu_seconds >"$out/pipeline-cpu-end-$tag.txt"
ended=$(date +%s.%N)
echo "== summary"
"$bin/fieldforce-replay" --ledger "$ledger" summary --wait-s 600 2>&1 |
    grep -E '^ *(accepted|stored|missing) ' || true
sleep 4
kill "$lag_watch" 2>/dev/null || true

echo "== CPU from the start of the load until everything was stored"
awk -v wall="$(awk -v a="$started" -v b="$ended" 'BEGIN { print b - a }')" '
    FILENAME ~ /replay/ { used["replay"] = $2 + $3; order[++count] = "replay"; next }
    FILENAME ~ /start/ { before[$1] = $2; next }
    { used[$1] = $2 - before[$1]; order[++count] = $1 }
    END {
        printf "%-12s %8s %8s\n", "process", "CPU s", "cores"
        for (index_ = 1; index_ <= count; index_++) {
            name = order[index_]
            total += used[name]
            printf "%-12s %8.1f %8.2f\n", name, used[name], used[name] / wall
        }
        printf "%-12s %8.1f %8.2f  over %.1f s\n", "total", total, total / wall, wall
    }' "$out/pipeline-cpu-start-$tag.txt" "$out/pipeline-cpu-end-$tag.txt" \
    "$out/pipeline-cpu-replay-$tag.txt"

echo "== highest lag per group while the load ran and drained (2 s samples)"
awk '$1 ~ /^bench-/ && NF == 7 {
        group = $1
        sub(/^bench-[^.]*\./, "", group)
        if ($6 + 0 > records[group]) records[group] = $6 + 0
        if ($7 + 0 > seconds[group]) seconds[group] = $7 + 0
        seen[group] = 1
    }
    END { for (group in seen) printf "%-24s %10d records %8.1f s\n", group, records[group], seconds[group] }' \
    "$lag_log" | sort

# The run's topics are deleted so that repeated runs do not fill the broker's disk.
stack/bin/kafka-topics --bootstrap-server 127.0.0.1:9092 --delete --topic "bench-$tag\..*" \
    >/dev/null 2>&1 || true
