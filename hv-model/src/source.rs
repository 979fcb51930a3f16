//! A memory source for pool growth ([`ccdma::MemorySource`]) over a region of the model's guest RAM,
//! with failure injection and checks: a range comes back exactly as it was lent, private, once.

use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::{Condvar, Mutex};

use ccdma::{MemorySource, PhysAddr, SlotMeta};

use crate::memory::{PageState, PAGE};
use crate::Hypervisor;

/// Counters of a [`ModelSource`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceCounters {
    /// Ranges lent now.
    pub ranges_out: u64,
    /// Bytes lent now.
    pub bytes_out: u64,
    /// Metadata blocks lent now.
    pub meta_out: u64,
    /// Ranges lent so far.
    pub takes: u64,
    /// Ranges given back so far.
    pub gives: u64,
    /// Requests refused (empty, or injected).
    pub refused: u64,
    /// Give-backs of something not lent (or not as lent): a guest bug.
    pub bad_gives: u64,
    /// Ranges given back with a page still shared: a guest bug.
    pub returned_shared: u64,
}

#[derive(Default)]
struct State {
    /// Free ranges (start, len), sorted.
    free: Vec<(u64, u64)>,
    lent: HashMap<u64, u64>,
    meta: HashMap<usize, usize>,
    counters: SourceCounters,
    /// Take / meta requests to refuse, by 0-based request number.
    fail_take: Vec<u64>,
    fail_meta: Vec<u64>,
    take_calls: u64,
    meta_calls: u64,
}

/// Guest RAM `[start, start + len)` lent out as pools.
pub struct ModelSource<'h> {
    hv: &'h Hypervisor,
    state: Mutex<State>,
    /// While true, `take` waits (to hold a growth open from a test); the count of waiters.
    gate: Mutex<(bool, u32)>,
    opened: Condvar,
}

impl<'h> ModelSource<'h> {
    /// A source over `[start, start + len)` of `hv`'s RAM (page aligned; tests keep it apart from
    /// everything else).
    pub fn new(hv: &'h Hypervisor, start: u64, len: u64) -> ModelSource<'h> {
        assert!(start % PAGE == 0 && len % PAGE == 0 && hv.memory().contains(start, len));
        let state = State { free: vec![(start, len)], ..State::default() };
        ModelSource { hv, state: Mutex::new(state), gate: Mutex::new((false, 0)), opened: Condvar::new() }
    }

    /// Make every `take` wait until [`Self::open`] (a growth then stays in progress).
    pub fn hold(&self) {
        self.gate.lock().unwrap().0 = true;
    }

    /// Let waiting and later `take`s proceed.
    pub fn open(&self) {
        self.gate.lock().unwrap().0 = false;
        self.opened.notify_all();
    }

    /// `take` calls waiting at the gate now.
    pub fn waiting(&self) -> u32 {
        self.gate.lock().unwrap().1
    }

    /// Refuse the `n`th `take` from now (0: the next).
    pub fn fail_take_in(&self, n: u64) {
        let mut s = self.state.lock().unwrap();
        let at = s.take_calls + n;
        s.fail_take.push(at);
    }

    /// Refuse the `n`th `take_meta` from now (0: the next).
    pub fn fail_meta_in(&self, n: u64) {
        let mut s = self.state.lock().unwrap();
        let at = s.meta_calls + n;
        s.fail_meta.push(at);
    }

    /// The counters.
    pub fn counters(&self) -> SourceCounters {
        self.state.lock().unwrap().counters
    }
}

// SAFETY: ranges come from the source's own region of guest RAM, which the tests give it alone; a
// range is lent at most once until given back (the free list); metadata is a fresh host allocation
// per request, freed only when given back.
unsafe impl MemorySource for ModelSource<'_> {
    fn take(&self, len: usize, align: u64, limit: u64) -> Option<PhysAddr> {
        {
            let mut g = self.gate.lock().unwrap();
            g.1 += 1;
            while g.0 {
                g = self.opened.wait(g).unwrap();
            }
            g.1 -= 1;
        }
        let mut s = self.state.lock().unwrap();
        let call = s.take_calls;
        s.take_calls += 1;
        let len = len as u64;
        if s.fail_take.contains(&call) || len == 0 || len % PAGE != 0 {
            s.counters.refused += 1;
            return None;
        }
        let found = s.free.iter().enumerate().find_map(|(k, &(start, flen))| {
            let at = start.checked_next_multiple_of(align.max(PAGE))?;
            let end = at.checked_add(len)?;
            (end <= start + flen && end - 1 <= limit).then_some((k, at))
        });
        let Some((k, at)) = found else {
            s.counters.refused += 1;
            return None;
        };
        let (start, flen) = s.free.remove(k);
        if at > start {
            s.free.push((start, at - start));
        }
        if at + len < start + flen {
            s.free.push((at + len, start + flen - at - len));
        }
        s.free.sort_unstable();
        s.lent.insert(at, len);
        s.counters.ranges_out += 1;
        s.counters.bytes_out += len;
        s.counters.takes += 1;
        Some(PhysAddr(at))
    }

    fn give_back(&self, phys: PhysAddr, len: usize) {
        let mut s = self.state.lock().unwrap();
        let len = len as u64;
        if s.lent.get(&phys.0) != Some(&len) {
            s.counters.bad_gives += 1;
            return;
        }
        if (0..len / PAGE).any(|k| self.hv.memory().state(phys.0 + k * PAGE) != PageState::Private) {
            s.counters.returned_shared += 1;
        }
        s.lent.remove(&phys.0);
        s.counters.ranges_out -= 1;
        s.counters.bytes_out -= len;
        s.counters.gives += 1;
        // Merge back into the free list.
        s.free.push((phys.0, len));
        s.free.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for &(a, l) in &s.free {
            match merged.last_mut() {
                Some(last) if last.0 + last.1 == a => last.1 += l,
                _ => merged.push((a, l)),
            }
        }
        s.free = merged;
    }

    fn take_meta(&self, slots: usize) -> Option<NonNull<SlotMeta>> {
        let mut s = self.state.lock().unwrap();
        let call = s.meta_calls;
        s.meta_calls += 1;
        if s.fail_meta.contains(&call) || slots == 0 {
            s.counters.refused += 1;
            return None;
        }
        let b: Box<[SlotMeta]> = vec![SlotMeta::EMPTY; slots].into_boxed_slice();
        let p = NonNull::new(Box::into_raw(b).cast::<SlotMeta>())?;
        s.meta.insert(p.as_ptr() as usize, slots);
        s.counters.meta_out += 1;
        Some(p)
    }

    fn give_back_meta(&self, meta: NonNull<SlotMeta>, slots: usize) {
        let mut s = self.state.lock().unwrap();
        if s.meta.get(&(meta.as_ptr() as usize)) != Some(&slots) {
            s.counters.bad_gives += 1;
            return;
        }
        s.meta.remove(&(meta.as_ptr() as usize));
        s.counters.meta_out -= 1;
        // SAFETY: made by `Box::into_raw` of a boxed slice of `slots` records in `take_meta`, given
        // back once (the map entry is gone now).
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(meta.as_ptr(), slots)) });
    }
}
