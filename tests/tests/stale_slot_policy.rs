//! What a device sees in a bounce slot mapped to-device with `SKIP_CPU_SYNC`, before the driver's
//! `sync_for_device` (issue 21): by default, in a confidential guest, whatever the slot's last
//! mapping left there (shared memory the host could read all along: zeroing hides nothing and costs a
//! memset per map); zeroes in a guest whose pool is private; zeroes whenever the layer is set to
//! `StaleSlotPolicy::ZeroFill`. Slots the device writes (from-device, bidirectional) are zeroed
//! whatever the policy: stale pool bytes never reach the guest.

use ccdma::sg::{dma_segments, SgEntry};
use ccdma::{DeviceConfig, DmaAttrs, DmaDirection, DmaLayer, DmaMask, DmaPath, PoolConfig, StaleSlotPolicy};
use ccdma_hv_model::{HvConfig, Hypervisor, Region};
use ccdma_tests::{add_pool, model, pattern, GIB, MIB, MID_POOL};

const LEN: usize = 4096;

struct Guest {
    hv: &'static Hypervisor,
    layer: DmaLayer<'static, &'static Hypervisor>,
    dev: ccdma::Device,
    buf: u64,
}

/// A confidential guest (every map bounces through the shared pool) or a plain one with a 32-bit
/// device and a buffer above 4 GiB (bounced through a private pool).
fn guest(confidential: bool, policy: Option<StaleSlotPolicy>) -> Guest {
    let cfg = if confidential { HvConfig::pseries(6 * GIB) } else { HvConfig::plain(6 * GIB) };
    let hv = model(cfg);
    let mut layer = DmaLayer::new(hv);
    if let Some(p) = policy {
        layer.set_stale_slot_policy(p);
    }
    // One area: a list and a single mapping start in the same place whatever the CPU hint (a map
    // or a list without one starts in an area picked from its stack).
    add_pool(&mut layer, MID_POOL, MIB, PoolConfig { areas: 1, ..PoolConfig::default() }).expect("pool");
    hv.add_device(1, 32);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).expect("attach");
    let want = if confidential { DmaPath::BounceAlways } else { DmaPath::BounceAboveMask };
    assert_eq!(dev.path(), want);
    let buf = hv.alloc(LEN as u64, Region::High);
    Guest { hv, layer, dev, buf }
}

impl Guest {
    /// Map `LEN` bytes of pattern `seed` to the device (copied into the slot) and unmap: the slot is
    /// left holding them. Returns the bus address.
    fn leave_stale_bytes(&self, seed: u64) -> u64 {
        self.hv.memory().write(self.buf, &pattern(LEN, seed));
        // SAFETY: the guest's own buffer from `hv.alloc`; this slice is the only view of it.
        let b = unsafe { self.hv.slice_mut(self.buf, LEN) };
        let m = self.layer.map(&self.dev, b, DmaDirection::ToDevice, DmaAttrs::NONE).expect("map");
        let bus = m.bus_addr().0;
        assert_eq!(self.hv.device(1).read(bus, LEN).unwrap(), pattern(LEN, seed));
        m.unmap().expect("unmap");
        bus
    }

    /// After a first mapping left pattern 1 in the slot: map the buffer (now pattern 2) in `dir`
    /// with `SKIP_CPU_SYNC` and return what the device reads there before any sync, then unmap.
    fn device_sees(&self, dir: DmaDirection) -> Vec<u8> {
        let stale_bus = self.leave_stale_bytes(1);
        self.hv.memory().write(self.buf, &pattern(LEN, 2));
        // SAFETY: as above.
        let b = unsafe { self.hv.slice_mut(self.buf, LEN) };
        let m = self.layer.map(&self.dev, b, dir, DmaAttrs::SKIP_CPU_SYNC).expect("map");
        assert_eq!(m.bus_addr().0, stale_bus, "the test needs the same slot again");
        let seen = self.hv.device(1).read(stale_bus, LEN).unwrap();
        m.unmap().expect("unmap");
        assert!(self.hv.faults().is_empty(), "{:?}", self.hv.faults());
        assert_eq!(self.layer.stats().slots_in_use, 0);
        assert_eq!(self.layer.stats().total_failures(), 0);
        seen
    }
}

#[test]
fn the_default_leaves_a_confidential_guests_to_device_slot_as_it_was() {
    let g = guest(true, None);
    assert_eq!(g.layer.stale_slot_policy(), StaleSlotPolicy::Leave);
    assert_eq!(g.device_sees(DmaDirection::ToDevice), pattern(LEN, 1));
}

#[test]
fn zero_fill_on_request_hides_the_last_mapping_from_the_device() {
    let g = guest(true, Some(StaleSlotPolicy::ZeroFill));
    assert_eq!(g.layer.stale_slot_policy(), StaleSlotPolicy::ZeroFill);
    assert_eq!(g.device_sees(DmaDirection::ToDevice), vec![0; LEN]);
}

#[test]
fn the_default_zero_fills_a_private_pools_slot() {
    let g = guest(false, None);
    assert_eq!(g.layer.stale_slot_policy(), StaleSlotPolicy::ZeroFill);
    assert_eq!(g.device_sees(DmaDirection::ToDevice), vec![0; LEN]);
}

#[test]
fn leave_on_request_in_a_plain_guest_leaves_the_slot() {
    let g = guest(false, Some(StaleSlotPolicy::Leave));
    assert_eq!(g.device_sees(DmaDirection::ToDevice), pattern(LEN, 1));
}

#[test]
fn slots_the_device_writes_are_zeroed_whatever_the_policy() {
    for dir in [DmaDirection::FromDevice, DmaDirection::Bidirectional] {
        for confidential in [true, false] {
            let g = guest(confidential, Some(StaleSlotPolicy::Leave));
            assert_eq!(g.device_sees(dir), vec![0; LEN], "{dir:?}, confidential {confidential}");
        }
    }
}

#[test]
fn sync_for_device_still_brings_the_data() {
    let g = guest(true, None);
    let stale_bus = g.leave_stale_bytes(1);
    g.hv.memory().write(g.buf, &pattern(LEN, 2));
    // SAFETY: the guest's own buffer; the only view of it.
    let b = unsafe { g.hv.slice_mut(g.buf, LEN) };
    let mut m = g.layer.map(&g.dev, b, DmaDirection::ToDevice, DmaAttrs::SKIP_CPU_SYNC).expect("map");
    assert_eq!(m.bus_addr().0, stale_bus);
    m.sync_for_device(0, LEN).expect("sync");
    assert_eq!(g.hv.device(1).read(stale_bus, LEN).unwrap(), pattern(LEN, 2));
    m.unmap().expect("unmap");
    assert!(g.hv.faults().is_empty());
}

/// Scatter-gather lists follow the same policy: a one-entry to-device list with `SKIP_CPU_SYNC` in
/// the slot a single mapping just left.
#[test]
fn lists_follow_the_policy() {
    for (policy, want) in
        [(StaleSlotPolicy::Leave, pattern(LEN, 1)), (StaleSlotPolicy::ZeroFill, vec![0; LEN])]
    {
        let g = guest(true, Some(policy));
        let stale_bus = g.leave_stale_bytes(1);
        g.hv.memory().write(g.buf, &pattern(LEN, 2));
        // SAFETY: the guest's own buffer; the only view of it.
        let mut list = [SgEntry::new(unsafe { g.hv.slice_mut(g.buf, LEN) })];
        let dir = DmaDirection::ToDevice;
        assert_eq!(g.layer.map_sg(&g.dev, &mut list, dir, DmaAttrs::SKIP_CPU_SYNC), Ok(1));
        let seg = dma_segments(&list).next().unwrap();
        assert_eq!((seg.addr.0, seg.len), (stale_bus, LEN), "the test needs the same slot again");
        assert_eq!(g.hv.device(1).read(stale_bus, LEN).unwrap(), want, "{policy:?}");
        g.layer.unmap_sg(&g.dev, &mut list, dir, DmaAttrs::SKIP_CPU_SYNC).unwrap();
        assert_eq!(g.layer.stats().slots_in_use, 0);
        assert!(g.hv.faults().is_empty());
    }
}
