//! Where a layer's bytes go: `size_of` of each part of [`DmaLayer`](crate::DmaLayer)
//! (x86_64, a reference as the platform; main daf1766). The figures below are a user's build:
//! `size_of` in a program that depends on ccdma. `cargo test --release -p ccdma --lib footprint --
//! --nocapture` prints the same parts as built for the crate's own tests, where each area carries a
//! test-only counter and takes 256 bytes, not 128 (`BouncePool` 4,224, `DmaLayer<P>` 45,184,
//! `DmaLayer<P, 1, 0, 2>` 1,920); the parts without areas print the same.
//!
//! | part | bytes | note |
//! |---|---|---|
//! | `PoolTable` | 18,432 | `POOLS` (8) slots of 2,304: a `BouncePool` (2,176: 128 + `AREAS` (16) areas of 128) and its state (128) |
//! | `Option<Iommu>` | 6,976 | `DOMAINS` (16) domain slots of 400 (216 in a one-pool layer: its `LivePools<1>` and its set-up result, `DomainInfo<1>`) and a global reservation each (16); config 40, list pages 128 |
//! | `Stats` | 1,152 | one 128-byte shard of hot counters per pool slot (8), the rest once |
//! | `RawRecords` | 792 | 4 records of raw mappings per pool slot, used in place |
//! | `Growth` | 720 | grown-pool state per pool slot, counters, config, last pool-full report, lock |
//! | `DeviceIds` | 272 | 8 attached device ids per pool slot (64) |
//! | `IommuCounters` | 216 | 40 without `papr-tce` and `native-iommu` |
//! | `LivePools` | 144 | bus view of the pools, sized by `POOLS` (24 for one pool) |
//! | the rest | ~150 | platform, ids, policy |
//! | `DmaLayer<P>` | 28,800 | 8 pools of 16 areas, 16 domains (the default) |
//! | `DmaLayer<P, 2, 4>` | 7,168 | 16 areas |
//! | `DmaLayer<P, 1, 0>` | 3,456 | `PoolTable<1>` 2,304, `Growth` 272, `Stats` 256, `Iommu<0>` 192 |
//! | `DmaLayer<P, 1, 0, 4>` | 1,920 | `PoolTable<1, 4>` 768 |
//! | `DmaLayer<P, 1, 0, 2>` | 1,664 | `PoolTable<1, 2>` 512 (the small layer `tests/tests/layer_size.rs` pins; 8 devices) |
//! | `DmaLayer<P, 1, 0, 1>` | 1,536 | |
//! | `DmaLayer<P, 1, 4, 2>` | 2,688 | four domains of 216 and four global reservations (`tests/tests/layer_size_domains_follow_pools.rs` pins it) |
//! | `DmaLayer<P, 1, 0, 2>`, no default features | 1,408 | `Growth` 96, `IommuCounters` 40 |
//!
//! In `DmaLayer<P, 1, 0, 2>` the rest is `IommuCounters` 216, `Iommu<0>` 192 (its config and list
//! pages: a part that is 0 bytes when `DOMAINS` is 0 and the same otherwise is no type stable Rust
//! can name without a bound on every `impl`), `RawRecords` 120, `DeviceIds` 48 and `LivePools<1>` 24.
//! Sizes go in steps of 128 (the areas' and the stats shards' cache-line alignment).

#[cfg(test)]
mod tests {
    extern crate std;
    use core::mem::size_of;
    use core::ptr::NonNull;

    use crate::{MemorySharing, PartialSharing, PhysAddr, PhysMemory, Platform};

    struct Flat;
    impl MemorySharing for Flat {
        fn share(&self, _: PhysAddr, _: u64) -> Result<(), PartialSharing> {
            Ok(())
        }
        fn unshare(&self, _: PhysAddr, _: u64) -> Result<(), PartialSharing> {
            Ok(())
        }
    }
    // SAFETY: never answers with memory.
    unsafe impl PhysMemory for Flat {
        fn cpu_ptr(&self, _: PhysAddr, _: usize) -> Option<NonNull<u8>> {
            None
        }
        fn virt_to_phys(&self, _: *const u8, _: usize) -> Option<PhysAddr> {
            None
        }
        fn ram_end(&self) -> PhysAddr {
            PhysAddr(0)
        }
    }
    impl Platform for Flat {
        fn is_confidential(&self) -> bool {
            false
        }
    }

    #[test]
    fn print_layer_parts() {
        let parts: &[(&str, usize)] = &[
            ("PoolTable", size_of::<crate::growth::table::PoolTable<'static>>()),
            ("PoolTable<1>", size_of::<crate::growth::table::PoolTable<'static, 1>>()),
            ("BouncePool", size_of::<crate::pool::BouncePool<'static>>()),
            ("LivePools", size_of::<crate::growth::live::LivePools>()),
            ("LivePools<1>", size_of::<crate::growth::live::LivePools<1>>()),
            ("Growth<8>", size_of::<crate::growth::state::Growth<'static, 8>>()),
            ("Growth<1>", size_of::<crate::growth::state::Growth<'static, 1>>()),
            ("Stats<8>", size_of::<crate::stats::Stats<8>>()),
            ("Stats<1>", size_of::<crate::stats::Stats<1>>()),
            ("Option<Iommu>", size_of::<Option<crate::iommu::domain::Iommu<'static>>>()),
            ("Option<Iommu<0>>", size_of::<Option<crate::iommu::domain::Iommu<'static, 0>>>()),
            ("IommuConfig", size_of::<crate::iommu::IommuConfig>()),
            ("Option<ListPages>", size_of::<Option<crate::iommu::list_pages::ListPages>>()),
            ("DomainSlot", size_of::<crate::iommu::domain::DomainSlot<'static>>()),
            ("DomainSlot<1>", size_of::<crate::iommu::domain::DomainSlot<'static, 1>>()),
            ("IommuCounters", size_of::<crate::iommu::counters::IommuCounters>()),
            ("Tracker", size_of::<crate::tracker::Tracker>()),
            ("DeviceIds<8>", size_of::<crate::device_ids::DeviceIds<8>>()),
            ("DeviceIds<1>", size_of::<crate::device_ids::DeviceIds<1>>()),
            ("RawRecords<8>", size_of::<crate::stream::raw_records::RawRecords<'static, 8>>()),
            ("RawRecords<1>", size_of::<crate::stream::raw_records::RawRecords<'static, 1>>()),
            ("Option<StaleSlotPolicy>", size_of::<Option<crate::stale_slot::StaleSlotPolicy>>()),
            ("DmaLayer<P> (8 pools, 16 domains)", size_of::<crate::DmaLayer<'static, &'static Flat>>()),
            ("DmaLayer<P, 1, 0>", size_of::<crate::DmaLayer<'static, &'static Flat, 1, 0>>()),
            ("BouncePool<'_, 1>", size_of::<crate::pool::BouncePool<'static, 1>>()),
            ("BouncePool<'_, 4>", size_of::<crate::pool::BouncePool<'static, 4>>()),
            ("PoolTable<1, 2>", size_of::<crate::growth::table::PoolTable<'static, 1, 2>>()),
            ("PoolTable<1, 4>", size_of::<crate::growth::table::PoolTable<'static, 1, 4>>()),
            ("DmaLayer<P, 1, 0, 1>", size_of::<crate::DmaLayer<'static, &'static Flat, 1, 0, 1>>()),
            ("DmaLayer<P, 1, 0, 2>", size_of::<crate::DmaLayer<'static, &'static Flat, 1, 0, 2>>()),
            ("DmaLayer<P, 1, 0, 4>", size_of::<crate::DmaLayer<'static, &'static Flat, 1, 0, 4>>()),
            ("DmaLayer<P, 1, 4, 2>", size_of::<crate::DmaLayer<'static, &'static Flat, 1, 4, 2>>()),
            ("DmaLayer<P, 2, 4>", size_of::<crate::DmaLayer<'static, &'static Flat, 2, 4>>()),
        ];
        for (n, s) in parts {
            std::println!("{n:36} {s:6}");
        }
    }
}
