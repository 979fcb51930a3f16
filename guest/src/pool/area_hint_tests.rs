//! Issue 21: a map's CPU hint picks its start area with a mask set at pool init, no division.
extern crate std;

use super::*;

const SLOT: usize = 2048;

#[test]
fn a_cpu_hint_names_an_area_of_the_pool_and_is_cpu_modulo_a_power_of_two_count() {
    for areas in 1..=MAX_AREAS {
        // One segment of 8 slots per area, so the pool has exactly `areas` areas.
        let cfg = PoolConfig { slot_size: SLOT, max_run_slots: 8, areas };
        let meta = std::vec![SlotMeta::EMPTY; cfg.slots_for(8 * areas * SLOT)].leak();
        // SAFETY: nothing dereferences the CPU pointer (no test here asks for one).
        let p: BouncePool<'static> =
            unsafe { BouncePool::new(PhysAddr(0x10_0000), NonNull::dangling(), 8 * areas * SLOT, meta, cfg) }
                .expect("pool");
        assert_eq!(p.area_count, areas);
        let mut seen = [false; MAX_AREAS];
        for cpu in (0..4 * MAX_AREAS).chain([usize::MAX, usize::MAX - 1, 1 << 40]) {
            let a = p.area_of_cpu(cpu);
            assert!(a < areas, "{areas} areas: cpu {cpu} -> area {a}");
            if areas.is_power_of_two() {
                assert_eq!(a, cpu % areas, "{areas} areas: cpu {cpu}");
            }
            seen[a] = true;
        }
        assert!(seen[..areas].iter().all(|&s| s), "{areas} areas: every area some CPU's");
    }
}
