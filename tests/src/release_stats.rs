//! The set-up of the tests of what `release_pools` hands to the layer's statistics
//! (tests/tests/stats_outlive_several_released_pools.rs,
//! tests/tests/stats_survive_a_release_that_fails_part_way.rs).

use ccdma::{BusAddr, DeviceConfig, DmaAttrs, DmaDirection, DmaMask, PhysAddr, StatsSnapshot};
use ccdma_hv_model::{Hypervisor, Region};

use crate::Layer;

/// The counts the pools keep and hand over: maps, bounced maps, unmaps, bytes to and from devices.
pub fn pool_counts(s: &StatsSnapshot) -> [u64; 5] {
    [s.maps, s.bounced_maps, s.unmaps, s.bytes_to_device, s.bytes_from_device]
}

/// Bytes of the buffer [`narrow_and_wide`] allocates, and of each map [`hold_maps`] makes.
pub const BUF: usize = 64 * 1024;

/// A 24-bit device (id 1: the low pool only) and a 64-bit one (id 2: the highest pool first, then
/// the others as it fills them), attached and added to the model, and a fresh private buffer of
/// [`BUF`] bytes.
pub fn narrow_and_wide(hv: &Hypervisor, layer: &Layer) -> (ccdma::Device, ccdma::Device, u64) {
    let low = layer.attach(DeviceConfig::new(1, DmaMask::new(24).unwrap())).unwrap();
    let wide = layer.attach(DeviceConfig::new(2, DmaMask::BITS_64)).unwrap();
    hv.add_device(1, 24);
    hv.add_device(2, 64);
    (low, wide, hv.alloc(BUF as u64, Region::Low))
}

/// `n` maps of the whole buffer at `buf` to `dev`, held at once (raw face).
pub fn hold_maps(layer: &Layer, dev: &ccdma::Device, buf: u64, n: usize) -> Vec<BusAddr> {
    (0..n)
        .map(|_| {
            // SAFETY: the same private buffer mapped to-device many times: the device only reads.
            unsafe { layer.map_phys(dev, PhysAddr(buf), BUF, DmaDirection::ToDevice, DmaAttrs::NONE) }
                .unwrap()
        })
        .collect()
}

/// Unmap what [`hold_maps`] mapped.
pub fn unmap_held(layer: &Layer, dev: &ccdma::Device, held: Vec<BusAddr>) {
    for bus in held {
        // SAFETY: a raw mapping of `hold_maps`, unmapped once.
        unsafe { layer.unmap(dev, bus, BUF, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    }
}
