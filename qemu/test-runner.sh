#!/usr/bin/env bash
# Tests qemu/run.sh's attribution of QEMU's IOMMU rejections and broken devices on fixtures (no
# QEMU, under a second): each case is a kernel output, a guest_errors log and a QEMU stderr, and the
# problems the runner must (or must not) record. `bash qemu/test-runner.sh`; exit status 0 if all hold.
set -euo pipefail
# shellcheck source=run.sh
source "$(dirname "${BASH_SOURCE[0]}")/run.sh"

DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
FAILED=0

# case NAME EXPECTED_PROBLEM_COUNT PATTERN: runs the attribution over $DIR/{serial,log,stderr}.
check() {
    local name=$1 want=$2 pattern=$3
    attribute_rejections "$DIR/serial" "$DIR/log" "$DIR/stderr" >"$DIR/out"
    local joined
    joined=$(printf '%s\n' ${PROBLEMS[@]+"${PROBLEMS[@]}"})
    if [[ ${#PROBLEMS[@]} -eq $want && $joined == *"$pattern"* ]]; then
        echo "PASS $name"
    else
        echo "FAIL $name: ${#PROBLEMS[@]} problem(s), wanted $want matching '$pattern': $joined"
        FAILED=$((FAILED + 1))
    fi
}

reject() { echo "Invalid write at addr $1, size 4, region '(null)', reason: rejected"; }
WINDOWS='WINDOW default liobn=0x80000000 bus=0x0 len=0x40000000
WINDOW ddw liobn=0x80000001 bus=0x800000000000000 len=0x800000'

# A DDW rejection is logged as the offset inside the window: attributed to the check in the DDW.
printf '%s\nCONTAIN ddw.check bus=0x800000000600000 len=0x1000 expect=rejected\n' "$WINDOWS" >"$DIR/serial"
reject 0x600000 >"$DIR/log"
: >"$DIR/stderr"
check ddw_offset_attributed 0 ""

# The same rejection logged at the bus address (as the runner once assumed) is not explained.
reject 0x800000000600000 >"$DIR/log"
check ddw_bus_address_unexplained 2 "rejected access(es) no check provoked"

# A rejection no check announced.
printf '%s\nCONTAIN c bus=0x6bb000 len=0xbb8 expect=rejected\n' "$WINDOWS" >"$DIR/serial"
{ reject 0x6bb000; reject 0x6bd000; } >"$DIR/log"
check stray_rejection 1 "1 rejected access(es) no check provoked"

# A check that expected a rejection and provoked none.
: >"$DIR/log"
check expected_none_seen 1 "c expected rejected, QEMU reported none"

# A device QEMU marked broken (a blocked request over 4 KiB): unexplained without expect=broken ...
reject 0x6bb000 >"$DIR/log"
echo 'qemu-system-ppc64: virtio: bogus descriptor or out of resources' >"$DIR/stderr"
check broken_unexplained 1 "virtio device(s) broken that no check provoked"

# ... and explained with it.
printf '%s\nCONTAIN c bus=0x6bb000 len=0xbb8 expect=rejected\nCONTAIN big bus=0x6c0000 len=0x3000 expect=broken\n' \
    "$WINDOWS" >"$DIR/serial"
check broken_expected 0 ""

# TCG's capability warnings are not virtio errors.
echo "qemu-system-ppc64: warning: TCG doesn't support requested feature, cap-ccf-assist=on" >"$DIR/stderr"
check broken_expected_none_seen 1 "big expected broken, QEMU reported none"

[[ $FAILED -eq 0 ]] && echo "runner attribution: all cases hold" || { echo "runner attribution: $FAILED case(s) failed"; exit 1; }
