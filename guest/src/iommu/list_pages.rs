//! The `H_PUT_TCE_INDIRECT` list pages of a layer ([`TceBatching`](super::config::TceBatching)) and how one batch gets a page:
//! the single page of [`TceBatching::SharedPage`](super::config::TceBatching::SharedPage) behind a lock that waits, or the page of the
//! caller's CPU ([`TceBatching::PerCpuPages`](super::config::TceBatching::PerCpuPages)) behind a try-lock that never waits.
//!
//! "Which CPU am I" ([`crate::Platform::cpu_hint`]) is only a hint: two callers may claim the same
//! CPU, or none. Soundness never rests on it: every page has its own busy flag, taken with a
//! compare-exchange before the page is written and released after the hypercall returns, so no two
//! batches ever share a page. A caller whose page is busy takes the next free one; when every page
//! is busy it gets none and writes its entry with `H_PUT_TCE` (counted), so no CPU waits on another.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use super::calls::TCE_LIST_ENTRIES;
use super::config::MAX_LIST_PAGES;
use super::counters::IommuCounters;
use crate::addr::{PhysAddr, PAGE_SIZE};

/// How a batch gets a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ListMode {
    /// One page; a batch waits for it.
    Shared,
    /// A page per CPU; a batch never waits.
    PerCpu,
}

/// The list pages of a layer: `count` contiguous pages, zeroed and shared at `enable_iommu`, or a
/// slot run of a fixed pool (shared already) taken there.
pub(crate) struct ListPages {
    first: PhysAddr,
    cpu: NonNull<u8>,
    count: usize,
    mode: ListMode,
    pooled: Option<PoolRun>,
    busy: [AtomicBool; MAX_LIST_PAGES],
}

/// The slot run of a fixed pool that holds a layer's list pages
/// ([`TceBatching::PoolPages`](super::config::TceBatching::PoolPages)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PoolRun {
    /// Head slot of the run.
    pub index: usize,
    /// Slots of the run (at most `MAX_LIST_PAGES` pages').
    pub nslots: u32,
    /// Pool index. With `nslots`, narrow so that `ListPages` fits in 120 bytes: a layer with no
    /// IOMMU domain still holds an `Iommu` (`DmaLayer<P, 1, 0, 2>` 1,664 bytes, `layer_size.rs`).
    pub pool: u8,
}

/// Where a layer's list pages are, for giving them back at `disable_iommu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ListRange {
    pub first: PhysAddr,
    pub count: usize,
    /// Taken from a pool: freed back to it, never unshared.
    pub pooled: Option<PoolRun>,
}

// SAFETY: the pages belong to the layer for its whole life (the caller handed them over at
// `enable_iommu`); a page is written only by the holder of its busy flag (`ListGuard`).
unsafe impl Send for ListPages {}
// SAFETY: as above.
unsafe impl Sync for ListPages {}

impl ListPages {
    /// # Safety
    /// `count` must be in `1..=MAX_LIST_PAGES`, and `cpu` (aligned for `u64`) must point to `count`
    /// 4 KiB pages, mapping
    /// guest RAM `[first, first + count * 4 KiB)`, that the layer owns alone for as long as the
    /// `ListPages` lives.
    pub(crate) unsafe fn new(first: PhysAddr, cpu: NonNull<u8>, count: usize, mode: ListMode) -> ListPages {
        ListPages {
            first,
            cpu,
            count,
            mode,
            pooled: None,
            busy: [const { AtomicBool::new(false) }; MAX_LIST_PAGES],
        }
    }

    /// The pages are the slot run `run` of a fixed pool.
    pub(crate) fn in_pool(mut self, run: PoolRun) -> ListPages {
        self.pooled = Some(run);
        self
    }

    /// Where the pages are.
    pub(crate) fn range(&self) -> ListRange {
        ListRange { first: self.first, count: self.count, pooled: self.pooled }
    }

    /// Pool slots the pages hold (0 unless taken from a pool).
    pub(crate) fn pool_slots(&self) -> usize {
        self.pooled.map_or(0, |r| r.nslots as usize)
    }

    fn try_take(&self, i: usize) -> Option<ListGuard<'_>> {
        self.busy
            .get(i)?
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| ListGuard { pages: self, index: i })
    }

    /// A page for one batch. Shared: the one page, waiting for it if another CPU holds it (counted in
    /// `list_page_waits`). Per CPU: the page of `cpu` (page 0 without a hint), else the next free one
    /// (`list_page_busy`), else `None`: every page is busy and the caller writes per entry.
    pub(crate) fn acquire(&self, cpu: Option<usize>, counters: &IommuCounters) -> Option<ListGuard<'_>> {
        match self.mode {
            ListMode::Shared => {
                if let Some(g) = self.try_take(0) {
                    return Some(g);
                }
                bump(&counters.list_page_waits);
                loop {
                    core::hint::spin_loop();
                    if let Some(g) = self.try_take(0) {
                        return Some(g);
                    }
                }
            }
            ListMode::PerCpu => {
                // `count >= 1` (checked at enable); `checked_rem` keeps a division panic out anyway.
                let start = cpu.and_then(|c| c.checked_rem(self.count)).unwrap_or(0);
                let found = (0..self.count).find_map(|k| {
                    let i = (start + k).checked_rem(self.count)?;
                    self.try_take(i).map(|g| (k, g))
                });
                match found {
                    Some((0, g)) => Some(g),
                    Some((_, g)) => {
                        bump(&counters.list_page_busy);
                        Some(g)
                    }
                    None => None,
                }
            }
        }
    }
}

fn bump(c: &super::counters::IommuCounter) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// One list page held for one batch; released on drop (after the hypercall has read it).
pub(crate) struct ListGuard<'a> {
    pages: &'a ListPages,
    index: usize,
}

impl ListGuard<'_> {
    /// Guest physical address of the page.
    pub(crate) fn phys(&self) -> PhysAddr {
        PhysAddr(self.pages.first.0 + self.index as u64 * PAGE_SIZE)
    }

    /// Write entries `0..n` (at most 512; more are ignored) as big-endian `entry(i)`.
    pub(crate) fn fill(&mut self, n: u64, entry: impl Fn(u64) -> u64) {
        let n = n.min(TCE_LIST_ENTRIES as u64);
        // SAFETY: page `index < count` lies inside the pages `ListPages::new` was given.
        let page = unsafe { self.pages.cpu.as_ptr().add(self.index * PAGE_SIZE as usize) }.cast::<u64>();
        for i in 0..n {
            // SAFETY: the page is the layer's (`ListPages::new` contract), its CPU mapping u64-aligned
            // (checked at enable), `i < 512`, and this guard holds its busy flag so nothing else
            // writes it.
            // Volatile: the hypervisor reads it.
            unsafe { page.add(i as usize).write_volatile(entry(i).to_be()) };
        }
    }
}

impl Drop for ListGuard<'_> {
    fn drop(&mut self) {
        // `index` was checked when the page was taken (`try_take`); `get` keeps a panic out anyway.
        if let Some(busy) = self.pages.busy.get(self.index) {
            busy.store(false, Ordering::Release);
        }
    }
}

// The tests read the list-page counters, which hold no value without an IOMMU backend (OffCounter).
#[cfg(all(test, any(feature = "papr-tce", feature = "native-iommu")))]
mod tests {
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    use super::*;

    /// List pages over `buf`: u64 words, so the pointer is aligned as `ListPages::new` requires
    /// (a byte buffer is not; Miri caught the test breaking that contract once).
    fn pages(buf: &mut [u64], count: usize, mode: ListMode) -> ListPages {
        assert!(buf.len() * 8 >= count * PAGE_SIZE as usize);
        let cpu = NonNull::new(buf.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `buf` holds `count` pages and outlives the pages in each test.
        unsafe { ListPages::new(PhysAddr(0x10_0000), cpu, count, mode) }
    }

    #[test]
    fn a_busy_cpu_page_moves_on_then_falls_back_without_waiting() {
        let mut buf = vec![0u64; 2 * PAGE_SIZE as usize / 8];
        let c = IommuCounters::default();
        let p = pages(&mut buf, 2, ListMode::PerCpu);
        let a = p.acquire(Some(1), &c).unwrap();
        assert_eq!(a.phys(), PhysAddr(0x10_1000));
        // A second caller claiming CPU 1 as well gets the other page, never the same one.
        let b = p.acquire(Some(1), &c).unwrap();
        assert_eq!(b.phys(), PhysAddr(0x10_0000));
        assert_eq!(c.list_page_busy.load(Ordering::Relaxed), 1);
        // Every page busy: no page, no wait.
        assert!(p.acquire(Some(0), &c).is_none());
        assert!(p.acquire(None, &c).is_none());
        drop(a);
        assert_eq!(p.acquire(Some(7), &c).unwrap().phys(), PhysAddr(0x10_1000));
        drop(b);
        assert_eq!(p.acquire(None, &c).unwrap().phys(), PhysAddr(0x10_0000));
        assert_eq!(c.list_page_waits.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn fill_writes_big_endian_entries_into_its_own_page_only() {
        let mut buf = vec![0u64; 2 * PAGE_SIZE as usize / 8];
        let c = IommuCounters::default();
        {
            let p = pages(&mut buf, 2, ListMode::PerCpu);
            let mut g = p.acquire(Some(1), &c).unwrap();
            g.fill(600, |i| 0x1000 * i + 3);
        }
        let buf: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert!(buf[..PAGE_SIZE as usize].iter().all(|&b| b == 0), "page 0 untouched");
        let second = &buf[PAGE_SIZE as usize..];
        assert_eq!(second[8..16], (0x1003u64).to_be_bytes());
        assert_eq!(second[4088..4096], (0x1000u64 * 511 + 3).to_be_bytes());
    }

    #[test]
    fn the_shared_page_waits_and_counts() {
        let mut buf = vec![0u64; PAGE_SIZE as usize / 8];
        let c = IommuCounters::default();
        let p = pages(&mut buf, 1, ListMode::Shared);
        let g = p.acquire(Some(3), &c).unwrap();
        std::thread::scope(|s| {
            let t = s.spawn(|| p.acquire(Some(0), &c).map(|g| g.phys()));
            while c.list_page_waits.load(Ordering::Relaxed) == 0 {
                std::thread::yield_now();
            }
            drop(g);
            assert_eq!(t.join().unwrap(), Some(PhysAddr(0x10_0000)));
        });
    }
}
