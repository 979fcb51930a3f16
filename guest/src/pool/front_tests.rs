//! Unit tests of the areas' fronts (`front.rs`): reuse, alignment, the flush that keeps the front
//! from refusing what the pool could give, counters, and a pool built again over the same metadata.
extern crate std;
use std::vec;
use std::vec::Vec;

use super::front::CLASSES;
use super::*;

const SLOT: usize = 2048;

fn req(nslots: usize, align_slots: usize, bits_slots: usize) -> RunRequest {
    let mask = ((align_slots * SLOT) as u64 - 1) & !(SLOT as u64 - 1);
    RunRequest { nslots, align_mask: mask, align_bits: (bits_slots * SLOT) as u64 & mask }
}

fn head(nslots: usize) -> NewHead {
    NewHead {
        offset: 0,
        len: nslots * SLOT,
        dir: DmaDirection::ToDevice,
        attrs: DmaAttrs::NONE,
        orig: core::ptr::null_mut(),
        owner: Owner { device: 7, safe: false },
    }
}

fn cfg(max_run_slots: usize, areas: usize) -> PoolConfig {
    PoolConfig { slot_size: SLOT, max_run_slots, areas }
}

/// A pool over `meta` (its memory never touched: no test asks for a CPU pointer).
fn pool_over(phys: u64, meta: &mut [SlotMeta], cfg: PoolConfig) -> BouncePool<'_> {
    let len = meta.len() * SLOT;
    // SAFETY: nothing dereferences the CPU pointer (only `cpu_at` derives from it; no test calls it).
    unsafe { BouncePool::new(PhysAddr(phys), NonNull::dangling(), len, meta, cfg) }.expect("pool")
}

/// Slots listed in every area's front.
fn listed(p: &BouncePool<'_>) -> usize {
    p.areas[..p.area_count].iter().map(|a| a.state.lock().cached()).sum()
}

/// A run freed is listed, and the next request of its size takes it back with no tree search;
/// the counters never count listed slots.
#[test]
fn a_freed_run_is_reused_at_its_size() {
    let meta = vec![SlotMeta::EMPTY; 1024].leak();
    let p = pool_over(0x10_0000, meta, cfg(128, 1));
    let keep = p.alloc(req(8, 1, 0), head(8)).unwrap();
    let a = p.alloc(req(2, 2, 0), head(2)).unwrap();
    p.free(a, 2);
    assert_eq!((listed(&p), p.slots_in_use()), (2, 8), "listed, and free for the counters");
    p.areas[0].state.lock().visited.set(0);
    assert_eq!(p.alloc(req(2, 2, 0), head(2)), Some(a), "the same run comes back");
    assert_eq!(p.areas[0].state.lock().visited.get(), 0, "no bitmap or tree word read");
    assert_eq!((listed(&p), p.slots_in_use(), p.high_water()), (0, 10, 10));
    p.free(a, 2);
    p.free(keep, 8);
    assert_eq!(p.slots_in_use(), 0);
    // A listed run is nobody's mapping: no face finds it.
    assert!(p.lookup((a * SLOT) as u64, false).is_none());
    assert!(p.release_or_free::<()>((a * SLOT) as u64, |_| Ok(()), |_| false).is_none());
    let mut live = 0;
    p.for_each_live(|_| live += 1);
    assert_eq!(live, 0);
    // Freeing it again changes nothing: it is not a live head.
    p.free(a, 2);
    assert_eq!((listed(&p), p.slots_in_use()), (10, 0));
}

/// A listed run whose start does not meet a request's alignment is not handed out for it.
#[test]
fn a_listed_run_meets_the_alignment_or_stays() {
    let meta = vec![SlotMeta::EMPTY; 1024].leak();
    let p = pool_over(0x10_0000, meta, cfg(128, 1));
    let pad = p.alloc(req(1, 1, 0), head(1)).unwrap();
    let odd = p.alloc(req(2, 1, 0), head(2)).unwrap();
    assert_eq!((pad, odd), (0, 1));
    p.free(odd, 2);
    assert_eq!(listed(&p), 2);
    let even = p.alloc(req(2, 2, 0), head(2)).unwrap();
    assert_eq!(even % 2, 0, "a page-aligned request never gets the odd run");
    assert_eq!(listed(&p), 2, "the odd run stays listed");
    assert_eq!(p.alloc(req(2, 1, 0), head(2)), Some(odd), "a slot-aligned request takes it");
    // And with preserved offset bits: runs starting at slot 3 mod 4 only.
    p.free(odd, 2);
    let r = req(2, 4, 3);
    let got = p.alloc(r, head(2)).unwrap();
    assert_eq!((0x10_0000 + (got * SLOT) as u64) & r.align_mask, r.align_bits);
}

/// Listed runs next to free ones: a request only their merge can meet is met (the front is
/// flushed into the tree), inside one segment; once flushed, a request nothing can meet is refused
/// without a lock again.
#[test]
fn the_front_never_refuses_what_the_pool_could_give() {
    let meta = vec![SlotMeta::EMPTY; 256].leak();
    let p = pool_over(0x10_0000, meta, cfg(128, 1));
    let runs: Vec<usize> = (0..128).map(|_| p.alloc(req(2, 1, 0), head(2)).unwrap()).collect();
    // Free everything, the two segments in turn, which segment first alternating from pair to
    // pair: while the front has room, frees alternate between the tree and the front (it holds
    // no more than the tree has free), so both segments keep listed runs.
    for k in 0..64 {
        let (a, b) = if k % 2 == 0 { (k, 64 + k) } else { (64 + k, k) };
        p.free(runs[a], 2);
        p.free(runs[b], 2);
    }
    assert!(listed(&p) > 0, "some runs are listed");
    assert!(p.areas[0].state.lock().top < 128, "no whole segment in the tree");
    assert_eq!(p.slots_in_use(), 0);
    let whole = p.alloc(req(128, 128, 0), head(128)).expect("a whole segment: the front is flushed");
    assert_eq!(whole % 128, 0);
    assert_eq!(listed(&p), 0);
    assert_eq!(p.slots_in_use(), 128);
    p.free(whole, 128);
    // Several areas: the runs listed in one area merge only there. (Not under Miri: a minute of
    // bitmap walks that the single area above has checked already.)
    if cfg!(miri) {
        return;
    }
    let meta = vec![SlotMeta::EMPTY; 1024].leak();
    let p = pool_over(0x40_0000, meta, cfg(128, 4));
    let runs: Vec<usize> = (0..512).map(|_| p.alloc(req(2, 1, 0), head(2)).unwrap()).collect();
    for &i in runs.iter().rev() {
        p.free(i, 2);
    }
    let got: Vec<usize> =
        (0..8).map(|_| p.alloc(req(128, 1, 0), head(128)).expect("every segment")).collect();
    assert!(got.iter().all(|&i| i % 128 == 0), "{got:?}");
    assert!(p.alloc(req(1, 1, 0), head(1)).is_none());
    assert_eq!(p.slots_in_use(), 1024);
}

/// Sizes past the classes, or past the front's share of the area, go straight back to the tree.
#[test]
fn the_front_is_bounded() {
    let meta = vec![SlotMeta::EMPTY; 1024].leak();
    let p = pool_over(0x10_0000, meta, cfg(128, 1));
    let big = p.alloc(req(CLASSES + 1, 1, 0), head(CLASSES + 1)).unwrap();
    p.free(big, CLASSES + 1);
    assert_eq!(listed(&p), 0, "longer than the classes: the tree");
    let runs: Vec<usize> =
        (0..if cfg!(miri) { 150 } else { 400 }).map(|_| p.alloc(req(2, 1, 0), head(2)).unwrap()).collect();
    for &i in &runs {
        p.free(i, 2);
    }
    let st = p.areas[0].state.lock();
    assert!(st.cached() <= st.len() / 4 && st.cached() <= st.free, "{} listed", st.cached());
}

/// A pool built again over the same metadata (a released pool whose storage is reused, a pool
/// grown again from the source) starts with empty lists: a run listed before the rebuild is never
/// handed out by the new pool, and nothing of the old lists is followed.
#[test]
fn a_rebuilt_pool_forgets_its_lists() {
    let meta = vec![SlotMeta::EMPTY; 512].leak();
    let listed_at;
    {
        let p = pool_over(0x10_0000, &mut *meta, cfg(128, 2));
        let keep: Vec<usize> = (0..64).map(|_| p.alloc(req(4, 2, 0), head(4)).unwrap()).collect();
        for &i in &keep[..32] {
            p.free(i, 4);
        }
        assert!(listed(&p) > 0);
        listed_at = p.areas[..p.area_count]
            .iter()
            .map(|a| a.state.lock().meta.iter().filter(|m| m.state() == CACHED).count())
            .sum::<usize>();
        assert!(listed_at > 0, "runs listed when the pool goes");
    }
    // Released while 32 runs are live is the caller's bug the layer refuses (`Busy`); here the
    // storage is simply reused for a new pool elsewhere.
    let p = pool_over(0x80_0000, &mut *meta, cfg(128, 2));
    assert_eq!((listed(&p), p.slots_in_use()), (0, 0));
    for a in &p.areas[..p.area_count] {
        let st = a.state.lock();
        assert!(st.meta.iter().all(|m| m.state() == FREE), "no head of the old pool survives");
        assert_eq!(st.front & ((1 << CLASSES) - 1), 0);
    }
    // Every allocation comes from the new pool's free slots, each slot once.
    let mut seen = vec![false; 512];
    while let Some(i) = p.alloc(req(4, 2, 0), head(4)) {
        assert!(seen[i..i + 4].iter().all(|s| !s), "slot handed out twice");
        seen[i..i + 4].iter_mut().for_each(|s| *s = true);
    }
    assert_eq!(p.slots_in_use(), 512);
}
