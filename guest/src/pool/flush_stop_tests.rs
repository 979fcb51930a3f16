//! A refusal's flush stops once the request's run is made (`front.rs`, `AreaState::front_flush`):
//! the listed runs it did not need stay listed for hits at their sizes.
extern crate std;
use std::vec;

use super::*;

const SLOT: usize = 2048;

fn req(nslots: usize) -> RunRequest {
    RunRequest { nslots, align_mask: 0, align_bits: 0 }
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

/// Slots listed in the pool's one area.
fn listed(p: &BouncePool<'_>) -> usize {
    p.areas[0].state.lock().cached()
}

/// Segment 0 is a listed run of 40, a listed run of 48, `[88, 128)` free in the tree; segment 1
/// holds a listed run of 10 between allocated runs; the last 64 slots are free; the rest is
/// allocated. A request of 100 needs the 48 and the 40 back in the tree (merged: 128 free in a row),
/// not the 10: the flush gives them back (longest sizes first), stops there, and the 10 is still
/// listed and handed out at its size with no tree word read.
#[test]
fn a_flush_stops_once_the_run_is_made() {
    let meta = vec![SlotMeta::EMPTY; 1024].leak();
    let cfg = PoolConfig { slot_size: SLOT, max_run_slots: 128, areas: 1 };
    // SAFETY: nothing dereferences the CPU pointer (no test here asks for one).
    let p = unsafe { BouncePool::new(PhysAddr(0x10_0000), NonNull::dangling(), 1024 * SLOT, meta, cfg) }
        .expect("pool");
    let at = |n: usize| p.alloc(req(n), head(n)).expect("room");
    let (a, b, c, e) = (at(40), at(48), at(40), at(10));
    assert_eq!((a, b, c, e), (0, 40, 88, 128));
    at(118);
    for _ in 2..7 {
        at(128);
    }
    at(64);
    // The front holds at most what the tree has free (64, then 104): the 40 at 88 is given to
    // the tree, the others are listed.
    let steps = [(a, 40, 40), (c, 40, 40), (b, 48, 88), (e, 10, 98)];
    for (i, n, after) in steps {
        p.free(i, n);
        assert_eq!(listed(&p), after, "after freeing {n} at {i}");
    }
    assert_eq!(p.alloc(req(100), head(100)), Some(0), "made by giving the 48 and the 40 back");
    assert_eq!(listed(&p), 10, "the run of 10 stays listed");
    p.areas[0].state.lock().visited.set(0);
    assert_eq!(p.alloc(req(10), head(10)), Some(e));
    assert_eq!(p.areas[0].state.lock().visited.get(), 0, "no bitmap or tree word read");
}
