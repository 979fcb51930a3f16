//! The front's bound (`front.rs`, `front_push`): the lists hold at most a quarter of the area and
//! no more slots than its tree has free (so at most half of the area's free slots), whatever the
//! order of the frees.
extern crate std;
use std::vec;
use std::vec::Vec;

use super::*;

const SLOT: usize = 2048;

fn req2() -> RunRequest {
    RunRequest { nslots: 2, align_mask: 0, align_bits: 0 }
}

fn head2() -> NewHead {
    NewHead {
        offset: 0,
        len: 2 * SLOT,
        dir: DmaDirection::ToDevice,
        attrs: DmaAttrs::NONE,
        orig: core::ptr::null_mut(),
        owner: Owner { device: 7, safe: false },
    }
}

/// A full one-area pool of 2-slot runs, and the runs.
fn full_pool(slots: usize) -> (BouncePool<'static>, Vec<usize>) {
    let meta = vec![SlotMeta::EMPTY; slots].leak();
    let cfg = PoolConfig { slot_size: SLOT, max_run_slots: 128, areas: 1 };
    // SAFETY: nothing dereferences the CPU pointer (no test here asks for one).
    let p = unsafe { BouncePool::new(PhysAddr(0x10_0000), NonNull::dangling(), slots * SLOT, meta, cfg) }
        .expect("pool");
    let runs: Vec<usize> = (0..slots / 2).map(|_| p.alloc(req2(), head2()).expect("room")).collect();
    (p, runs)
}

/// (slots listed, slots free in the tree)
fn split(p: &BouncePool<'_>) -> (usize, usize) {
    let st = p.areas[0].state.lock();
    (st.cached(), st.free)
}

/// Frees of a full pool: the front takes runs while it holds no more than the tree has free, so
/// after 400 slots freed it holds exactly half of them; never more than the tree after any free.
#[test]
fn the_front_holds_at_most_what_the_tree_has_free() {
    let (p, runs) = full_pool(1024);
    for (k, &r) in runs.iter().take(200).enumerate() {
        p.free(r, 2);
        let (listed, tree) = split(&p);
        assert!(listed <= tree, "after {} frees: {listed} listed, {tree} free in the tree", k + 1);
        assert_eq!(listed + tree, 2 * (k + 1));
    }
    assert_eq!(split(&p), (200, 200), "half of the free slots listed");
    assert_eq!(p.slots_in_use(), 1024 - 400);
}

/// Freeing everything: the quarter-of-the-area bound holds the front at 256 of 1024 slots.
#[test]
fn the_front_holds_at_most_a_quarter_of_the_area() {
    let (p, runs) = full_pool(1024);
    for &r in &runs {
        p.free(r, 2);
    }
    assert_eq!(split(&p), (256, 768));
    assert_eq!(p.slots_in_use(), 0);
}
