//! Random operations on mixed layers (issue 14): an accepted and an untrusted device on one layer,
//! without IOMMU and behind the TCE IOMMU (premapped and strict). See `random_mixed`.
//!
//! `CCDMA_TRUST_OPS=N` sets the operations per layer (default 3,000).

mod iommu_support;

use ccdma::{
    BusAddr, DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaMask, IommuPolicy, PhysAddr, TrustState,
};
use ccdma_hv_model::{FaultReason, HvConfig, Region};
use ccdma_tests::*;
use iommu_support::*;

const ACCEPTED: u32 = 1;
const UNTRUSTED: u32 = 2;

/// One live mapping of the random test, with what each side must see.
struct RandLive {
    accepted: bool,
    shared_attr: bool,
    /// Mapped in place (accepted at map time, no `CC_SHARED`).
    private: bool,
    bus: u64,
    phys: u64,
    len: usize,
    dir: DmaDirection,
    /// What the guest must read back after unmap (from-device and bidirectional).
    expect: Vec<u8>,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random operations on a mixed layer (an accepted and an untrusted device): maps (private and
/// `CC_SHARED`), device accesses inside and outside mappings, unmaps, revoke/accept cycles, and the
/// platform withdrawing acceptance mid-flight. After every step: the untrusted device never reached a
/// private page, the accepted one only its live mappings, no untrusted window names private memory,
/// and every refusal was one the step expected. At the end everything is back to baseline.
fn random_mixed(iommu: Option<IommuPolicy>, seed: u64, ops: u64) {
    let (hv, layer, pool_guest) = match iommu {
        Some(p) => {
            let g = iommu_guest(Opts::new(p));
            g.hv.add_iommu_device(ACCEPTED, 64);
            g.hv.add_iommu_device(UNTRUSTED, 48);
            (g.hv, g.layer, true)
        }
        None => {
            let (hv, layer) = guest(HvConfig::tdx(6 * GIB), &[(LOW_POOL, 4 * MIB)]);
            hv.add_device(ACCEPTED, 64);
            hv.add_device(UNTRUSTED, 48);
            (hv, layer, false)
        }
    };
    let page = if pool_guest { 4096 } else { 1 };
    let base = Baseline::take(hv, &layer);
    hv.tdisp_bind(ACCEPTED);
    let mut acc = layer.attach(DeviceConfig::new(ACCEPTED, DmaMask::BITS_64)).unwrap();
    let unt = layer.attach(DeviceConfig::new(UNTRUSTED, DmaMask::new(48).unwrap())).unwrap();
    layer.accept(&mut acc).unwrap();
    let mut rng = Rng(seed | 1);
    let mut live: Vec<RandLive> = Vec::new();
    let mut stale: Vec<(u64, usize)> = Vec::new();
    let mut log_seen = 0;
    let mut faults_seen = 0;
    for step in 0..ops {
        let at = format!("seed {seed:#x} step {step}");
        let mut expect_fault = false;
        match rng.below(10) {
            0..=2 if live.len() < 24 => {
                let accepted = rng.below(2) == 0;
                let dev = if accepted { &acc } else { &unt };
                let max = if rng.below(4) == 0 { 40_000 } else { 3000 };
                let len = 1 + rng.below(max) as usize;
                let dir = [DmaDirection::ToDevice, DmaDirection::FromDevice, DmaDirection::Bidirectional]
                    [rng.below(3) as usize];
                let shared_attr = accepted && rng.below(4) == 0;
                let attrs = if shared_attr { DmaAttrs::CC_SHARED } else { DmaAttrs::NONE };
                let phys = hv.alloc(len as u64 + 8192, Region::High) + rng.below(4096);
                let data = pattern(len, rng.next());
                hv.memory().write(phys, &data);
                // SAFETY: a fresh allocation, lent to this mapping until its unmap below.
                let bus = unsafe { layer.map_phys(dev, PhysAddr(phys), len, dir, attrs) }.expect(&at);
                let private = accepted && !shared_attr && dev.trust() == TrustState::Accepted;
                if !pool_guest {
                    assert_eq!(private, !in_some_pool(&layer, bus.0, len), "{at}: bounced iff not private");
                    assert!(!private || bus.0 == phys, "{at}: trusted-direct uses the private address");
                }
                // A bounced from-device slot starts zeroed and all of it is copied back; a private
                // mapping is the buffer itself.
                let expect = if dir == DmaDirection::FromDevice && !private { vec![0; len] } else { data };
                live.push(RandLive { accepted, shared_attr, private, bus: bus.0, phys, len, dir, expect });
            }
            3..=5 if !live.is_empty() => {
                let i = rng.below(live.len() as u64) as usize;
                let l = &mut live[i];
                let off = rng.below(l.len as u64) as usize;
                let n = 1 + rng.below((l.len - off) as u64) as usize;
                let model = hv.device(if l.accepted { ACCEPTED } else { UNTRUSTED });
                let revoked = l.private && !hv.is_accepted(ACCEPTED);
                if l.dir.device_writes() && rng.below(2) == 0 {
                    let data = pattern(n, rng.next());
                    match model.write(l.bus + off as u64, &data) {
                        Ok(()) => {
                            assert!(!revoked, "{at}: a revoked device wrote private memory");
                            l.expect[off..off + n].copy_from_slice(&data);
                        }
                        Err(f) => {
                            assert!(revoked && f.reason == FaultReason::PrivateTarget, "{at}: {f}");
                            expect_fault = true;
                        }
                    }
                } else if l.dir.device_reads() {
                    match model.read(l.bus + off as u64, n) {
                        Ok(got) => {
                            assert!(!revoked, "{at}: a revoked device read private memory");
                            assert_eq!(got, l.expect[off..off + n], "{at}");
                        }
                        Err(f) => {
                            assert!(revoked && f.reason == FaultReason::PrivateTarget, "{at}: {f}");
                            expect_fault = true;
                        }
                    }
                }
            }
            6 if !live.is_empty() => {
                let i = rng.below(live.len() as u64) as usize;
                let l = live.swap_remove(i);
                if l.private {
                    stale.push((l.bus, l.len));
                }
                let dev = if l.accepted { &acc } else { &unt };
                let attrs = if l.shared_attr { DmaAttrs::CC_SHARED } else { DmaAttrs::NONE };
                // SAFETY: a mapping this test made and has not unmapped.
                unsafe { layer.unmap(dev, BusAddr(l.bus), l.len, l.dir, attrs) }.expect(&at);
                if l.dir.device_writes() {
                    assert_eq!(hv.memory().read(l.phys, l.len), l.expect, "{at}");
                }
            }
            7 => {
                // A hostile aim at a private page neither device has: the untrusted device, and the
                // accepted one behind an IOMMU, must be refused (without an IOMMU the platform's trust
                // is an accepted device's only gate, so it is not asked).
                let phys = hv.alloc(4096, Region::High);
                let id = if rng.below(2) == 0 || !pool_guest { UNTRUSTED } else { ACCEPTED };
                assert!(hv.device(id).read(phys, 16).is_err(), "{at}: device {id} read a private page");
                expect_fault = true;
            }
            8 => {
                let busy = live.iter().any(|l| l.accepted);
                let r = if acc.trust() == TrustState::Accepted {
                    layer.revoke(&mut acc)
                } else {
                    hv.tdisp_bind(ACCEPTED);
                    layer.accept(&mut acc)
                };
                if busy {
                    assert!(matches!(r, Err(DmaError::Busy { .. })), "{at}: {r:?}");
                } else {
                    r.expect(&at);
                    assert_eq!(acc.trust() == TrustState::Accepted, hv.is_accepted(ACCEPTED), "{at}");
                }
            }
            9 if rng.below(4) == 0 => hv.tdisp_error(ACCEPTED),
            9 if pool_guest && !stale.is_empty() => {
                // A late access through an unmapped private mapping: its entries are gone (unless a
                // live mapping has since been given the same bus range).
                let (bus, len) = stale[rng.below(stale.len() as u64) as usize];
                let pages = |b: u64, n: usize| (b & !0xfff, (b + n as u64).next_multiple_of(0x1000));
                let (lo, hi) = pages(bus, len);
                let reused = live.iter().filter(|l| l.accepted).any(|l| {
                    let (a, b) = pages(l.bus, l.len);
                    a < hi && lo < b
                });
                if !reused {
                    let f = hv.device(ACCEPTED).read(bus, len).unwrap_err();
                    assert!(
                        matches!(f.reason, FaultReason::NoEntry | FaultReason::PrivateTarget),
                        "{at}: {f}"
                    );
                    expect_fault = true;
                }
            }
            _ => {}
        }
        // The model's view after every step.
        let log = hv.private_accesses();
        for a in &log[log_seen..] {
            assert_eq!(a.device, ACCEPTED, "{at}: the untrusted device reached private memory: {a:?}");
            let inside = live.iter().filter(|l| l.private).any(|l| {
                let lo = l.phys & !(page - 1);
                a.phys >= lo && a.phys + a.len as u64 <= (l.phys + l.len as u64).next_multiple_of(page)
            });
            assert!(inside, "{at}: {a:?} outside the accepted device's live private mappings");
        }
        log_seen = log.len();
        assert_eq!(hv.page_touches(UNTRUSTED).private, 0, "{at}");
        if pool_guest {
            for r in hv.reachable(UNTRUSTED) {
                assert!(hv.memory().all_shared(r.phys, r.len), "{at}: untrusted window names {r:?}");
            }
        }
        let faults = hv.faults();
        assert!(
            faults.len() - faults_seen <= usize::from(expect_fault),
            "{at}: {:?}",
            &faults[faults_seen..]
        );
        faults_seen = faults.len();
    }
    // Drain, revoke, detach: back to baseline.
    for l in live.drain(..) {
        let dev = if l.accepted { &acc } else { &unt };
        let attrs = if l.shared_attr { DmaAttrs::CC_SHARED } else { DmaAttrs::NONE };
        // SAFETY: mappings this test made and has not unmapped.
        unsafe { layer.unmap(dev, BusAddr(l.bus), l.len, l.dir, attrs) }.unwrap();
    }
    layer.detach(acc).unwrap();
    layer.detach(unt).unwrap();
    assert!(!hv.is_accepted(ACCEPTED));
    let now = Baseline::take(hv, &layer);
    assert_eq!((now.slots_in_use, now.shared_pages), (base.slots_in_use, base.shared_pages));
    if pool_guest {
        assert_eq!(hv.tce_counters().live_entries, 0, "detach cleared every window");
    }
}

#[test]
fn random_mixed_layers() {
    let ops = std::env::var("CCDMA_TRUST_OPS").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
    for (i, iommu) in [None, Some(IommuPolicy::Premapped), Some(IommuPolicy::Strict)].into_iter().enumerate()
    {
        random_mixed(iommu, 0x7255_0000 + i as u64, ops);
    }
}
