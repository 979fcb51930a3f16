#!/usr/bin/env bash
# The project's test command: everything CI checks, in order, stopping at the first failure.
#
#   bash scripts/test.sh            fmt check, clippy -D warnings, host tests, CLI runs, QEMU suite
#   bash scripts/test.sh --no-qemu  the same without anything under qemu/ (kernels' fmt check, QEMU suite)
#
# Works on a fresh Debian 12 machine with a stable Rust toolchain: installs what is missing (rustfmt
# and clippy through rustup, a C linker and qemu-system-x86 through apt-get; sudo when not root;
# qemu/run.sh adds Debian's rustc-web, the ppc64 binutils and qemu-system-ppc for the pseries kernel).
# With CI set, cargo runs --locked (Cargo.lock files must be committed and current).
# Budget: under 15 minutes on 2 cores from a cold build.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

RUN_QEMU=yes
for arg in "$@"; do
    case $arg in
    --no-qemu) RUN_QEMU=no ;;
    -h | --help) sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "test.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

LOCKED=()
[[ -n ${CI:-} ]] && LOCKED=(--locked)

# Host tests run optimised (heavy tests stay fast) but keep debug assertions and overflow checks:
# address arithmetic is where this library can go wrong. The CLI runs share these artifacts.
CHECKED=(env CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true)

T0=$(date +%s)
step() { printf '\n== %s  (+%ss)\n' "$*" "$(($(date +%s) - T0))"; }
die() { echo "test.sh: $*" >&2; exit 1; }

SUDO=()
[[ $(id -u) -eq 0 ]] || SUDO=(sudo)
APT_UPDATED=no
apt_install() {
    command -v apt-get >/dev/null || die "need $* but apt-get is not available: install it by hand"
    if [[ $APT_UPDATED == no ]]; then
        "${SUDO[@]}" apt-get update -qq
        APT_UPDATED=yes
    fi
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "$@" >/dev/null
}

step "toolchain"
command -v cargo >/dev/null || die "cargo not found: install stable Rust (https://rustup.rs) and retry"
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    command -v rustup >/dev/null || die "rustfmt/clippy missing and no rustup to add them"
    rustup component add rustfmt clippy
fi
command -v cc >/dev/null || apt_install gcc libc6-dev
command -v python3 >/dev/null || apt_install python3
if [[ $RUN_QEMU == yes && -f qemu/run.sh ]] && ! command -v qemu-system-x86_64 >/dev/null; then
    echo "qemu-system-x86_64 not found: installing qemu-system-x86"
    apt_install qemu-system-x86
fi
cargo --version
cargo clippy --version

step "cargo fmt --check"
cargo fmt --all -- --check
if [[ $RUN_QEMU == yes ]]; then
    # The kernels' workspaces and their common crate (formatting needs no ppc64 toolchain).
    for dir in qemu/kernel qemu/pseries qemu/common qemu/uefi; do
        if [[ -f $dir/Cargo.toml ]]; then
            (cd "$dir" && cargo fmt -- --check)
        fi
    done
fi

step "no import cycle between the library's files"
python3 scripts/import-cycles.py

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy "${LOCKED[@]}" --workspace --all-targets -- -D warnings

step "cargo clippy -p ccdma --features debug-tracker,virtio-hal -- -D warnings"
cargo clippy "${LOCKED[@]}" -p ccdma -p ccdma-tests --all-targets --features ccdma-tests/tracker -- -D warnings

step "ccdma without its optional parts (clippy, unit tests) and with each alone (check); ~25 s cold, ~3 s warm"
# Default features are every part; a firmware may leave any out (guest/src/parts.rs). The unit tests
# without them check that each left-out call answers FeatureDisabled and the bounce path still works.
cargo clippy "${LOCKED[@]}" --quiet -p ccdma --all-targets --no-default-features -- -D warnings
cargo test "${LOCKED[@]}" --quiet --release -p ccdma --lib --no-default-features parts_tests
for part in growth trusted-devices scatter-gather papr-tce native-iommu ddw pool-full-report stats; do
    cargo check "${LOCKED[@]}" --quiet -p ccdma --no-default-features --features "$part"
done
# ffi's small layer with every part but native-iommu must fit CCDMA_SMALL_LAYER_NO_IOMMU_SIZE
# (compile-time assertion in ffi/src/lib.rs); one check, ~5 s cold, ~1 s warm.
cargo check "${LOCKED[@]}" --quiet -p ccdma-ffi --no-default-features \
    --features std,small-layer,growth,trusted-devices,scatter-gather,papr-tce
# and with every part (four IOMMU domains) CCDMA_SMALL_LAYER_SIZE: nothing else builds that
# configuration; one check, ~5 s cold, ~1 s warm.
cargo check "${LOCKED[@]}" --quiet -p ccdma-ffi --features small-layer

if [[ $RUN_QEMU == yes && -f qemu/common/Cargo.toml ]]; then
    step "cargo clippy in qemu/common (the kernels' shared crate, built for the host) -- -D warnings"
    (cd qemu/common && cargo clippy "${LOCKED[@]}" -- -D warnings)
fi

step "cargo doc -p ccdma --no-deps (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc "${LOCKED[@]}" --quiet -p ccdma --no-deps --features virtio-hal,debug-tracker

step "cargo test --workspace (release, debug assertions and overflow checks on)"
"${CHECKED[@]}" cargo test "${LOCKED[@]}" --workspace --release

step "misuse tracker (feature debug-tracker) against a leaky driver; call sites through the short forms"
"${CHECKED[@]}" cargo test "${LOCKED[@]}" --release -p ccdma-tests --features tracker --test tracker --test convenience -- --nocapture

step "Miri over the guest crate's unit tests (scripts/miri.sh; ~1 min warm, ~1.5 min cold)"
bash scripts/miri.sh

step "a 30 s coverage-guided fuzz run of the API against the model (scripts/fuzz.sh; build ~1-2 min cold)"
bash scripts/fuzz.sh 30

step "footprint budgets: C staticlib for x86_64-unknown-none, firmware profile (nightly -Z emit-stack-sizes; ~15 s cold)"
bash scripts/budgets.sh

step "ccdma-sim runs (every transfer verified by the model; non-zero exit on any failure)"
"${CHECKED[@]}" cargo build "${LOCKED[@]}" --quiet --release -p ccdma-tests --bin ccdma-sim
SIM_OUT=$(mktemp)
trap 'rm -f "$SIM_OUT"' EXIT
sim() {
    echo "-- ccdma-sim $*"
    # Same build as above (cargo run only finds the binary); the full report is shown on failure.
    if ! "${CHECKED[@]}" cargo run "${LOCKED[@]}" --quiet --release -p ccdma-tests --bin ccdma-sim -- "$@" \
        >"$SIM_OUT" 2>&1; then
        cat "$SIM_OUT"
        die "ccdma-sim $* failed"
    fi
    tail -n 1 "$SIM_OUT"
}
sim
sim --tdx --tdx-pages-per-call 64 --rounds 1
sim --plain --rounds 1
sim --ram 64G --pool 0x800000:4M --pool 0x800000000:64M --device tiny:20 --device old:24 --device nic:64 --expect-refused tiny --rounds 1
sim --iommu premapped --rounds 1
sim --iommu strict --reserve 0:1M --rounds 1

step "QEMU suite"
# ---- QEMU suite: boots both test kernels in every configuration (qemu/run.sh --all) ----
if [[ $RUN_QEMU == no ]]; then
    echo "skipped (--no-qemu)"
elif [[ -f qemu/run.sh ]]; then
    bash qemu/run.sh --all
else
    echo "qemu/run.sh not present yet: QEMU suite skipped"
fi

step "kernel budgets: ccdma's .text per instance, frames and a map's chain in both kernels (~2 s)"
# Reads the kernels the QEMU suite just built (their builds carry v0 names and .stack_sizes).
if [[ $RUN_QEMU == yes && -f qemu/run.sh ]]; then
    bash scripts/kernel-budgets.sh --no-build
else
    echo "skipped (--no-qemu)"
fi

step "all checks passed"
