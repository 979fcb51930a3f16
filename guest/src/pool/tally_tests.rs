//! Unit tests of what a pool counts for the layer's statistics ([`PoolTally`]): a counted run is a
//! map at allocation and an unmap when freed, a run whose map failed after its allocation neither,
//! and runs not counted change nothing.
extern crate std;
use std::vec;

use super::*;

const SLOT: usize = 2048;

fn pool_over(meta: &mut [SlotMeta], areas: usize) -> BouncePool<'_> {
    let len = meta.len() * SLOT;
    let cfg = PoolConfig { slot_size: SLOT, max_run_slots: 64, areas };
    // SAFETY: nothing dereferences the CPU pointer (no test here calls `cpu_at`).
    unsafe { BouncePool::new(PhysAddr(0x10_0000), core::ptr::NonNull::dangling(), len, meta, cfg) }
        .expect("pool")
}

fn head(len: usize) -> NewHead {
    NewHead {
        offset: 0,
        len,
        dir: DmaDirection::ToDevice,
        attrs: DmaAttrs::NONE,
        orig: core::ptr::null_mut(),
        owner: Owner { device: 3, safe: true },
    }
}

const REQ: RunRequest = RunRequest { nslots: 2, align_mask: 0, align_bits: 0 };

fn tally(maps: u64, unmaps: u64, to_device: u64) -> PoolTally {
    PoolTally { maps, unmaps, to_device }
}

#[test]
fn counted_runs_are_maps_then_unmaps() {
    let meta = vec![SlotMeta::EMPTY; 1024].leak();
    let p = pool_over(meta, 4);
    let a = p.alloc_counted(REQ, head(3000), 0, true, None).unwrap();
    let skip = NewHead { attrs: DmaAttrs::SKIP_CPU_SYNC, ..head(4000) };
    let b = p.alloc_counted(REQ, skip, 3, true, None).unwrap();
    assert_ne!(a / 256, b / 256, "two areas count");
    assert_eq!(p.tally(), tally(2, 0, 3000));
    p.free(a, 2);
    assert_eq!(p.tally(), tally(2, 1, 3000));
    // The record says whether the pool counted it (the unmap then counts nothing more).
    let rec = p.lookup((b * SLOT) as u64, true).unwrap();
    assert!(rec.counted);
    p.free(b, 2);
    assert_eq!(p.tally(), tally(2, 2, 3000));
    // A run not counted (strict, list pages) changes nothing, allocated or freed.
    let c = p.alloc_near(REQ, head(100), 0).unwrap();
    assert!(!p.lookup((c * SLOT) as u64, false).unwrap().counted);
    p.free(c, 2);
    assert_eq!(p.tally(), tally(2, 2, 3000));
    // A second free of a counted run is refused and counts nothing.
    p.free(a, 2);
    assert_eq!(p.tally(), tally(2, 2, 3000));
}

#[test]
fn a_map_that_failed_after_its_allocation_counts_nothing() {
    let meta = vec![SlotMeta::EMPTY; 512].leak();
    let p = pool_over(meta, 2);
    let a = p.alloc_counted(REQ, head(1500), 1, true, None).unwrap();
    p.free_unmapped(a, 2, &AreaLive::default());
    assert_eq!(p.tally(), tally(0, 0, 0));
    assert_eq!(p.slots_in_use(), 0);
    // Freed already: nothing to take back.
    p.free_unmapped(a, 2, &AreaLive::default());
    assert_eq!(p.tally(), tally(0, 0, 0));
    // Not counted: freed, nothing taken back.
    let c = p.alloc_near(REQ, head(100), 1).unwrap();
    p.free_unmapped(c, 2, &AreaLive::default());
    assert_eq!((p.tally(), p.slots_in_use()), (tally(0, 0, 0), 0));
}
