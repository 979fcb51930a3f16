#!/usr/bin/env bash
# Builds ccdma's C interface as a no_std staticlib for a firmware target, links the freestanding C
# example (ffi/examples/firmware.c) against it with --gc-sections (the link fails on any undefined
# symbol), and prints the sizes: "minimal" keeps what firmware_main calls (init, add_pool, attach, map,
# unmap, detach, fini), "all exports" keeps every ccdma_* function (-u for each).
#
#   bash ffi/examples/firmware.sh            # release profile (opt-level 3)
#   OPT=s bash ffi/examples/firmware.sh      # opt-level "s", fat LTO, one codegen unit
#
# Needs: rustup target add x86_64-unknown-none; gcc and binutils (ld, size, nm).
set -euo pipefail
cd "$(dirname "$0")/../.."
TARGET=${TARGET:-x86_64-unknown-none}
OPT=${OPT:-3}
OUT=${OUT:-target/ccdma-firmware}
mkdir -p "$OUT"
if [ "$OPT" != 3 ]; then
    export CARGO_PROFILE_RELEASE_OPT_LEVEL="$OPT" CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
fi
cargo build -q -p ccdma-ffi --release --target "$TARGET" --no-default-features --features panic-handler \
    --target-dir "$OUT/cargo-opt-$OPT"
LIB="$OUT/cargo-opt-$OPT/$TARGET/release/libccdma_ffi.a"
CFLAGS=(-std=c99 -pedantic -Wall -Wextra -Werror -Os -ffreestanding -nostdinc
    -isystem "$(gcc -print-file-name=include)" -fno-pic -fno-pie -mno-red-zone -fno-stack-protector
    -ffunction-sections -fdata-sections -I ffi/include)
gcc "${CFLAGS[@]}" -c ffi/examples/firmware.c -o "$OUT/firmware.o"
ld -nostdlib -static --gc-sections -e firmware_main -o "$OUT/minimal.elf" "$OUT/firmware.o" "$LIB"
EXPORTS=$(nm -g --defined-only "$LIB" 2>/dev/null | awk '$2 == "T" && $3 ~ /^ccdma_/ { print $3 }' | sort -u)
UNDEF=()
for f in $EXPORTS; do UNDEF+=(-u "$f"); done
ld -nostdlib -static --gc-sections -e firmware_main "${UNDEF[@]}" -o "$OUT/all.elf" "$OUT/firmware.o" "$LIB"
echo "ccdma C staticlib, $TARGET, opt-level $OPT, linked with --gc-sections ($(echo "$EXPORTS" | wc -l) exports):"
size "$OUT/minimal.elf" "$OUT/all.elf" | sed "s#$OUT/##"
