#!/usr/bin/env bash
# Instructions per operation of the pool benchmark's cases under callgrind (issue 11): instruction
# counts do not move with the load of a shared machine, so they sit beside the times.
# Usage: bash scripts/pool_callgrind.sh [BENCH_BINARY]   (default: builds and finds benches/pool.rs)
# CASES="churn50-ccdma map4k-to" picks cases (see `callgrind` in tests/benches/pool.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-}
if [ -z "$bin" ]; then
    cargo bench -p ccdma-tests --bench pool --no-run 2>/dev/null
    bin=$(ls -t target/release/deps/pool-* | grep -v '\.d$' | head -1)
fi
out=$(mktemp -d)
printf '%-16s %14s\n' case "Ir per op"
cases=${CASES:-"churn10-ccdma churn50-ccdma churn90-ccdma churn10-buddy churn50-buddy churn90-buddy churn50-linked
    lchurn50-ccdma lchurn90-ccdma
    churn50-ccdma-16m churn50-ccdma-1g fail16-ccdma fail64-ccdma fail1g-ccdma fail64-buddy
    map4k-to map4k-from map64k-to map64k-from"}
for case in $cases; do
    ops=$(CCDMA_CG=$case valgrind --tool=callgrind --toggle-collect='*cg_measured*' \
        --callgrind-out-file="$out/$case.cg" "$bin" 2>/dev/null | sed -n 's/^cg case .* ops //p')
    ir=$(callgrind_annotate "$out/$case.cg" 2>/dev/null | grep -m1 'PROGRAM TOTALS' | awk '{gsub(",","",$1); print $1}')
    printf '%-16s %14.0f\n' "$case" "$(echo "$ir / $ops" | bc -l)"
done
rm -rf "$out"
