#!/usr/bin/env bash
# What each optional part of ccdma (guest/src/parts.rs) costs in the C staticlib: `.text` of the
# "minimal" image (init, add_pool, attach, map, unmap, detach; log compiled out) and of the "full"
# image (every export), built as scripts/budgets.sh builds them (x86_64-unknown-none, the `firmware`
# profile, ld --gc-sections), once with every part but one and once with that part alone; then
# ffi's `full` with each of ccdma's parts ffi leaves out (ddw, pool-full-report, stats) added.
#
#   bash scripts/parts-text.sh        ~2 min on 2 cores (32 staticlib builds); not in test.sh
#
# Run scripts/budgets.sh once first (it installs the nightly toolchain and the target).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PARTS=(growth trusted-devices scatter-gather papr-tce native-iommu)
LEFT_OUT=(ddw pool-full-report stats)
MINIMAL=(ccdma_layer_init ccdma_add_pool ccdma_attach ccdma_map ccdma_unmap ccdma_detach)
build() { # build FEATURES DIR: the staticlib's path
    local dir=$ROOT/target/parts-text-$2
    (cd ffi && CARGO_TARGET_DIR=$dir cargo +nightly rustc --quiet \
        --profile firmware --target x86_64-unknown-none --no-default-features --features "$1" \
        --crate-type staticlib) >&2
    echo "$dir/x86_64-unknown-none/firmware/libccdma_ffi.a"
}
text() { # text LIB SYMBOL...: .text of a freestanding link keeping those exports
    local lib=$1 req=() out
    shift
    for s in "$@"; do req+=("--require-defined=$s"); done
    out=$(mktemp)
    ld -static -nostdlib --gc-sections --no-undefined -e 0 "${req[@]}" -o "$out" "$lib"
    size -A "$out" | awk '$1 == ".text" {print $2}'
    rm -f "$out"
}
row() { # row LABEL FEATURES
    local lm lf
    lm=$(build "panic-handler,log-off${2:+,$2}" min)
    lf=$(build "panic-handler${2:+,$2}" full)
    mapfile -t all < <(nm -g --defined-only "$lf" 2>/dev/null | awk '$2 == "T" && $3 ~ /^ccdma_/ {print $3}' | sort -u)
    printf '%-34s %9d %9d\n' "$1" "$(text "$lm" "${MINIMAL[@]}")" "$(text "$lf" "${all[@]}")"
}
printf '%-34s %9s %9s\n' "build (.text bytes)" minimal full
row "every part" "$(IFS=,; echo "${PARTS[*]}")"
for p in "${PARTS[@]}"; do
    row "every part but $p" "$(printf '%s\n' "${PARTS[@]}" | grep -vx "$p" | paste -sd,)"
done
row "no part" ""
for p in "${PARTS[@]}"; do
    row "$p alone" "$p"
done
# ccdma's parts that ffi never turns on (ffi/Cargo.toml says why), each added to ffi's `full` (the
# images scripts/budgets.sh measures): what leaving it out saves.
row "ffi's full" full
for p in "${LEFT_OUT[@]}"; do
    row "full and ccdma's $p" "full,ccdma/$p"
done
