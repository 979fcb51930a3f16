#!/usr/bin/env bash
# Miri over the guest crate's unit tests that exercise its unsafe code (issue 18.15).
#
#   bash scripts/miri.sh          the selection below (about a minute on 2 cores)
#   bash scripts/miri.sh --all    every unit test of the guest crate (about 15 minutes: not in CI)
#
# Selected: the TCE list pages (volatile u64 writes into caller pages), the bus-space allocator,
# the device-id table, the seqlock'd pool view, address types. Left out of the default run: the
# integration tests (tests/): the model maps guest RAM with mmap(MAP_NORESERVE), which Miri does
# not support; and the long pool/property loops (--all runs them).
# Installs nightly with miri and rust-src through rustup when missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v rustup >/dev/null || { echo "miri.sh: rustup is needed" >&2; exit 1; }
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal >/dev/null
rustup component list --toolchain nightly --installed | grep -q '^miri' ||
    rustup component add miri rust-src --toolchain nightly >/dev/null
FILTERS=(iommu::list_pages iommu::bus_space device_ids addr:: growth::live::tests::sorted)
[[ ${1:-} == --all ]] && FILTERS=()
# The unit tests leak their storage on purpose (`Vec::leak` for `'static` slot records).
export MIRIFLAGS=${MIRIFLAGS:--Zmiri-ignore-leaks}
start=$(date +%s)
out=$(cargo +nightly miri test -q -p ccdma --lib -- "${FILTERS[@]}" 2>&1) || { echo "$out"; exit 1; }
echo "$out" | grep -E '^test result' | sed "s/^/miri: /"
echo "miri.sh: $(echo "$out" | grep -oE '[0-9]+ passed' | awk '{s+=$1} END {print s+0}') unit tests under Miri in $(($(date +%s) - start)) s"
