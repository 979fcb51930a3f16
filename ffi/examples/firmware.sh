#!/usr/bin/env bash
# Builds ccdma's C interface as a no_std staticlib for a firmware target, links the freestanding C
# example (ffi/examples/firmware.c) against it with --gc-sections (the link fails on any undefined
# symbol), and prints the sizes: "minimal" keeps what firmware_main calls (init, add_pool, attach, map,
# unmap, detach, fini), "all exports" keeps every ccdma_* function (-u for each).
#
#   bash ffi/examples/firmware.sh            # release profile (opt-level 3)
#   OPT=s bash ffi/examples/firmware.sh      # the `firmware` profile: opt-level "s", fat LTO, one codegen unit
#
# Needs: rustup target add x86_64-unknown-none; gcc and binutils (ld, size, nm).
set -euo pipefail
cd "$(dirname "$0")/../.."
TARGET=${TARGET:-x86_64-unknown-none}
OPT=${OPT:-3}
OUT=${OUT:-target/ccdma-firmware}
mkdir -p "$OUT"
PROFILE=release
if [ "$OPT" != 3 ]; then
    # The workspace's firmware profile (Cargo.toml), at the opt-level asked for.
    PROFILE=firmware
    export CARGO_PROFILE_FIRMWARE_OPT_LEVEL="$OPT"
fi
# `cargo rustc --crate-type staticlib`, not `cargo build`: ccdma-ffi is also an rlib, and cargo
# drops the profile's LTO for a crate built as an rlib too.
cargo rustc -q -p ccdma-ffi --profile "$PROFILE" --target "$TARGET" --no-default-features --features panic-handler \
    --target-dir "$OUT/cargo-opt-$OPT" --crate-type staticlib
LIB="$OUT/cargo-opt-$OPT/$TARGET/$PROFILE/libccdma_ffi.a"
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
