//! Unit tests of the pool allocator against a model.
extern crate std;
use std::vec;
use std::vec::Vec;

use super::*;

const SLOT: usize = 2048;

/// A pool at `phys` of `slots` slots; its memory is never touched (the allocator does not read or
/// write pool memory, and these tests never ask for a CPU pointer).
fn pool(phys: u64, slots: usize, cfg: PoolConfig) -> BouncePool<'static> {
    let meta = vec![SlotMeta::EMPTY; cfg.slots_for(slots * cfg.slot_size)].leak();
    // SAFETY: nothing dereferences the CPU pointer: only `cpu_at` derives from it, and no test
    // calls it.
    unsafe { BouncePool::new(PhysAddr(phys), NonNull::dangling(), slots * cfg.slot_size, meta, cfg) }
        .expect("pool")
}

fn req(nslots: usize, align_slots: usize, bits_slots: usize) -> RunRequest {
    let mask = ((align_slots * SLOT) as u64 - 1) & !(SLOT as u64 - 1);
    RunRequest { nslots, align_mask: mask, align_bits: (bits_slots * SLOT) as u64 & mask }
}

fn head(nslots: usize) -> NewHead {
    NewHead {
        offset: 0,
        len: nslots * SLOT,
        dir: DmaDirection::FromDevice,
        attrs: DmaAttrs::NONE,
        orig: core::ptr::null_mut(),
        owner: Owner { device: 7, safe: false },
    }
}

/// Does `[i, i + n)` (global indices) satisfy the request in a model of the pool?
fn fits(free: &[bool], phys: u64, seg: usize, r: RunRequest, i: usize) -> bool {
    let n = r.nslots;
    i + n <= free.len()
        && i / seg == (i + n - 1) / seg
        && free[i..i + n].iter().all(|&f| f)
        && (phys + (i * SLOT) as u64) & r.align_mask == r.align_bits
}

/// Random allocations and frees against a model: every run is free, aligned and inside one
/// segment; a refusal only when the model has no place either; the counters agree.
#[test]
fn random_against_a_model() {
    let mut x = 0x1234_5678_9abc_def1u64;
    let mut rnd = |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    for (slots, seg, areas, phys) in [
        (512, 128, 4, 0x10_0000),
        (300, 5, 3, 0x20_3000),
        (2, 1, 2, 0x1000),
        (778, 64, 2, 0x40_1000),
        (64, 3, 1, 0x5000),
        (4096, 16, 1, 0x80_0000),
        (2000, 7, 1, 0x9000),
        (8192, 128, 2, 0x100_0000),
    ]
    .into_iter()
    // Miri (scripts/miri.sh --all): the small pools only; each step walks the whole bitmap.
    .filter(|&(slots, ..)| !cfg!(miri) || slots <= 512)
    {
        let cfg = PoolConfig { slot_size: SLOT, max_run_slots: seg, areas };
        let p = pool(phys, slots, cfg);
        let mut free = vec![true; slots];
        let mut live: Vec<(usize, usize)> = Vec::new();
        let steps = if cfg!(miri) { 60 } else { 4000 };
        for step in 0..steps {
            if !live.is_empty() && rnd(3) == 0 {
                let (i, n) = live.swap_remove(rnd(live.len()));
                p.free(i, n);
                free[i..i + n].iter_mut().for_each(|f| *f = true);
            } else {
                let n = 1 + rnd(seg);
                let align = [1, 1, 2, 4, 32][rnd(5)];
                let r = req(n, align, rnd(align));
                match p.alloc(r, head(n)) {
                    Some(i) => {
                        assert!(fits(&free, phys, seg, r, i), "bad run {i}+{n} for {r:?}");
                        free[i..i + n].iter_mut().for_each(|f| *f = false);
                        live.push((i, n));
                    }
                    None => {
                        assert!(!(0..slots).any(|i| fits(&free, phys, seg, r, i)), "refused {r:?} with room")
                    }
                }
            }
            assert_eq!(p.slots_in_use(), free.iter().filter(|f| !**f).count());
            // The summaries against the bitmap (every few steps: a full walk).
            for a in p.areas[..p.area_count].iter().filter(|_| step % 8 == 0) {
                let st = a.state.lock();
                for c in 0..st.chunks {
                    assert_eq!(st.node(st.leaves + c), st.chunk_longest(c), "leaf {c}");
                }
                for v in 0..st.leaves {
                    let kids = (1..=4).map(|k| st.node(4 * v + k)).max().unwrap();
                    assert_eq!(st.node(v), kids, "node {v}");
                }
                assert_eq!(a.summary.load(Ordering::Relaxed), st.summary());
                // The word-level scan agrees with a slot-by-slot one.
                let mut best = 0;
                for c in 0..st.chunks {
                    let lo = c * st.chunk;
                    for s0 in (lo..(lo + st.chunk).min(st.len())).step_by(st.seg) {
                        let mut run = 0;
                        for k in s0..(s0 + st.seg).min(st.len()) {
                            run = if st.meta[k / 64].word >> (k % 64) & 1 == 1 { run + 1 } else { 0 };
                            best = best.max(run);
                        }
                    }
                }
                assert_eq!(st.top, best);
            }
        }
    }
}

#[test]
fn exhaustion_and_recovery() {
    let cfg = PoolConfig::default();
    let p = pool(0x10_0000, 1024, cfg);
    let runs: Vec<usize> = (0..8).map(|_| p.alloc(req(128, 2, 0), head(128)).expect("segment")).collect();
    assert!(p.alloc(req(1, 1, 0), head(1)).is_none());
    assert_eq!(p.slots_in_use(), 1024);
    assert_eq!(p.high_water(), 1024);
    p.free(runs[3], 128);
    assert_eq!(p.alloc(req(128, 1, 0), head(128)), Some(runs[3]));
}

/// A run never crosses a segment, even when the free slots on both sides would do.
#[test]
fn runs_stay_inside_segments() {
    let cfg = PoolConfig { slot_size: SLOT, max_run_slots: 8, areas: 1 };
    let p = pool(0x10_0000, 16, cfg);
    let a = p.alloc(req(6, 1, 0), head(6)).unwrap();
    let b = p.alloc(req(6, 1, 0), head(6)).unwrap();
    assert_eq!((a, b), (0, 8));
    // Slots 6..8 and 14..16 are free: four in all, no run of three inside one segment.
    assert!(p.alloc(req(3, 1, 0), head(3)).is_none());
    assert_eq!(p.alloc(req(2, 1, 0), head(2)), Some(6));
}

/// Alignment bits below the request's mask are honoured (min_align_mask offset preservation).
#[test]
fn alignment_bits() {
    let cfg = PoolConfig::default();
    let p = pool(0x10_0000, 512, cfg);
    for bits in 0..8 {
        let r = req(3, 8, bits);
        let i = p.alloc(r, head(3)).unwrap();
        assert_eq!((0x10_0000 + (i * SLOT) as u64) & r.align_mask, r.align_bits);
    }
}

/// Only the head slot's record is written; unmap in one lock frees a to-device run at once.
#[test]
fn head_only_and_release_or_free() {
    let cfg = PoolConfig::default();
    let p = pool(0x10_0000, 256, cfg);
    let i = p.alloc(req(4, 1, 0), head(4)).unwrap();
    {
        let st = p.areas[0].state.lock();
        assert_eq!(st.meta[i].state(), HEAD);
        assert!(st.meta[i + 1..i + 4].iter().all(|m| m.state() == FREE && m.len == 0));
    }
    let off = (i * SLOT) as u64;
    let r: Option<Result<Taken, ()>> = p.release_or_free(off, |_| Err(()), |_| false);
    assert!(matches!(r, Some(Err(()))));
    assert_eq!(p.slots_in_use(), 4, "a refused check changes nothing");
    let r: Option<Result<Taken, ()>> = p.release_or_free(off, |_| Ok(()), |_| true);
    assert!(matches!(r, Some(Ok(Taken::Released(_)))));
    assert!(p.lookup(off, false).is_none(), "released: no second unmap");
    p.free(i, 4);
    let j = p.alloc(req(4, 1, 0), head(4)).unwrap();
    let r: Option<Result<Taken, ()>> = p.release_or_free((j * SLOT) as u64, |_| Ok(()), |_| false);
    assert!(matches!(r, Some(Ok(Taken::Freed { counted: false, dev: false }))));
    assert_eq!(p.slots_in_use(), 0);
    assert!(p.release_or_free::<()>((j * SLOT) as u64, |_| Ok(()), |_| false).is_none());
}

/// A CPU hint picks the area the search starts in.
#[test]
fn cpu_hint() {
    let cfg = PoolConfig { slot_size: SLOT, max_run_slots: 128, areas: 4 };
    let p = pool(0x10_0000, 512, cfg);
    let r = p.alloc_near(req(3, 1, 0), head(3), 6).unwrap();
    assert_eq!(r / 128, 2, "CPU 6 of 4 areas starts at area 2");
    let got = p.release_or_free::<()>((r * SLOT) as u64, |_| Ok(()), |_| false);
    assert!(matches!(got, Some(Ok(Taken::Freed { counted: false, dev: false }))));
    assert_eq!(p.slots_in_use(), 0);
}

/// Bookkeeping words read by one allocation attempt, over every area.
fn visits(p: &BouncePool<'_>, r: RunRequest) -> (Option<usize>, usize) {
    for a in &p.areas[..p.area_count] {
        a.state.lock().visited.set(0);
    }
    let got = p.alloc(r, head(r.nslots));
    let v = p.areas[..p.area_count].iter().map(|a| a.state.lock().visited.get()).sum();
    (got, v)
}

/// Fill with page pairs, free every other: half the pool free, no free run longer than 2 slots.
fn fragment(p: &BouncePool<'_>) {
    let mut runs = Vec::new();
    while let Some(i) = p.alloc(req(2, 2, 0), head(2)) {
        runs.push(i);
    }
    runs.sort_unstable();
    for i in runs.into_iter().step_by(2) {
        p.free(i, 2);
    }
}

/// A request that cannot be met reads no bookkeeping word, whatever the pool's size; one that
/// can is met after a number of word reads that does not grow with the size either.
#[test]
fn failing_request_cost_is_independent_of_size() {
    let mut costs = Vec::new();
    // Miri (scripts/miri.sh --all) checks the same walks on smaller pools.
    let sizes: &[usize] = if cfg!(miri) { &[1 << 10, 2 << 10] } else { &[8 << 10, 32 << 10, 128 << 10] };
    for &slots in sizes {
        let p = pool(0x1000_0000, slots, PoolConfig::default());
        fragment(&p);
        // The frees left runs in the areas' fronts: the first refusal gives them back to the
        // trees (once, a cost the frees would have paid), and the summaries are exact again.
        let (got, flush_words) = visits(&p, req(128, 2, 0));
        assert!(got.is_none());
        assert!(flush_words <= slots, "a flush reads {flush_words} words");
        let (got, fail_words) = visits(&p, req(128, 2, 0));
        assert!(got.is_none());
        // Aligned requests whose length a free run has but whose alignment none meets: one
        // chunk looked at per area at most before refusing... none, since the 2-slot runs are
        // page-aligned and a 3-slot request exceeds them.
        let (got3, fail3) = visits(&p, req(3, 1, 0));
        assert!(got3.is_none());
        let (got2, ok_words) = visits(&p, req(2, 2, 0));
        assert!(got2.is_some());
        costs.push((fail_words, fail3, ok_words));
    }
    assert!(costs.iter().all(|&(f, f3, _)| f == 0 && f3 == 0), "{costs:?}");
    // Success: a tree walk (depth grows with log2 of the chunks) plus one chunk's words.
    let ok: Vec<usize> = costs.iter().map(|c| c.2).collect();
    assert!(ok.iter().all(|&w| w <= 160), "word reads for a met request: {ok:?}");
}

/// The one case the summary cannot refuse outright: an aligned request whose length some free
/// runs have but whose alignment none meets (and no run has `n + period - 1` slots). It looks at
/// the chunks that have such runs, each once: bounded by their number, not by a slot walk.
#[test]
fn misaligned_runs_cost_one_scan_per_qualifying_chunk() {
    let cfg = PoolConfig::default();
    let slots = if cfg!(miri) { 2 << 10 } else { 32 << 10 };
    let p = pool(0x1000_0000, slots, cfg);
    fragment(&p);
    // A first refusal flushes the fronts (see `failing_request_cost_is_independent_of_size`).
    assert!(p.alloc(req(2, 2, 1), head(2)).is_none());
    // Free runs are slots [4k, 4k + 2): a page-aligned pair starting at an odd slot never fits.
    let (got, words) = visits(&p, req(2, 2, 1));
    assert!(got.is_none());
    // Chunks of 128 slots, 32 free runs each: at most four word reads per run.
    let chunks = slots / 128;
    assert!(words <= chunks * (32 * 4 + 16), "{words}");
}

/// Alignments sparser than a chunk (one candidate slot per 512 here, chunks of 128): every run
/// handed out meets the bits and lies in free slots inside one segment, and a refusal comes only
/// when no candidate of the model is free, in a fragmented pool. (Miri: 512 slots, 5 s.)
#[test]
fn alignments_sparser_than_chunks() {
    let (slots, phys) = (if cfg!(miri) { 512 } else { 2048 }, 0x100_0000);
    let cfg = PoolConfig { slot_size: SLOT, max_run_slots: 128, areas: 1 };
    let p = pool(phys, slots, cfg);
    let mut free = vec![true; slots];
    // Fragment: 2-slot runs everywhere, every third one freed again.
    let all: Vec<usize> = core::iter::from_fn(|| p.alloc(req(2, 1, 0), head(2))).collect();
    for (k, &i) in all.iter().enumerate() {
        if k % 3 == 0 {
            p.free(i, 2);
        } else {
            free[i..i + 2].iter_mut().for_each(|f| *f = false);
        }
    }
    let mut met = 0;
    for (n, bits) in [(2, 0), (2, 99), (1, 300), (3, 127), (2, 64), (4, 510)] {
        loop {
            let r = req(n, 512, bits);
            match p.alloc(r, head(n)) {
                Some(i) => {
                    assert!(fits(&free, phys, 128, r, i), "bad run {i}+{n} for {r:?}");
                    free[i..i + n].iter_mut().for_each(|f| *f = false);
                    met += 1;
                }
                None => {
                    assert!(!(0..slots).any(|i| fits(&free, phys, 128, r, i)), "refused {r:?} with room");
                    break;
                }
            }
        }
    }
    assert!(met >= 2, "{met} met");
}
