#!/usr/bin/env bash
# Miri over every unit test of the guest crate (issue 18.15).
#
#   bash scripts/miri.sh                   all of them (the long loops shortened under cfg!(miri))
#   bash scripts/miri.sh iommu::list_pages only the tests whose names contain the filter(s)
#
# The long randomised loops run fewer rounds and smaller pools under Miri (`cfg!(miri)` in the
# tests: pool::tests, growth::live). Left out: the integration tests (tests/): the model maps guest
# RAM with mmap(MAP_NORESERVE), which Miri does not support.
# Installs nightly with miri and rust-src through rustup when missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v rustup >/dev/null || { echo "miri.sh: rustup is needed" >&2; exit 1; }
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal >/dev/null
rustup component list --toolchain nightly --installed | grep -q '^miri' ||
    rustup component add miri rust-src --toolchain nightly >/dev/null
FILTERS=("$@")
# The unit tests leak their storage on purpose (`Vec::leak` for `'static` slot records).
export MIRIFLAGS=${MIRIFLAGS:--Zmiri-ignore-leaks}
start=$(date +%s)
out=$(cargo +nightly miri test -q -p ccdma --lib -- ${FILTERS[@]+"${FILTERS[@]}"} 2>&1) || { echo "$out"; exit 1; }
echo "$out" | grep -E '^test result' | sed "s/^/miri: /"
echo "miri.sh: $(echo "$out" | grep -oE '[0-9]+ passed' | awk '{s+=$1} END {print s+0}') unit tests under Miri in $(($(date +%s) - start)) s"
