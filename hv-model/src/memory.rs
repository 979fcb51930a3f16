//! Sparse guest memory: one anonymous `MAP_NORESERVE` mapping of the whole RAM size, so a 64 GiB guest
//! costs only the pages a test touches, plus a page-state map (private unless recorded otherwise).

use std::collections::{HashMap, HashSet};
use std::ptr::NonNull;
use std::sync::Mutex;

/// The 4 KiB page size of the model.
pub const PAGE: u64 = 4096;

/// State of one guest page as the hypervisor sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageState {
    /// Only the guest can access it (the default).
    Private,
    /// Hypervisor and devices can access it.
    Shared,
    /// Private but unusable until the guest accepts (TDX) or validates (SEV-SNP: assigned to the guest
    /// in the RMP with the validated bit clear) it.
    PendingAccept,
}

/// Guest RAM `[0, size)`.
pub struct GuestMemory {
    base: NonNull<u8>,
    size: u64,
    states: Mutex<HashMap<u64, PageState>>,
    /// Pages that became [`PageState::PendingAccept`] and whose accept/validate the guest has not seen
    /// succeed since: the guest must not use them (the model's check of the guest, not of the state).
    unaccepted: Mutex<HashSet<u64>>,
}

// SAFETY: the mapping is owned by this value for its whole life; concurrent access to guest memory is
// what DMA is (the model, like hardware, does not order CPU and device accesses).
unsafe impl Send for GuestMemory {}
// SAFETY: as above.
unsafe impl Sync for GuestMemory {}

impl GuestMemory {
    /// Reserve `size` bytes (page multiple) of sparse guest RAM.
    pub fn new(size: u64) -> GuestMemory {
        assert!(size > 0 && size % PAGE == 0, "guest RAM must be whole pages");
        // SAFETY: an anonymous private mapping with no address hint; the kernel picks the place. With
        // MAP_NORESERVE pages are only backed when touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert!(p != libc::MAP_FAILED, "mmap of {size} bytes of guest RAM failed");
        GuestMemory {
            base: NonNull::new(p.cast()).expect("mmap returned null"),
            size,
            states: Mutex::new(HashMap::new()),
            unaccepted: Mutex::new(HashSet::new()),
        }
    }

    /// RAM size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// True when `[phys, phys + len)` is inside RAM.
    pub fn contains(&self, phys: u64, len: u64) -> bool {
        phys.checked_add(len).is_some_and(|end| end <= self.size)
    }

    /// CPU pointer for guest physical `phys` (guest-side access, no state check).
    pub fn ptr(&self, phys: u64, len: u64) -> Option<NonNull<u8>> {
        if !self.contains(phys, len) {
            return None;
        }
        // SAFETY: `phys + len <= size`, inside the mapping.
        Some(unsafe { self.base.add(phys as usize) })
    }

    /// Guest physical address of a CPU pointer into RAM.
    pub fn phys_of(&self, ptr: *const u8, len: usize) -> Option<u64> {
        let off = (ptr as usize).checked_sub(self.base.as_ptr() as usize)? as u64;
        self.contains(off, len as u64).then_some(off)
    }

    /// State of the page holding `phys`.
    pub fn state(&self, phys: u64) -> PageState {
        *self.states.lock().unwrap().get(&(phys / PAGE)).unwrap_or(&PageState::Private)
    }

    /// Set the state of `pages` pages from the page holding `phys`.
    pub fn set_state(&self, phys: u64, pages: u64, state: PageState) {
        let mut map = self.states.lock().unwrap();
        let mut unaccepted = self.unaccepted.lock().unwrap();
        for pfn in phys / PAGE..phys / PAGE + pages {
            if state == PageState::Private {
                map.remove(&pfn);
            } else {
                map.insert(pfn, state);
            }
            if state == PageState::PendingAccept {
                unaccepted.insert(pfn);
            } else {
                unaccepted.remove(&pfn);
            }
        }
    }

    /// The guest's accept/validate of the page holding `phys` returned success (truthfully or not): from
    /// the guest's point of view the page is usable again.
    pub fn mark_accepted(&self, phys: u64) {
        self.unaccepted.lock().unwrap().remove(&(phys / PAGE));
    }

    /// The pages of `[phys, phys + len)` converted to private whose accept/validate the guest has not
    /// seen succeed (a guest that uses them is at fault).
    pub fn unaccepted_in(&self, phys: u64, len: u64) -> Vec<u64> {
        let set = self.unaccepted.lock().unwrap();
        if set.is_empty() || len == 0 {
            return Vec::new();
        }
        let (first, last) = (phys / PAGE, (phys.saturating_add(len) - 1) / PAGE);
        if last - first < set.len() as u64 {
            (first..=last).filter(|p| set.contains(p)).map(|p| p * PAGE).collect()
        } else {
            let mut v: Vec<u64> =
                set.iter().filter(|p| (first..=last).contains(p)).map(|p| p * PAGE).collect();
            v.sort_unstable();
            v
        }
    }

    /// Pages shared now.
    pub fn shared_pages(&self) -> u64 {
        self.states.lock().unwrap().values().filter(|s| **s == PageState::Shared).count() as u64
    }

    /// True when every page of `[phys, phys + len)` is shared.
    pub fn all_shared(&self, phys: u64, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        let map = self.states.lock().unwrap();
        (phys / PAGE..=(phys + len - 1) / PAGE).all(|p| map.get(&p) == Some(&PageState::Shared))
    }

    /// Guest-side write (no checks).
    pub fn write(&self, phys: u64, data: &[u8]) {
        let p = self.ptr(phys, data.len() as u64).expect("guest write outside RAM");
        // SAFETY: inside the mapping (checked by `ptr`); `data` is a separate host buffer.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p.as_ptr(), data.len()) };
    }

    /// Guest-side read (no checks).
    pub fn read(&self, phys: u64, len: usize) -> Vec<u8> {
        let p = self.ptr(phys, len as u64).expect("guest read outside RAM");
        let mut v = vec![0; len];
        // SAFETY: inside the mapping (checked by `ptr`).
        unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), v.as_mut_ptr(), len) };
        v
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `new`; nothing refers to it any more.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.size as usize) };
    }
}
