#!/usr/bin/env bash
# Builds the ccdma test kernel and boots it in QEMU, once per machine configuration.
#
#   qemu/run.sh                 run the default (richest) configuration, print the kernel's report
#   qemu/run.sh --all           run every configuration, print a summary (and the report of failures)
#   qemu/run.sh NAME...         run the named configurations
#   qemu/run.sh --list          list configurations
#   options: -v/--verbose (print every report), --no-build (use the existing kernel)
#   environment: QEMU_TIMEOUT (seconds per boot, default 60), KERNEL_LOG (e.g. debug)
#
# A configuration passes only if QEMU exits with the kernel's success status (33; a triple fault
# exits with 0), the report has no FAIL or PANIC line, it ends with "N passed, 0 failed", and any
# post-run check on the disk image holds. Adding a configuration: add its name to CONFIGS, a case
# in configure(), and an entry in qemu/kernel/src/config.rs.
set -euo pipefail

QEMU_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KERNEL_DIR=$QEMU_DIR/kernel
KERNEL=$KERNEL_DIR/target/x86_64-unknown-linux-gnu/release/ccdma-test-kernel
QEMU=qemu-system-x86_64
TIMEOUT=${QEMU_TIMEOUT:-60}
SUCCESS_STATUS=33 # kernel writes 0x10 to isa-debug-exit: QEMU exits with (0x10 << 1) | 1

CONFIGS=(iommu iommu-strict iommu-low no-iommu no-iommu-low)
DEFAULT_CONFIG=iommu

# What the runner writes at the start of the disk and what the kernel writes at sector 1; both
# must match qemu/kernel/src/scenario.rs.
DISK_SIGNATURE=CCDMA-DISK-SIGNATURE
WRITE_MARKER=CCDMA-WRITE-CHECK

die() { echo "run.sh: $*" >&2; exit 2; }

ensure_qemu() {
    command -v "$QEMU" >/dev/null && return
    echo "run.sh: $QEMU not found, installing qemu-system-x86" >&2
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    # A fresh machine may have no package lists yet.
    "${sudo[@]}" apt-get update -qq >&2 || die "apt-get update failed"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 >&2 ||
        die "could not install qemu-system-x86"
    command -v "$QEMU" >/dev/null || die "$QEMU still missing after install"
}

build_kernel() {
    # Build from inside the kernel directory: its .cargo/config.toml (target, freestanding
    # rustflags) is only found relative to the working directory.
    (cd "$KERNEL_DIR" && cargo build --release --quiet) || die "kernel build failed"
}

# Creates a sparse raw disk of $2 MiB whose first bytes are the signature the kernel checks for.
make_disk() {
    local image=$1 mib=$2
    truncate -s "${mib}M" "$image"
    printf '%s\n' "$DISK_SIGNATURE" | dd of="$image" conv=notrunc status=none
}

# Device arguments, appended to MACHINE_ARGS. Every device sits at the PCI slot
# qemu/kernel/src/config.rs (`slot`) names, so the kernel knows its role. Devices ccdma manages
# are modern-only and translated by the platform (iommu_platform=on): behind the virtio-iommu
# when there is one.
MANAGED=disable-legacy=on,iommu_platform=on
add_iommu() { MACHINE_ARGS+=(-device virtio-iommu-pci,addr=0x03); }
add_blk() { # slot image id
    MACHINE_ARGS+=(-drive "file=$2,format=raw,if=none,id=$3" -device "virtio-blk-pci,drive=$3,addr=$1,$MANAGED")
}
add_rng() { MACHINE_ARGS+=(-device "virtio-rng-pci,addr=0x06,$MANAGED"); }
add_nics() { # two NICs on one hub
    MACHINE_ARGS+=(-netdev hubport,id=n1,hubid=0
        -device "virtio-net-pci,netdev=n1,mac=52:54:00:cc:d0:01,addr=0x07,$MANAGED"
        -netdev hubport,id=n2,hubid=0
        -device "virtio-net-pci,netdev=n2,mac=52:54:00:cc:d0:02,addr=0x08,$MANAGED")
}
add_bench() { # image; the benchmark's baseline, outside the IOMMU (no iommu_platform)
    MACHINE_ARGS+=(-drive "file=$1,format=raw,if=none,id=bench"
        -device virtio-blk-pci,drive=bench,addr=0x09,disable-legacy=on)
}

# Sets MACHINE_ARGS (QEMU arguments specific to configuration $1, disks in directory $2) and
# CHECK_DISK (the image whose sector 1 must hold the kernel's marker afterwards).
configure() {
    local name=$1 dir=$2
    MACHINE_ARGS=(-cpu max)
    CHECK_DISK=$dir/disk.img
    make_disk "$CHECK_DISK" 24
    # RAM above 4 GiB: q35 puts 2 GiB below 4 GiB and the rest above.
    case $name in
    iommu | iommu-strict | no-iommu) MACHINE_ARGS+=(-m 5G) ;;
    iommu-low | no-iommu-low) MACHINE_ARGS+=(-m 512M) ;;
    *) die "unknown configuration '$name' (known: ${CONFIGS[*]})" ;;
    esac
    # With an IOMMU: the virtio-iommu keeps its default boot-bypass=on (the firmware needs it; the
    # kernel clears bypass), and a second blk exists to be blocked by it (containment check).
    case $name in
    iommu*)
        add_iommu
        make_disk "$dir/fault.img" 1
        add_blk 0x05 "$dir/fault.img" fault
        ;;
    esac
    add_blk 0x04 "$CHECK_DISK" disk0
    add_rng
    add_nics
    case $name in
    iommu | iommu-strict | no-iommu)
        make_disk "$dir/bench.img" 24
        add_bench "$dir/bench.img"
        ;;
    esac
}

# Runs configuration $1; prints its result line; returns non-zero on failure.
run_config() {
    local name=$1 show_report=$2
    local dir=$WORK_DIR/$name
    mkdir -p "$dir"
    local serial=$dir/serial.log qemu_err=$dir/qemu.stderr
    configure "$name" "$dir"

    local append="config=$name"
    [[ -n ${KERNEL_LOG:-} ]] && append+=" log=$KERNEL_LOG"

    local start end status
    start=$(date +%s%N)
    set +e
    # stdin from /dev/null: under `timeout` QEMU runs in a background process group, and touching
    # the terminal there would stop it (SIGTTIN/SIGTTOU) instead of running.
    timeout "$TIMEOUT" "$QEMU" -machine q35 -accel tcg -display none -vga none -nic none \
        -no-reboot -serial stdio -monitor none \
        -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
        "${MACHINE_ARGS[@]}" -kernel "$KERNEL" -append "$append" \
        </dev/null 2>"$qemu_err" | tr -d '\r' >"$serial"
    status=${PIPESTATUS[0]}
    set -e
    end=$(date +%s%N)
    local seconds
    seconds=$(awk -v ns=$((end - start)) 'BEGIN { printf "%.2f", ns / 1e9 }')

    local problems=()
    if [[ $status -eq 124 ]]; then
        problems+=("hang: no exit within ${TIMEOUT}s")
    elif [[ $status -ne $SUCCESS_STATUS ]]; then
        problems+=("QEMU exit status $status, expected $SUCCESS_STATUS")
    fi
    grep -q '^FAIL ' "$serial" && problems+=("$(grep -c '^FAIL ' "$serial") FAIL line(s)")
    grep -q '^PANIC' "$serial" && problems+=("kernel panic")
    local summary
    summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$serial" | tail -n 1 || true)
    if [[ -z $summary ]]; then
        problems+=("no 'N passed, M failed' line")
    elif [[ ! $summary =~ \ 0\ failed$ ]]; then
        problems+=("report says: $summary")
    fi
    if [[ -n $CHECK_DISK && ${#problems[@]} -eq 0 ]]; then
        local marker
        marker=$(dd if="$CHECK_DISK" bs=512 skip=1 count=1 status=none | head -c ${#WRITE_MARKER})
        [[ $marker == "$WRITE_MARKER" ]] || problems+=("disk image lacks the kernel's write at sector 1")
    fi

    if [[ $show_report == yes || ${#problems[@]} -gt 0 ]]; then
        cat "$serial"
        if [[ ${#problems[@]} -gt 0 && -s $qemu_err ]]; then
            echo "--- QEMU stderr ($name) ---"
            cat "$qemu_err"
        fi
    fi
    if [[ ${#problems[@]} -eq 0 ]]; then
        printf '%-10s PASS  %-22s boot to exit %ss\n' "$name" "($summary)" "$seconds"
        return 0
    fi
    local joined
    joined=$(printf '%s; ' "${problems[@]}")
    printf '%-10s FAIL  %s boot to exit %ss\n' "$name" "${joined%; }," "$seconds"
    return 1
}

main() {
    local selected=() verbose=no build=yes all=no
    while [[ $# -gt 0 ]]; do
        case $1 in
        --all) all=yes ;;
        --list) printf '%s\n' "${CONFIGS[@]}"; return 0 ;;
        -v | --verbose) verbose=yes ;;
        --no-build) build=no ;;
        -h | --help) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; return 0 ;;
        -*) die "unknown option $1" ;;
        *) selected+=("$1") ;;
        esac
        shift
    done
    if [[ $all == yes ]]; then
        selected=("${CONFIGS[@]}")
    elif [[ ${#selected[@]} -eq 0 ]]; then
        selected=("$DEFAULT_CONFIG")
        verbose=yes
    fi
    for name in "${selected[@]}"; do
        [[ " ${CONFIGS[*]} " == *" $name "* ]] || die "unknown configuration '$name' (known: ${CONFIGS[*]})"
    done

    ensure_qemu
    [[ $build == yes ]] && build_kernel
    [[ -f $KERNEL ]] || die "no kernel at $KERNEL"

    WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ccdma-qemu.XXXXXX")
    trap 'rm -rf "$WORK_DIR"' EXIT

    local failed=0
    for name in "${selected[@]}"; do
        run_config "$name" "$verbose" || failed=$((failed + 1))
    done
    if [[ ${#selected[@]} -gt 1 ]]; then
        echo "$((${#selected[@]} - failed)) of ${#selected[@]} configurations passed"
    fi
    [[ $failed -eq 0 ]]
}

main "$@"
