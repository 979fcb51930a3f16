//! The misuse tracker (Linux's dma-debug class), behind the cargo feature `debug-tracker`, off by
//! default.
//!
//! With the feature, the layer records every live mapping, scatter-gather list and coherent buffer
//! with its device, size, direction and the call site that made it (`#[track_caller]`), and reports
//! - an unmap of an address that is not live: a *double unmap* when the same device unmapped that
//!   address recently, an unknown address otherwise;
//! - an unmap or sync whose size, direction or device differs from the mapping's;
//! - a sync outside a mapping;
//! - at a refused detach, everything the driver leaked, each with the call site that mapped it.
//!
//! Reports go to the log (`error` level) and into a small ring that tools and tests read through
//! `DmaLayer::tracker`. The layer's own checks stay exactly as they are: the tracker only
//! adds who and where. Without the feature every hook below is an empty inline function and the
//! layer holds no tracker state.
//!
//! Storage is fixed (no allocator): [`TRACK_CAPACITY`] live entries and [`REPORT_CAPACITY`] reports;
//! what does not fit is counted (`untracked`, `reports_dropped`), never a failure of the DMA call.
//!
//! ```
//! # use ccdma::*;
//! # use ccdma_hv_model::{HvConfig, Hypervisor, Region};
//! # let hv: &'static Hypervisor = Box::leak(Box::new(Hypervisor::new(HvConfig::pseries(6 << 30))));
//! # let mut layer = DmaLayer::new(hv);
//! # // SAFETY: the model never hands this range out.
//! # unsafe { layer.add_pool(PhysAddr(0x80_0000), 1 << 20, vec![SlotMeta::EMPTY; 512].leak(), PoolConfig::default()) }.unwrap();
//! let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32))?;
//! # let page = hv.alloc(4096, Region::Low);
//! // SAFETY: `page` is guest RAM this program owns until the unmap.
//! let bus = unsafe { layer.on(&dev).map_phys(PhysAddr(page), 4096, DmaDirection::ToDevice)? };
//! // SAFETY: the first unmap ends this program's own raw mapping.
//! unsafe { layer.on(&dev).unmap(bus, 4096, DmaDirection::ToDevice)? };
//! // A driver bug: the same address unmapped twice. The layer refuses it with or without the tracker.
//! // SAFETY: the address is no longer mapped, so the layer refuses without touching memory.
//! let again = unsafe { layer.on(&dev).unmap(bus, 4096, DmaDirection::ToDevice) };
//! assert!(matches!(again, Err(DmaError::UnknownMapping(_))));
//! // With `debug-tracker` the tracker also says what it was and where both calls were made.
//! #[cfg(feature = "debug-tracker")]
//! assert_eq!(layer.tracker().reports_total(), 1);
//! #[cfg(feature = "debug-tracker")]
//! layer.tracker().for_each_report(|r| {
//!     assert_eq!(r.kind, ccdma::tracker::MisuseKind::DoubleUnmap);
//!     println!("{:?} at {} (first unmapped at {:?})", r.kind, r.site, r.earlier);
//! });
//! # Ok::<(), ccdma::DmaError>(())
//! ```

use core::panic::Location;

use crate::addr::BusAddr;
use crate::device::Device;
use crate::direction::DmaDirection;
use crate::error::DmaError;

/// Live entries the tracker holds (further ones are counted as untracked).
pub const TRACK_CAPACITY: usize = 256;
/// Reports kept (the oldest is overwritten).
pub const REPORT_CAPACITY: usize = 32;
/// Recently unmapped addresses remembered to tell a double unmap from an unknown address.
#[cfg(feature = "debug-tracker")]
const RECENT: usize = 32;

/// What a tracked entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrackedKind {
    /// A streaming mapping (safe or raw face).
    Mapping,
    /// A scatter-gather list (its first DMA segment's bus address).
    List,
    /// A coherent buffer.
    Coherent,
}

/// One live object, as the tracker recorded it.
#[derive(Clone, Copy, Debug)]
pub struct TrackedEntry {
    /// What it is.
    pub kind: TrackedKind,
    /// The device's serial ([`Device::serial`]) and its configured id.
    pub device: u32,
    /// The device's `DeviceConfig::id`.
    pub device_id: u32,
    /// Bus address the device uses.
    pub bus: BusAddr,
    /// Bytes.
    pub len: usize,
    /// Direction (coherent buffers: `Bidirectional`).
    pub dir: DmaDirection,
    /// Where it was made.
    pub site: &'static Location<'static>,
}

/// What the tracker saw go wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MisuseKind {
    /// An unmap of an address this device unmapped just before.
    DoubleUnmap,
    /// An unmap or sync of an address that was never a live mapping of this device.
    UnknownAddress,
    /// Size, direction or device differ from the mapping's.
    Mismatch(DmaError),
    /// A sync range outside the mapping.
    SyncOutside(DmaError),
    /// Left live at a detach.
    Leaked,
}

/// One report.
#[derive(Clone, Copy, Debug)]
pub struct MisuseReport {
    /// What went wrong.
    pub kind: MisuseKind,
    /// Device serial.
    pub device: u32,
    /// The address named.
    pub bus: BusAddr,
    /// Where the offending call was made (for `Leaked`: where the leaked object was made).
    pub site: &'static Location<'static>,
    /// Where the mapping was made (mismatches, syncs), or where it was first unmapped (double
    /// unmap), when known.
    pub earlier: Option<&'static Location<'static>>,
}

#[cfg(feature = "debug-tracker")]
pub use enabled::Tracker;

/// Without the feature the layer's tracker is an empty value and every hook compiles to nothing.
#[cfg(not(feature = "debug-tracker"))]
#[derive(Default)]
pub struct Tracker(());

#[cfg(feature = "debug-tracker")]
mod enabled {
    use super::*;
    use spin::Mutex;

    struct State {
        live: [Option<TrackedEntry>; TRACK_CAPACITY],
        recent: [Option<(u32, BusAddr, &'static Location<'static>)>; RECENT],
        recent_next: usize,
        reports: [Option<MisuseReport>; REPORT_CAPACITY],
        reports_next: usize,
        reports_total: u64,
        untracked: u64,
    }

    /// The tracker's state in a layer (feature `debug-tracker`).
    pub struct Tracker(Mutex<State>);

    impl Default for Tracker {
        fn default() -> Self {
            Tracker(Mutex::new(State {
                live: [None; TRACK_CAPACITY],
                recent: [None; RECENT],
                recent_next: 0,
                reports: [None; REPORT_CAPACITY],
                reports_next: 0,
                reports_total: 0,
                untracked: 0,
            }))
        }
    }

    impl Tracker {
        /// Call `f` for every live tracked object (of device `serial`, or all with `None`).
        pub fn for_each_live(&self, serial: Option<u32>, mut f: impl FnMut(&TrackedEntry)) {
            let s = self.0.lock();
            s.live.iter().flatten().filter(|e| serial.is_none_or(|d| e.device == d)).for_each(&mut f);
        }
        /// Call `f` for every report kept, oldest first.
        pub fn for_each_report(&self, mut f: impl FnMut(&MisuseReport)) {
            let s = self.0.lock();
            let n = REPORT_CAPACITY;
            (0..n).filter_map(|k| s.reports[(s.reports_next + k) % n].as_ref()).for_each(&mut f);
        }
        /// Reports made so far (including those overwritten).
        pub fn reports_total(&self) -> u64 {
            self.0.lock().reports_total
        }
        /// Live objects that did not fit the table (not tracked, still served).
        pub fn untracked(&self) -> u64 {
            self.0.lock().untracked
        }

        pub(super) fn add(&self, e: TrackedEntry) {
            let mut s = self.0.lock();
            match s.live.iter_mut().find(|x| x.is_none()) {
                Some(x) => *x = Some(e),
                None => s.untracked += 1,
            }
        }

        /// Remove the live entry of `kind` at `bus` of device `serial`, remembering it as recent.
        pub(super) fn remove(
            &self,
            kind: TrackedKind,
            serial: u32,
            bus: BusAddr,
            site: &'static Location<'static>,
        ) {
            let mut s = self.0.lock();
            if let Some(x) = s
                .live
                .iter_mut()
                .find(|x| x.is_some_and(|e| e.kind == kind && e.device == serial && e.bus == bus))
            {
                *x = None;
            }
            let k = s.recent_next;
            s.recent[k] = Some((serial, bus, site));
            s.recent_next = (k + 1) % RECENT;
        }

        pub(super) fn find(&self, bus: BusAddr) -> Option<TrackedEntry> {
            self.0.lock().live.iter().flatten().find(|e| e.bus == bus).copied()
        }

        pub(super) fn recently_unmapped(
            &self,
            serial: u32,
            bus: BusAddr,
        ) -> Option<&'static Location<'static>> {
            let s = self.0.lock();
            s.recent.iter().flatten().find(|r| r.0 == serial && r.1 == bus).map(|r| r.2)
        }

        pub(super) fn report(&self, r: MisuseReport) {
            match r.earlier {
                Some(m) => log::error!(
                    "ccdma dma-debug: {:?} by device #{} at {} (call at {}; earlier call at {m})",
                    r.kind,
                    r.device,
                    r.bus,
                    r.site
                ),
                None => log::error!(
                    "ccdma dma-debug: {:?} by device #{} at {} (call at {})",
                    r.kind,
                    r.device,
                    r.bus,
                    r.site
                ),
            }
            let mut s = self.0.lock();
            let k = s.reports_next;
            s.reports[k] = Some(r);
            s.reports_next = (k + 1) % REPORT_CAPACITY;
            s.reports_total += 1;
        }
    }
}

/// A mapping (or list) was made.
#[inline(always)]
pub(crate) fn mapped(
    t: &Tracker,
    dev: &Device,
    bus: BusAddr,
    len: usize,
    dir: DmaDirection,
    kind: TrackedKind,
    site: &'static Location<'static>,
) {
    #[cfg(feature = "debug-tracker")]
    t.add(TrackedEntry { kind, device: dev.serial, device_id: dev.config.id, bus, len, dir, site });
    #[cfg(not(feature = "debug-tracker"))]
    let _ = (t, dev, bus, len, dir, kind, site);
}

/// An unmap (of a mapping or list) returned `result`.
#[inline(always)]
pub(crate) fn unmapped(
    t: &Tracker,
    dev: &Device,
    bus: BusAddr,
    kind: TrackedKind,
    result: &Result<(), DmaError>,
    site: &'static Location<'static>,
) {
    #[cfg(feature = "debug-tracker")]
    {
        match result {
            Ok(()) => t.remove(kind, dev.serial, bus, site),
            Err(DmaError::UnknownMapping(_) | DmaError::SgListState { mapped: false }) => {
                let (kind, earlier) = match t.recently_unmapped(dev.serial, bus) {
                    Some(at) => (MisuseKind::DoubleUnmap, Some(at)),
                    None => (MisuseKind::UnknownAddress, None),
                };
                t.report(MisuseReport { kind, device: dev.serial, bus, site, earlier });
            }
            Err(
                e @ (DmaError::SizeMismatch { .. }
                | DmaError::DirectionMismatch { .. }
                | DmaError::WrongDevice { .. }
                | DmaError::OwnedByMapping(_)),
            ) => {
                let earlier = t.find(bus).map(|e| e.site);
                t.report(MisuseReport {
                    kind: MisuseKind::Mismatch(*e),
                    device: dev.serial,
                    bus,
                    site,
                    earlier,
                });
            }
            Err(_) => {}
        }
    }
    #[cfg(not(feature = "debug-tracker"))]
    let _ = (t, dev, bus, kind, result, site);
}

/// A sync returned `result`.
#[inline(always)]
pub(crate) fn synced(
    t: &Tracker,
    dev: &Device,
    bus: BusAddr,
    result: &Result<(), DmaError>,
    site: &'static Location<'static>,
) {
    #[cfg(feature = "debug-tracker")]
    if let Err(e) = result {
        let kind = match e {
            DmaError::OutOfRange { .. } => MisuseKind::SyncOutside(*e),
            DmaError::UnknownMapping(_) => MisuseKind::UnknownAddress,
            DmaError::DirectionMismatch { .. }
            | DmaError::WrongDevice { .. }
            | DmaError::OwnedByMapping(_) => MisuseKind::Mismatch(*e),
            _ => return,
        };
        let earlier = t.find(bus).map(|e| e.site);
        t.report(MisuseReport { kind, device: dev.serial, bus, site, earlier });
    }
    #[cfg(not(feature = "debug-tracker"))]
    let _ = (t, dev, bus, result, site);
}

/// A coherent buffer was made.
#[inline(always)]
#[track_caller]
pub(crate) fn coherent_allocated(t: &Tracker, dev: &Device, bus: BusAddr, pages: u64) {
    let len = usize::try_from(pages.saturating_mul(crate::addr::PAGE_SIZE)).unwrap_or(usize::MAX);
    mapped(t, dev, bus, len, DmaDirection::Bidirectional, TrackedKind::Coherent, Location::caller());
}

/// A coherent buffer was freed.
#[inline(always)]
#[track_caller]
pub(crate) fn coherent_freed(t: &Tracker, dev: &Device, bus: BusAddr) {
    unmapped(t, dev, bus, TrackedKind::Coherent, &Ok(()), Location::caller());
}

/// A detach was refused because `dev` still has live objects: report each, with where it was made.
#[inline(always)]
pub(crate) fn report_leaks(t: &Tracker, dev: &Device) {
    #[cfg(feature = "debug-tracker")]
    {
        let mut leaked = [None; REPORT_CAPACITY];
        let mut n = 0;
        t.for_each_live(Some(dev.serial), |e| {
            if n < leaked.len() {
                leaked[n] = Some(*e);
                n += 1;
            }
        });
        for e in leaked.iter().flatten() {
            log::error!(
                "ccdma dma-debug: device {:#x} (#{}) detached with a live {:?}: {} bytes {:?} at {}, made at {}",
                e.device_id,
                e.device,
                e.kind,
                e.len,
                e.dir,
                e.bus,
                e.site
            );
            t.report(MisuseReport {
                kind: MisuseKind::Leaked,
                device: dev.serial,
                bus: e.bus,
                site: e.site,
                earlier: None,
            });
        }
    }
    #[cfg(not(feature = "debug-tracker"))]
    let _ = (t, dev);
}
