#!/usr/bin/env bash
# Runs COMMAND and prints the CPU time (user plus system) each process name used meanwhile,
# over 0.2 s. /proc is sampled every 0.5 s per process id, so processes that start and end
# during the command count too, up to their last sample. Used to see how the cores of a
# benchmark split between the gateway, the load tool, Kafka and the store.
#
# usage: stack/cpu-by-process.sh COMMAND [ARG...]
set -euo pipefail

if (($# == 0)); then
    sed -n '7p' "$0" >&2
    exit 2
fi

samples=$(mktemp)
trap 'rm -f "$samples"' EXIT
(while :; do
    for stat in /proc/[0-9]*/stat; do
        pid=${stat#/proc/}
        # Field 2 is the name in parentheses, 14 and 15 the user and system ticks.
        awk -v pid="${pid%/stat}" '{name = $2; gsub(/[()]/, "", name); print pid, name, $14 + $15}' \
            "$stat" 2>/dev/null || true
    done
    echo mark
    sleep 0.5
done) >"$samples" &
sampler=$!
status=0
"$@" || status=$?
kill "$sampler"
wait "$sampler" 2>/dev/null || true

awk -v hz="$(getconf CLK_TCK)" '
    $1 == "mark" { round++; next }
    {
        # A process seen in the first sample counts from there, a later one from zero.
        if (!($1 in first)) first[$1] = (round == 0 ? $3 : 0)
        last[$1] = $3
        name[$1] = $2
    }
    END {
        for (pid in last) used[name[pid]] += last[pid] - first[pid]
        for (n in used) if (used[n] / hz > 0.2) printf "  cpu %-18s %6.2f s\n", n, used[n] / hz
    }' "$samples" | sort -k3 -rn
exit "$status"
