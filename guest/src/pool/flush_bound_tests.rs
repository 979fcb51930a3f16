//! The refusal path's flush decision (`flush_bound.rs`): a front that no merge could turn into
//! the run asked for keeps its runs, and the refusal is made again without a lock; a merge that
//! can make the run is still made; the per-segment free counts follow the bitmap.
extern crate std;
use std::vec;
use std::vec::Vec;

use super::*;

const SLOT: usize = 2048;

fn req(nslots: usize, align_slots: usize) -> RunRequest {
    let mask = ((align_slots * SLOT) as u64 - 1) & !(SLOT as u64 - 1);
    RunRequest { nslots, align_mask: mask, align_bits: 0 }
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

/// One area of `slots` slots in segments of 128 (its memory never touched).
fn pool(slots: usize) -> BouncePool<'static> {
    let meta = vec![SlotMeta::EMPTY; slots].leak();
    let cfg = PoolConfig { slot_size: SLOT, max_run_slots: 128, areas: 1 };
    // SAFETY: nothing dereferences the CPU pointer (only `cpu_at` derives from it; no test calls it).
    unsafe { BouncePool::new(PhysAddr(0x10_0000), NonNull::dangling(), slots * SLOT, meta, cfg) }
        .expect("pool")
}

/// Every segment: 2-slot runs, one in four listed or free, the rest live: each segment holds 32
/// free and listed slots, no two of its free or listed runs next to each other.
fn comb(p: &BouncePool<'_>) -> Vec<usize> {
    let mut runs = Vec::new();
    while let Some(i) = p.alloc(req(2, 1), head(2)) {
        runs.push(i);
    }
    runs.sort_unstable();
    let mut live = Vec::new();
    for (k, &i) in runs.iter().enumerate() {
        if k % 4 == 0 {
            p.free(i, 2);
        } else {
            live.push(i);
        }
    }
    live
}

/// A request no flush could meet (no segment holds that many free and listed slots) is refused
/// with the front's runs still listed (before `flush_bound.rs` a refusal flushed every front:
/// fails there), and the same refusal then reads no bookkeeping word (the bound is published).
#[test]
fn a_refusal_no_merge_could_meet_keeps_the_front() {
    let p = pool(1024);
    comb(&p);
    let listed = || p.areas[0].state.lock().cached();
    let before = listed();
    assert!(before > 0, "the frees listed runs");
    assert!(p.alloc(req(33, 1), head(33)).is_none());
    assert_eq!(listed(), before, "no flush: no segment holds 33 free and listed slots");
    p.areas[0].state.lock().visited.set(0);
    assert!(p.alloc(req(33, 1), head(33)).is_none());
    assert_eq!(p.areas[0].state.lock().visited.get(), 0, "refused from the summary");
    // 32 may come from a merge as far as the counts know: the front is flushed, and the request
    // (which no run can meet: the listed runs sit between live ones) refused after it.
    assert!(p.alloc(req(32, 1), head(32)).is_none());
    assert_eq!(listed(), 0);
}

/// A run only a merge of listed runs with their free and listed neighbours can make is made:
/// a segment's free and listed slots are exactly the run asked for. (Fails if the flush decision
/// asks for more than the run: `bound > n`.)
#[test]
fn a_merge_of_exactly_the_run_is_made() {
    let p = pool(1024);
    let runs: Vec<usize> = (0..512).map(|_| p.alloc(req(2, 1), head(2)).unwrap()).collect();
    // Free the first segment's 64 pairs, alternately between front and tree, and nothing else.
    for &i in runs.iter().filter(|&&i| i < 128) {
        p.free(i, 2);
    }
    assert!(p.areas[0].state.lock().cached() > 0, "some listed");
    let whole = p.alloc(req(128, 128), head(128)).expect("the whole first segment, by a flush");
    assert_eq!(whole, 0);
}

/// The per-segment free counts follow the bitmap through takes, gives and flushes. (Fails with
/// either count update of `take`/`give` removed.)
#[test]
fn segment_free_counts_follow_the_bitmap() {
    let p = pool(2048);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut live: Vec<(usize, usize)> = Vec::new();
    for step in 0..3000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if !live.is_empty() && x % 3 == 0 {
            let (i, n) = live.swap_remove((x >> 8) as usize % live.len());
            p.free(i, n);
        } else {
            let n = 1 + (x >> 20) as usize % 128;
            if let Some(i) = p.alloc(req(n, 1), head(n)) {
                live.push((i, n));
            }
        }
        if step % 16 == 0 {
            let st = p.areas[0].state.lock();
            for s in 0..st.len() / 128 {
                let bits = (s * 128..s * 128 + 128).filter(|&k| st.meta[k / 64].word >> (k % 64) & 1 == 1);
                assert_eq!(st.free_count(s), bits.count(), "step {step} segment {s}");
            }
        }
    }
}
