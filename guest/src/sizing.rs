//! Proposing a bounce pool size.
//!
//! The rule is Linux's for memory-encrypted guests (SEV, TDX: `mem_encrypt_setup_arch` in
//! `arch/x86/mm/mem_encrypt.c`): 6% of guest memory, clamped to [64 MiB, 1 GiB] (64 MiB is
//! `IO_TLB_DEFAULT_SIZE`). Linux sizes one pool for all devices; here every device is also promised
//! room for a queue of largest mappings ([`PER_DEVICE_BYTES`], 32 runs of 256 KiB: a virtio queue
//! of default depth with every buffer at the largest size), so many devices in a small guest do not
//! start below what they can use at once; the total still never passes 1 GiB.
//! With growth enabled ([`crate::growth`]) this is the starting size; growth covers the peaks.

/// Smallest proposal: Linux's `IO_TLB_DEFAULT_SIZE`.
pub const MIN_POOL_BYTES: u64 = 64 << 20;
/// Largest proposal: Linux's clamp.
pub const MAX_POOL_BYTES: u64 = 1 << 30;
/// Room promised per device: 32 of the largest mappings (256 KiB each with the default pool).
pub const PER_DEVICE_BYTES: u64 = 32 * (256 << 10);

/// A pool size for a guest with `ram_bytes` of memory and `devices` devices: the larger of 6% of
/// memory and the devices' room, clamped to [`MIN_POOL_BYTES`, `MAX_POOL_BYTES`], rounded up to
/// 2 MiB.
pub const fn proposed_pool_bytes(ram_bytes: u64, devices: u32) -> u64 {
    let linux = ram_bytes / 100 * 6;
    let devices = PER_DEVICE_BYTES.saturating_mul(devices as u64);
    let want = if linux > devices { linux } else { devices };
    let clamped = if want < MIN_POOL_BYTES {
        MIN_POOL_BYTES
    } else if want > MAX_POOL_BYTES {
        MAX_POOL_BYTES
    } else {
        want
    };
    let align = 2 << 20;
    let rounded = clamped.div_ceil(align) * align;
    if rounded > MAX_POOL_BYTES {
        MAX_POOL_BYTES
    } else {
        rounded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_rule_and_clamps() {
        const GIB: u64 = 1 << 30;
        const MIB: u64 = 1 << 20;
        // 6% of 1 GiB is 61 MiB: the 64 MiB floor.
        assert_eq!(proposed_pool_bytes(GIB, 1), 64 * MIB);
        // 6% of 4 GiB = 245.76 MiB, rounded up to 2 MiB.
        assert_eq!(proposed_pool_bytes(4 * GIB, 1), 246 * MIB);
        // 6% of 64 GiB is past the 1 GiB ceiling.
        assert_eq!(proposed_pool_bytes(64 * GIB, 4), GIB);
        // 16 devices in a 1 GiB guest: 16 * 8 MiB = 128 MiB beats 6%.
        assert_eq!(proposed_pool_bytes(GIB, 16), 128 * MIB);
        assert_eq!(proposed_pool_bytes(0, 0), 64 * MIB);
        assert_eq!(proposed_pool_bytes(u64::MAX, u32::MAX), GIB);
    }
}
