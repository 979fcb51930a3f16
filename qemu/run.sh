#!/usr/bin/env bash
# Builds the ccdma test kernels and boots them in QEMU, once per machine configuration: the pseries
# kernel (qemu/pseries, ppc64 under -machine pseries,x-vof=on) and the x86_64 one (qemu/kernel).
#
#   qemu/run.sh                 run the main configuration (pseries), print the kernel's report
#   qemu/run.sh --all           run every configuration of both kernels, print a summary (and the
#                               report of failures)
#   qemu/run.sh NAME...         run the named configurations, printing each one's report
#   qemu/run.sh --list          list configurations
#   qemu/run.sh --self-test     check that the verdict fails on an IOMMU rejection no check provoked
#                               (--all runs it first)
#   options: -v/--verbose (with --all: print every report), --no-build (use the existing kernels)
#   environment: QEMU_TIMEOUT (seconds per boot, default 60), KERNEL_LOG (e.g. debug), CI (set:
#                cargo --locked)
#
# Installs what is missing with apt-get: qemu-system-x86 for the x86_64 kernel; for pseries
# Debian's rustc-web/cargo-web/rust-web-src (Rust 1.96 with the library sources -Z build-std
# needs), the ppc64 binutils and qemu-system-ppc. The pseries kernel is built with those
# (/usr/bin/cargo, /usr/bin/rustc), never with the rustup toolchain the rest of the repository uses.
#
# A configuration passes only if QEMU exits with the kernel's success status (x86_64: 33, a triple
# fault exits with 0; pseries: 0 after RTAS power-off), the report has no FAIL or PANIC line, it
# ends with "N passed, 0 failed", and the post-run checks hold: the disk image holds the kernel's
# write, and (pseries) every access QEMU's IOMMU rejected (its -d guest_errors log) falls in a
# range a containment check announced ("CONTAIN <check> bus=.. len=.. expect=rejected"), every
# virtio device QEMU marked broken (stderr "virtio: ...") was expected by a check ("expect=broken"),
# and every such check provoked at least one. A self-test configuration (NAME-selftest-*) inverts
# the verdict: it passes only if the runner failed it for exactly the problems it provokes, which
# proves these checks can fail. Adding a configuration: add its name to CONFIGS, a case in
# configure() or configure_pseries(), and an entry in the kernel's config.rs.
set -euo pipefail

QEMU_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KERNEL_DIR=$QEMU_DIR/kernel
KERNEL=$KERNEL_DIR/target/x86_64-unknown-linux-gnu/release/ccdma-test-kernel
QEMU=qemu-system-x86_64
TIMEOUT=${QEMU_TIMEOUT:-60}
SUCCESS_STATUS=33 # kernel writes 0x10 to isa-debug-exit: QEMU exits with (0x10 << 1) | 1

PSERIES_DIR=$QEMU_DIR/pseries
PSERIES_LE=powerpc64le-unknown-linux-gnu
PSERIES_BE=powerpc64-unknown-linux-gnu
pseries_kernel() { echo "$PSERIES_DIR/target/$1/release/ccdma-pseries-kernel"; }
QEMU_PPC=qemu-system-ppc64

PSERIES_CONFIGS=(pseries pseries-strict pseries-percpu pseries-no-ddw pseries-ddw64k pseries-be pseries-be-percpu pseries-selftest-reject)
X86_CONFIGS=(iommu iommu-strict iommu-low no-iommu no-iommu-low)
UEFI_CONFIGS=(uefi)
CONFIGS=("${PSERIES_CONFIGS[@]}" "${X86_CONFIGS[@]}" "${UEFI_CONFIGS[@]}")
DEFAULT_CONFIG=pseries
is_pseries() { [[ $1 == pseries* ]]; }

# What the runner writes at the start of the disk and what the kernel writes at sector 1; both
# must match qemu/common/src/checks.rs.
DISK_SIGNATURE=CCDMA-DISK-SIGNATURE
WRITE_MARKER=CCDMA-WRITE-CHECK

die() { echo "run.sh: $*" >&2; exit 2; }

APT_UPDATED=no
apt_install() {
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    command -v apt-get >/dev/null || die "need $* but apt-get is not available: install it by hand"
    # A fresh machine may have no package lists yet.
    if [[ $APT_UPDATED == no ]]; then
        "${sudo[@]}" apt-get update -qq >&2 || die "apt-get update failed"
        APT_UPDATED=yes
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
        >/dev/null || die "could not install $*"
}

ensure_qemu() {
    command -v "$QEMU" >/dev/null && return
    echo "run.sh: $QEMU not found, installing qemu-system-x86" >&2
    apt_install qemu-system-x86
    command -v "$QEMU" >/dev/null || die "$QEMU still missing after install"
}

# Debian's Rust (with the library sources build-std compiles), the ppc64 linkers and QEMU.
ensure_pseries_tools() {
    local missing=()
    [[ -x /usr/bin/rustc ]] || missing+=(rustc-web)
    [[ -x /usr/bin/cargo ]] || missing+=(cargo-web)
    [[ -d /usr/lib/rustlib/src/rust/library ]] || missing+=(rust-web-src)
    command -v powerpc64le-linux-gnu-ld >/dev/null || missing+=(binutils-powerpc64le-linux-gnu)
    command -v powerpc64-linux-gnu-ld >/dev/null || missing+=(binutils-powerpc64-linux-gnu)
    command -v "$QEMU_PPC" >/dev/null || missing+=(qemu-system-ppc)
    command -v cc >/dev/null || missing+=(gcc libc6-dev) # build scripts link for the host
    [[ ${#missing[@]} -eq 0 ]] && return
    echo "run.sh: installing ${missing[*]}" >&2
    apt_install "${missing[@]}"
}

build_kernel() {
    echo "run.sh: building the x86_64 kernel (cargo build --release in qemu/kernel)" >&2
    # Build from inside the kernel directory: its .cargo/config.toml (target, freestanding
    # rustflags) is only found relative to the working directory.
    local locked=()
    [[ -n ${CI:-} ]] && locked=(--locked)
    # -Z emit-stack-sizes (RUSTC_BOOTSTRAP on the stable toolchain, for this flag alone; appended to
    # the config's rustflags): every function's frame size in a .stack_sizes section, which
    # scripts/kernel-budgets.sh reads from this very build. It changes no code.
    (cd "$KERNEL_DIR" && RUSTC_BOOTSTRAP=1 cargo build --release --quiet "${locked[@]}" \
        --config 'build.rustflags=["-Z", "emit-stack-sizes"]') || die "kernel build failed"
}

# Builds the pseries kernel for target $1 with Debian's toolchain: /usr/bin first on PATH (rustup's
# ~/.cargo/bin would shadow it), RUSTC pinned, RUSTC_BOOTSTRAP for -Z build-std only.
build_pseries() {
    echo "run.sh: building the pseries kernel for $1 (Debian's cargo, -Z build-std; 40-120 s cold)" >&2
    local locked=()
    [[ -n ${CI:-} ]] && locked=(--locked)
    (cd "$PSERIES_DIR" && env PATH="/usr/bin:$PATH" RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
        cargo build --release --quiet "${locked[@]}" --target "$1") ||
        die "pseries kernel build ($1) failed"
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

# pseries: every device on the one PCI host bridge, at the slot qemu/pseries/src/config.rs names.
# 5 GiB of RAM: the kernel puts the pool at the top, above 4 GiB.
configure_pseries() {
    local name=$1 dir=$2
    MACHINE_ARGS=(-m 5G)
    CHECK_DISK=$dir/disk.img
    make_disk "$CHECK_DISK" 24
    make_disk "$dir/bench.img" 24
    case $name in
    pseries | pseries-strict | pseries-percpu | pseries-be | pseries-be-percpu) ;;
    # Runner self-test: the kernel DMAs at unmapped bus addresses with no CONTAIN line.
    pseries-selftest-reject) ;;
    # The bridge offers no DDW (no ibm,ddw-applicable): the 64-bit blk falls back to the default window.
    pseries-no-ddw) MACHINE_ARGS+=(-global spapr-pci-host-bridge.ddw=off) ;;
    # DDW pages of 64 KiB at most (4K|64K offered), what PowerVM usually gives: the pool is mapped
    # in 64 KiB IOMMU pages, 16 bounce slots to an entry.
    pseries-ddw64k) MACHINE_ARGS+=(-global spapr-pci-host-bridge.pgsz=0x11000) ;;
    *) die "unknown configuration '$name' (known: ${CONFIGS[*]})" ;;
    esac
    add_blk 0x01 "$CHECK_DISK" disk0
    MACHINE_ARGS+=(-device "virtio-rng-pci,addr=0x02,$MANAGED"
        -netdev hubport,id=n1,hubid=0
        -device "virtio-net-pci,netdev=n1,mac=52:54:00:cc:d0:01,addr=0x03,$MANAGED"
        -netdev hubport,id=n2,hubid=0
        -device "virtio-net-pci,netdev=n2,mac=52:54:00:cc:d0:02,addr=0x04,$MANAGED"
        -device "virtio-rng-pci,addr=0x05,$MANAGED"
        -device "virtio-rng-pci,addr=0x06,$MANAGED"
        -drive "file=$dir/bench.img,format=raw,if=none,id=bench"
        -device virtio-blk-pci,drive=bench,addr=0x07,disable-legacy=on
        -device "virtio-rng-pci,addr=0x08,$MANAGED")
    # A second host bridge (its own partitionable endpoint) with a virtio-rng at slot 1.
    [[ $name == pseries ]] && MACHINE_ARGS+=(-device spapr-pci-host-bridge,index=1,id=phb1
        -device "virtio-rng-pci,bus=phb1.0,addr=0x01,$MANAGED")
    return 0
}

# Attributes every access QEMU's IOMMU rejected (guest_errors log $2) and every virtio device QEMU
# marked broken (its stderr $3) to a containment check of the kernel's output $1 ("CONTAIN <check>
# bus=0x.. len=0x.. expect=rejected|broken|none"). QEMU logs a rejected access by its offset inside
# the window's memory region, not by bus address: a DDW at 0x0800000000000000 logs bus
# 0x0800000000600000 as 0x600000. So each check's range is taken as an offset inside the window the
# kernel announced around it ("WINDOW <name> liobn=0x.. bus=0x.. len=0x.."); the log cannot tell
# two windows' equal offsets apart. A blocked request over 4 KiB is not logged at all: QEMU cannot
# bounce it, prints "virtio: bogus descriptor or out of resources" and marks the device broken
# (NEEDS_RESET). Prints one line per check and writes to PROBLEMS (a global: call this function
# outside $(...), or its verdict is lost) for an unattributed rejection or broken device, or a
# check that expected one and provoked none.
attribute_rejections() {
    local serial=$1 log=$2 stderr=$3
    local names=() starts=() ends=() offsets=() expects=() counts=()
    local wstarts=() wends=()
    local line name bus len expect liobn i
    while read -r _ name liobn bus len; do
        bus=${bus#bus=} len=${len#len=}
        wstarts+=($((bus))) wends+=($((bus + len)))
    done < <(grep '^WINDOW ' "$serial" || true)
    while read -r _ name bus len expect; do
        bus=${bus#bus=} len=${len#len=} expect=${expect#expect=}
        local base=0
        for i in "${!wstarts[@]}"; do
            if ((bus >= wstarts[i] && bus < wends[i])); then base=${wstarts[i]}; fi
        done
        names+=("$name") starts+=($((bus))) ends+=($((bus + len))) offsets+=($((bus - base)))
        expects+=("$expect") counts+=(0)
    done < <(grep '^CONTAIN ' "$serial" || true)
    PROBLEMS=()
    local unattributed=0 first_stray="" addr found
    while read -r line; do
        [[ $line =~ Invalid\ (read|write)\ at\ addr\ (0x[0-9A-Fa-f]+) ]] || continue
        addr=$((BASH_REMATCH[2]))
        found=no
        for i in "${!names[@]}"; do
            if [[ ${expects[i]} == rejected ]] &&
                ((addr >= offsets[i] && addr < offsets[i] + ends[i] - starts[i])); then
                counts[i]=$((counts[i] + 1))
                found=yes
                break
            fi
        done
        if [[ $found == no ]]; then
            unattributed=$((unattributed + 1))
            [[ -z $first_stray ]] && first_stray=$line
        fi
    done < <(grep 'reason: rejected' "$log" 2>/dev/null || true)
    # Broken devices: every "virtio: ..." error QEMU printed, in order, to the checks expecting one.
    local broken=0 unexplained=0 first_broken=""
    while read -r line; do
        broken=$((broken + 1))
        found=no
        for i in "${!names[@]}"; do
            if [[ ${expects[i]} == broken && ${counts[i]} -eq 0 ]]; then
                counts[i]=1
                found=yes
                break
            fi
        done
        if [[ $found == no ]]; then
            unexplained=$((unexplained + 1))
            [[ -z $first_broken ]] && first_broken=$line
        fi
    done < <(grep 'virtio: ' "$stderr" 2>/dev/null || true)
    for i in "${!names[@]}"; do
        printf '  IOMMU %-8s %5d in %#x..%#x (logged at offset %#x) by %s\n' \
            "${expects[i]}" "${counts[i]}" "${starts[i]}" "${ends[i]}" "${offsets[i]}" "${names[i]}"
        if [[ ${expects[i]} != none && ${counts[i]} -eq 0 ]]; then
            PROBLEMS+=("${names[i]} expected ${expects[i]}, QEMU reported none")
        fi
    done
    if ((unattributed > 0)); then
        PROBLEMS+=("$unattributed rejected access(es) no check provoked (first: $first_stray)")
    fi
    if ((unexplained > 0)); then
        PROBLEMS+=("$unexplained virtio device(s) broken that no check provoked (first: $first_broken)")
    fi
    printf '  IOMMU rejected %5d accesses no check provoked\n' "$unattributed"
    printf '  virtio devices QEMU marked broken: %d, %d that no check provoked\n' "$broken" "$unexplained"
}

# Whether configuration $1 is a self-test of the runner: it must FAIL with the problems
# selftest_expects names, and passes only then (the inverted verdict proves the runner can fail).
is_selftest() { [[ $1 == *-selftest-* ]]; }
# The problems (patterns) self-test $1 must be failed for.
selftest_expects() {
    case $1 in
    pseries-selftest-reject) printf '%s\n' 'rejected access(es) no check provoked' \
        'virtio device(s) broken that no check provoked' ;;
    esac
}

# Attributes the rejections (attribute_rejections) into file $4, adding to PROBLEMS. Not inside
# $(...): a subshell's PROBLEMS would never reach the verdict (issue 18.14 found exactly that).
# $1 serial, $2 guest_errors, $3 QEMU's stderr, $4 the attribution file.
rejection_verdict() {
    attribute_rejections "$1" "$2" "$3" >"$4"
}

# The runner's own check that its verdict can fail (issue 18.14): a kernel output with one
# containment check and a guest_errors log holding a rejection that check expected and one that no
# check provoked must yield exactly one problem, naming the stray access; the clean log none.
self_test() {
    local dir
    dir=$(mktemp -d "${TMPDIR:-/tmp}/ccdma-selftest.XXXXXX")
    printf 'CONTAIN strict.after_unmap bus=0x1000 len=0x1000 expect=rejected\n' >"$dir/serial"
    {
        echo 'spapr_tce: Invalid read at addr 0x1800, reason: rejected'
        echo 'spapr_tce: Invalid write at addr 0x600000, reason: rejected'
    } >"$dir/stray"
    echo 'spapr_tce: Invalid read at addr 0x1800, reason: rejected' >"$dir/clean"
    : >"$dir/stderr"
    PROBLEMS=()
    rejection_verdict "$dir/serial" "$dir/clean" "$dir/stderr" "$dir/out"
    local clean=${#PROBLEMS[@]}
    PROBLEMS=()
    rejection_verdict "$dir/serial" "$dir/stray" "$dir/stderr" "$dir/out"
    local stray=(${PROBLEMS[@]+"${PROBLEMS[@]}"})
    rm -rf "$dir"
    if [[ $clean -ne 0 || ${#stray[@]} -ne 1 || ${stray[0]} != *"0x600000"* ]]; then
        echo "run.sh --self-test: FAIL (clean log: $clean problems; stray log: ${stray[*]:-none})"
        return 1
    fi
    echo "run.sh --self-test: PASS (an unprovoked rejection fails the verdict: ${stray[0]})"
}

# Runs configuration $1; prints its result line; returns non-zero on failure.
run_config() {
    local name=$1 show_report=$2
    local dir=$WORK_DIR/$name
    mkdir -p "$dir"
    local serial=$dir/serial.log qemu_err=$dir/qemu.stderr guest_errors=$dir/guest_errors.log
    local pseries=no
    is_pseries "$name" && pseries=yes
    if [[ $pseries == yes ]]; then
        configure_pseries "$name" "$dir"
    else
        configure "$name" "$dir"
    fi

    local append="config=$name"
    [[ -n ${KERNEL_LOG:-} ]] && append+=" log=$KERNEL_LOG"

    local start end status
    start=$(date +%s%N)
    set +e
    # stdin from /dev/null: under `timeout` QEMU runs in a background process group, and touching
    # the terminal there would stop it (SIGTTIN/SIGTTOU) instead of running.
    if [[ $pseries == yes ]]; then
        local target=$PSERIES_LE expected=0
        [[ $name == pseries-be* ]] && target=$PSERIES_BE
        # VOF (x-vof=on) boots in a fraction of a second; blocked DMA goes to the guest_errors log.
        timeout "$TIMEOUT" "$QEMU_PPC" -machine pseries,x-vof=on -accel tcg -nodefaults -display none \
            -vga none -no-reboot -serial stdio -monitor none -d guest_errors -D "$guest_errors" \
            "${MACHINE_ARGS[@]}" -kernel "$(pseries_kernel "$target")" -append "$append" \
            </dev/null 2>"$qemu_err" | tr -d '\r' >"$serial"
        status=${PIPESTATUS[0]}
    else
        local expected=$SUCCESS_STATUS
        timeout "$TIMEOUT" "$QEMU" -machine q35 -accel tcg -display none -vga none -nic none \
            -no-reboot -serial stdio -monitor none \
            -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
            "${MACHINE_ARGS[@]}" -kernel "$KERNEL" -append "$append" \
            </dev/null 2>"$qemu_err" | tr -d '\r' >"$serial"
        status=${PIPESTATUS[0]}
    fi
    set -e
    end=$(date +%s%N)
    local seconds
    seconds=$(awk -v ns=$((end - start)) 'BEGIN { printf "%.2f", ns / 1e9 }')

    PROBLEMS=()
    local problems=()
    if [[ $status -eq 124 ]]; then
        problems+=("hang: no exit within ${TIMEOUT}s")
    elif [[ $status -ne $expected ]]; then
        problems+=("QEMU exit status $status, expected $expected")
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

    local attribution=""
    PROBLEMS=()
    if [[ $pseries == yes ]]; then
        rejection_verdict "$serial" "$guest_errors" "$qemu_err" "$dir/attribution.txt"
        attribution=$(<"$dir/attribution.txt")
    fi
    local verdict_note=""
    if is_selftest "$name"; then
        # Inverted verdict: the kernel's own report must be clean and the runner must have found
        # every problem the self-test provokes (and nothing else).
        local pattern missing=() joined_runner
        joined_runner=$(printf '%s\n' ${PROBLEMS[@]+"${PROBLEMS[@]}"})
        while read -r pattern; do
            [[ $joined_runner == *"$pattern"* ]] || missing+=("runner did not report: $pattern")
        done < <(selftest_expects "$name")
        if [[ ${#problems[@]} -eq 0 && ${#missing[@]} -eq 0 &&
            ${#PROBLEMS[@]} -eq $(selftest_expects "$name" | wc -l) ]]; then
            verdict_note="self-test: the runner failed it as it must: $(printf '%s; ' "${PROBLEMS[@]}")"
        else
            problems+=("self-test of the runner" ${missing[@]+"${missing[@]}"}
                ${PROBLEMS[@]+"${PROBLEMS[@]}"})
        fi
    else
        problems+=(${PROBLEMS[@]+"${PROBLEMS[@]}"})
    fi

    if [[ $show_report == yes || ${#problems[@]} -gt 0 ]]; then
        cat "$serial"
        if [[ -n $attribution ]]; then
            echo "--- runner: accesses QEMU's IOMMU rejected (-d guest_errors), by the check that provoked them ---"
            echo "$attribution"
        fi
        if [[ ${#problems[@]} -gt 0 && -s $qemu_err ]]; then
            echo "--- QEMU stderr ($name) ---"
            cat "$qemu_err"
        fi
    fi
    if [[ ${#problems[@]} -eq 0 ]]; then
        [[ -n $verdict_note ]] && echo "$verdict_note"
        printf '%-15s PASS  %-22s boot to exit %ss\n' "$name" "($summary)" "$seconds"
        return 0
    fi
    local joined
    joined=$(printf '%s; ' "${problems[@]}")
    printf '%-15s FAIL  %s boot to exit %ss\n' "$name" "${joined%; }," "$seconds"
    return 1
}

# --- uefi: Debian's OVMF with ccdma as its EDKII_IOMMU_PROTOCOL (qemu/uefi/run-uefi.sh runs and
# checks it; this block installs what it needs and prints the result line). $1: show the report,
# $2: build.
run_uefi() {
    local show_report=$1 build=$2 missing=() args=() out status start end seconds summary
    command -v "$QEMU" >/dev/null || missing+=(qemu-system-x86)
    [[ -f /usr/share/OVMF/OVMF_CODE_4M.fd ]] || missing+=(ovmf)
    command -v mcopy >/dev/null || missing+=(mtools)
    command -v mkfs.fat >/dev/null || missing+=(dosfstools)
    [[ ${#missing[@]} -eq 0 ]] || apt_install "${missing[@]}"
    if [[ $build == yes ]] && ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-uefi; then
        rustup target add x86_64-unknown-uefi >&2 || die "could not add the x86_64-unknown-uefi target"
    fi
    [[ $build == yes ]] || args+=(--no-build)
    [[ $show_report == yes ]] && args+=(--verbose)
    start=$(date +%s%N)
    set +e
    out=$(bash "$QEMU_DIR/uefi/run-uefi.sh" ${args[@]+"${args[@]}"} 2>&1)
    status=$?
    set -e
    end=$(date +%s%N)
    seconds=$(awk -v ns=$((end - start)) 'BEGIN { printf "%.2f", ns / 1e9 }')
    [[ $show_report == yes || $status -ne 0 ]] && echo "$out"
    summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' <<<"$out" | tail -n 1 || true)
    if [[ $status -eq 0 && $summary =~ \ 0\ failed$ ]]; then
        printf '%-15s PASS  %-22s build and boot to exit %ss\n' uefi "($summary)" "$seconds"
        return 0
    fi
    printf '%-15s FAIL  %s, build and boot to exit %ss\n' uefi "${summary:-no 'N passed, M failed' line}" "$seconds"
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
        --self-test) self_test; return ;;
        -h | --help) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; return 0 ;;
        -*) die "unknown option $1" ;;
        *) selected+=("$1") ;;
        esac
        shift
    done
    if [[ $all == yes ]]; then
        self_test || die "the runner's verdict cannot fail on an unprovoked IOMMU rejection"
        bash "$(dirname "${BASH_SOURCE[0]}")/test-runner.sh" | tail -n 1 ||
            die "qemu/test-runner.sh: the runner's attribution failed its fixtures"
        selected=("${CONFIGS[@]}")
    else
        # Configurations asked for by name (or the default one) print their report.
        [[ ${#selected[@]} -gt 0 ]] || selected=("$DEFAULT_CONFIG")
        verbose=yes
    fi
    for name in "${selected[@]}"; do
        [[ " ${CONFIGS[*]} " == *" $name "* ]] || die "unknown configuration '$name' (known: ${CONFIGS[*]})"
    done

    local want_x86=no want_le=no want_be=no
    for name in "${selected[@]}"; do
        case $name in
        pseries-be*) want_be=yes ;;
        pseries*) want_le=yes ;;
        uefi) ;; # qemu/uefi builds and runs itself (run_uefi)
        *) want_x86=yes ;;
        esac
    done
    if [[ $want_le == yes || $want_be == yes ]]; then
        ensure_pseries_tools
        [[ $want_le == yes && $build == yes ]] && build_pseries "$PSERIES_LE"
        [[ $want_be == yes && $build == yes ]] && build_pseries "$PSERIES_BE"
        [[ $want_le == no || -f $(pseries_kernel "$PSERIES_LE") ]] || die "no pseries kernel"
        [[ $want_be == no || -f $(pseries_kernel "$PSERIES_BE") ]] || die "no big-endian pseries kernel"
    fi
    if [[ $want_x86 == yes ]]; then
        ensure_qemu
        [[ $build == yes ]] && build_kernel
        [[ -f $KERNEL ]] || die "no kernel at $KERNEL"
    fi

    WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ccdma-qemu.XXXXXX")
    trap 'rm -rf "$WORK_DIR"' EXIT

    local failed=0
    for name in "${selected[@]}"; do
        if [[ $name == uefi ]]; then
            run_uefi "$verbose" "$build" || failed=$((failed + 1))
            continue
        fi
        run_config "$name" "$verbose" || failed=$((failed + 1))
    done
    if [[ ${#selected[@]} -gt 1 ]]; then
        echo "$((${#selected[@]} - failed)) of ${#selected[@]} configurations passed"
    fi
    [[ $failed -eq 0 ]]
}

# Sourced (qemu/test-runner.sh tests the attribution on fixtures): define the functions only.
[[ ${BASH_SOURCE[0]} != "$0" ]] || main "$@"
