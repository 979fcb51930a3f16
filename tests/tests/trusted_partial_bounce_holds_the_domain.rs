//! Review of issue 21: an accepted device with `bounce_partial_pages` maps a buffer that does not
//! cover whole IOMMU pages through the pool (`trusted_map` -> `iommu_map`). In a premapped domain
//! that run is counted live by the device alone now (not by the domain), so the device's count is
//! all that keeps detach from revoking the device and taking its windows down under it. The
//! refusal must name exactly the one mapping, change no entry, and the device must still read the
//! bytes; once unmapped, revoke and detach leave nothing.
//!
//! Fail-first (checked once by mutation): with the two checks of the device's own count removed
//! (`DmaLayer::detach_dyn`'s and `revoke_dyn`'s `live != 0`; either alone refuses), the premapped
//! case detaches under the live run: nothing of the domain refuses any more.

mod iommu_support;

use ccdma::{
    BusAddr, DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaMask, DmaPath, IommuPolicy, PhysAddr,
};
use ccdma_hv_model::Region;
use ccdma_tests::*;
use iommu_support::*;

const ACCEPTED: u32 = 1;

#[test]
fn a_bounced_partial_page_of_an_accepted_device_holds_its_domain() {
    for policy in [IommuPolicy::Premapped, IommuPolicy::Strict] {
        let g = iommu_guest(Opts::new(policy));
        g.hv.tdisp_bind(ACCEPTED);
        g.hv.add_iommu_device(ACCEPTED, 64);
        let cfg = DeviceConfig::new(ACCEPTED, DmaMask::BITS_64).with_bounce_partial_pages(true);
        let mut dev = g.layer.attach(cfg).unwrap();
        g.layer.accept(&mut dev).unwrap();
        assert_eq!(dev.path(), DmaPath::TrustedIommu);
        let base = g.hv.alloc(2 * 4096, Region::High);
        let phys = base + 0x123;
        g.hv.memory().write(phys, &pattern(100, 7));
        // SAFETY: a fresh allocation of this test, untouched until the mapping ends.
        let bus =
            unsafe { g.layer.map_phys(&dev, PhysAddr(phys), 100, DmaDirection::ToDevice, DmaAttrs::NONE) }
                .unwrap();
        let slots = g.layer.stats().slots_in_use;
        assert!(slots > 0, "{policy:?}: a partial page bounces through the pool");
        assert_eq!(dev.live(), 1);
        let before = g.hv.tce_counters();

        let r = g.layer.detach(dev).unwrap_err();
        assert_eq!(r.error, DmaError::Busy { live: 1 }, "{policy:?}");
        let mut dev = r.value;
        assert_eq!(dev.path(), DmaPath::TrustedIommu, "{policy:?}: the refused detach revoked the device");
        assert_eq!(g.hv.tce_counters(), before, "{policy:?}: a refused detach changed the windows");
        assert_eq!(g.layer.stats().slots_in_use, slots, "{policy:?}: the run left its slots");
        assert_eq!(g.hv.device(ACCEPTED).read(bus.0, 100).unwrap(), pattern(100, 7), "{policy:?}");

        // SAFETY: the raw mapping made above, unmapped once.
        unsafe { g.layer.unmap(&dev, BusAddr(bus.0), 100, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
        g.layer.revoke(&mut dev).unwrap();
        g.layer.detach(dev).unwrap();
        let t = g.hv.tce_counters();
        assert_eq!((t.live_entries, t.ddws), (0, 0), "{policy:?}: entries or windows left: {t:?}");
        assert_eq!(g.layer.stats().slots_in_use, 0);
        assert_eq!(g.hv.tces_to_private(), 0);
        assert_no_faults(g.hv);
    }
}
