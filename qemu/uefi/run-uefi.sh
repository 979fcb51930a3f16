#!/usr/bin/env bash
# The `uefi` configuration of qemu/run.sh: Debian's OVMF boots to its shell; startup.nsh loads
# ccdma-iommu.efi (EDKII_IOMMU_PROTOCOL backed by ccdma), reconnects every controller so OVMF's own
# PCI and virtio drivers bind again with their DMA through ccdma, copies a file on a second
# virtio-blk disk, compares it, prints ccdma's report (ccdma-report.efi) and resets. The runner
# then checks the report and the disk (mtools) and prints "N passed, M failed".
#
#   qemu/uefi/run-uefi.sh [--no-build] [--verbose]     environment: QEMU_TIMEOUT (default 90),
#   CI (set: cargo --locked), CCDMA_UEFI_UNBOUNCED=1 (build the broken driver that hands devices
#   the host buffer: the containment check must FAIL)
set -euo pipefail

UEFI_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TARGET_DIR=$UEFI_DIR/target/x86_64-unknown-uefi/release
OVMF_CODE=/usr/share/OVMF/OVMF_CODE_4M.fd
OVMF_VARS=/usr/share/OVMF/OVMF_VARS_4M.fd
TIMEOUT=${QEMU_TIMEOUT:-90}
build=yes verbose=no
for arg in "$@"; do
    case $arg in
    --no-build) build=no ;;
    -v | --verbose) verbose=yes ;;
    *) echo "run-uefi.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

need() { command -v "$1" >/dev/null || { echo "run-uefi.sh: need $1 (apt-get install -y $2)" >&2; exit 2; }; }
need qemu-system-x86_64 qemu-system-x86
need mcopy mtools
need mkfs.fat dosfstools
[[ -f $OVMF_CODE ]] || { echo "run-uefi.sh: need $OVMF_CODE (apt-get install -y ovmf)" >&2; exit 2; }

if [[ $build == yes ]]; then
    locked=()
    [[ -n ${CI:-} ]] && locked=(--locked)
    features=()
    [[ -n ${CCDMA_UEFI_UNBOUNCED:-} ]] && features=(--features unbounced)
    (cd "$UEFI_DIR" && cargo build "${locked[@]}" ${features[@]+"${features[@]}"} --release \
        --target x86_64-unknown-uefi --quiet)
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/ccdma-uefi.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Boot disk: the driver, the report app, startup.nsh.
cat >"$work/startup.nsh" <<'NSH'
echo -off
echo "CCDMA-UEFI: startup.nsh"
for %d in fs0 fs1 fs2 fs3
  if exist %d:\ccdma-iommu.efi then
    load %d:\ccdma-iommu.efi
  endif
endfor
echo "CCDMA-UEFI: reconnect"
reconnect -r
map -r > nul
for %d in fs0 fs1 fs2 fs3
  if exist %d:\ccdma-in.txt then
    echo "CCDMA-UEFI: data disk %d"
    type %d:\ccdma-small.txt
    cp -q %d:\ccdma-in.txt %d:\ccdma-out.txt
    comp %d:\ccdma-in.txt %d:\ccdma-out.txt
  endif
endfor
for %d in fs0 fs1 fs2 fs3
  if exist %d:\ccdma-report.efi then
    %d:\ccdma-report.efi
  endif
endfor
echo "CCDMA-UEFI: done"
reset -s
NSH
boot=$work/boot.img data=$work/data.img
mkfs.fat -C "$boot" 4096 >/dev/null
mcopy -i "$boot" "$TARGET_DIR/ccdma-iommu.efi" "$TARGET_DIR/ccdma-report.efi" "$work/startup.nsh" ::/
# Data disk: a short text (typed on the console) and 384 KiB of known bytes (copied and compared).
echo "CCDMA-SMALL-FILE the quick brown fox jumps over the lazy dog 0123456789" >"$work/ccdma-small.txt"
for i in $(seq 0 6143); do printf 'ccdma line %05d 0123456789abcdef0123456789abcdef012345678\n' "$i"; done >"$work/ccdma-in.txt"
mkfs.fat -C "$data" 8192 >/dev/null
mcopy -i "$data" "$work/ccdma-small.txt" "$work/ccdma-in.txt" ::/
cp "$OVMF_VARS" "$work/vars.fd"
# A blank disk for OVMF's NvmExpressDxe (it binds and probes through ccdma). No virtio-scsi:
# `reconnect -r` with a virtio-scsi-pci present crashes Debian's OVMF 2022.11 (#GP on freed pool,
# RCX=AFAF...) with or without this driver loaded (qemu/README.md).
truncate -s 1M "$work/nvme.img"

serial=$work/serial.log
start=$(date +%s%N)
set +e
timeout "$TIMEOUT" qemu-system-x86_64 -machine q35 -accel tcg -m 512 -display none -vga none -nic none \
    -no-reboot -serial stdio -monitor none \
    -drive if=pflash,format=raw,unit=0,readonly=on,file="$OVMF_CODE" \
    -drive if=pflash,format=raw,unit=1,file="$work/vars.fd" \
    -drive if=none,id=boot,format=raw,file="$boot" -device virtio-blk-pci,drive=boot,addr=0x04,disable-legacy=on \
    -drive if=none,id=data,format=raw,file="$data" -device virtio-blk-pci,drive=data,addr=0x05,disable-legacy=on \
    -drive if=none,id=nv,format=raw,file="$work/nvme.img" -device nvme,drive=nv,serial=ccdma,addr=0x07 \
    </dev/null 2>"$work/qemu.stderr" | tr -d '\r' | sed 's/\x1b\[[0-9;]*[A-Za-z]//g' >"$serial"
status=${PIPESTATUS[0]}
set -e
end=$(date +%s%N)
seconds=$(awk -v ns=$((end - start)) 'BEGIN { printf "%.2f", ns / 1e9 }')

if [[ $verbose == yes ]]; then
    sed -n '/CCDMA-UEFI: startup.nsh/,$p' "$serial"
    echo
fi

set +e
passed=0 failed=0
check() { # name condition-status detail
    if [[ $2 -eq 0 ]]; then
        echo "PASS uefi.$1${3:+: $3}"
        passed=$((passed + 1))
    else
        echo "FAIL uefi.$1${3:+: $3}"
        failed=$((failed + 1))
    fi
}
field() { # regex: prints the first number after it on the report's lines
    grep -oE "$1 [0-9]+" "$serial" | head -n 1 | grep -oE '[0-9]+$' || echo -1
}

[[ $status -eq 0 ]]; check exit $? "QEMU exited by itself (status $status, ${seconds}s)"
grep -q 'EDKII_IOMMU_PROTOCOL installed' "$serial"; check installed $?
grep -q 'CCDMA-SMALL-FILE the quick brown fox' "$serial"; check read $? "type printed the data disk's file"
grep -q 'no differences encountered' "$serial"; check compare $? "comp: copy equals original"
out=$work/out.txt
mcopy -n -i "$data" ::/ccdma-out.txt "$out" 2>/dev/null || true
cmp -s "$out" "$work/ccdma-in.txt"; check written $? "data disk holds the copy (mtools, after QEMU)"
grep -q '^ccdma-uefi report' "$serial"; check report $?
streaming=$(field 'streaming')
bytes_to=$(grep -oE '[0-9]+ bytes to device' "$serial" | head -n 1 | grep -oE '^[0-9]+' || echo 0)
bytes_from=$(grep -oE '[0-9]+ bytes from device' "$serial" | head -n 1 | grep -oE '^[0-9]+' || echo 0)
coherent=$(field 'coherent buffers: allocated')
devices=$(grep -cE '^  pci 0000:00:0[457]\.0: streaming maps [1-9]' "$serial" || true)
((streaming > 0 && bytes_to > 0 && bytes_from >= 393216)); check bounced $? \
    "streaming maps $streaming, bytes to device $bytes_to, from device $bytes_from"
((coherent > 0)); check coherent $? "coherent buffers $coherent"
((devices == 3)); check devices $? "$devices of 3 (virtio-blk 04.0, virtio-blk 05.0, nvme 07.0) mapped through ccdma"
same=$(field 'equals the host buffer')
outside=$(field 'outside shared memory')
[[ $same == 0 && $outside == 0 ]]; check containment $? \
    "maps with device address == host buffer $same, device addresses outside shared memory $outside"
failures=$(field 'layer failures')
refused=$(field 'refused calls')
[[ $failures == 0 && $refused == 0 ]]; check faults $? "layer failures $failures, refused calls $refused"
echo "$passed passed, $failed failed"
if [[ $failed -ne 0 && $verbose == no ]]; then
    sed -n '/CCDMA-UEFI: startup.nsh/,$p' "$serial"
    echo
    [[ -s $work/qemu.stderr ]] && cat "$work/qemu.stderr"
fi
[[ $failed -eq 0 ]]
