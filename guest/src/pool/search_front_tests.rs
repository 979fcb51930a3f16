//! The search past the hit path (`alloc_search`) takes a listed run of exactly `n` from an area
//! other than the CPU's own before it searches that area's tree (issue 21: it tests the front's
//! class bit, `AreaState::lists`, before the out-of-line `front_pop`).
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

/// Area 0 full, a run freed in area 1 (listed there): a map from CPU 0 (whose area lists
/// nothing) gets that very run, with no bitmap or tree word of area 1 read. (Fails with
/// `lists` always false: area 1's tree hands out another run.)
#[test]
fn the_search_takes_another_areas_listed_run_before_its_tree() {
    let meta = vec![SlotMeta::EMPTY; 1024].leak();
    let cfg = PoolConfig { slot_size: SLOT, max_run_slots: 128, areas: 2 };
    // SAFETY: nothing dereferences the CPU pointer (only `cpu_at` derives from it; no test calls it).
    let p: BouncePool<'_> =
        unsafe { BouncePool::new(PhysAddr(0x10_0000), NonNull::dangling(), 1024 * SLOT, meta, cfg) }
            .expect("pool");
    assert_eq!(p.areas(), 2);
    let half = p.area_slots;
    let mut area0 = Vec::new();
    while let Some(i) = p.alloc_near(req2(), head2(), 0) {
        if i >= half {
            p.free(i, 2);
            break;
        }
        area0.push(i);
    }
    assert_eq!(area0.len(), half / 2, "area 0 full");
    let a = p.alloc_near(req2(), head2(), 1).expect("area 1");
    let _b = p.alloc_near(req2(), head2(), 1).expect("area 1");
    p.free(a, 2);
    assert_eq!(p.areas[1].state.lock().cached(), 2, "listed in area 1");
    p.areas[1].state.lock().visited.set(0);
    assert_eq!(p.alloc_near(req2(), head2(), 0), Some(a), "area 1's listed run");
    assert_eq!(p.areas[1].state.lock().visited.get(), 0, "no word of area 1's tree read");
}
