//! Where a layer's bytes go: `size_of` of each part of [`DmaLayer`](crate::DmaLayer)
//! (`cargo test --release -p ccdma --lib footprint -- --nocapture`; x86_64, a reference as the
//! platform):
//!
//! | part | bytes | note |
//! |---|---|---|
//! | `PoolTable` | 18,432 | `POOLS` (8) slots of 2,304: a `BouncePool` (2,176, 16 areas) and its state |
//! | `Option<Iommu>` | 6,808 | `DOMAINS` (16) domain slots of 400, list pages, reservations |
//! | `Stats` | 1,152 | 8 cache-line shards of counters |
//! | `RawRecords` | 792 | records of raw mappings used in place |
//! | `Growth` | 720 | per-pool growth state (8), counters, lock |
//! | `DeviceIds` | 272 | 64 attached device ids |
//! | `IommuCounters` | 200 | |
//! | `LivePools` | 152 | bus view of the pools |
//! | the rest | ~150 | platform, ids, policy |
//! | `DmaLayer<P>` | 28,672 | 8 pools, 16 domains (the default) |
//! | `DmaLayer<P, 2, 4>` | 9,856 | |
//! | `DmaLayer<P, 1, 0>` | 6,016 | one pool, no IOMMU: the `BouncePool` (2,176), `Stats` and `RawRecords` are most of it |

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
            ("BouncePool", size_of::<crate::pool::BouncePool<'static>>()),
            ("LivePools", size_of::<crate::growth::live::LivePools>()),
            ("Growth", size_of::<crate::growth::state::Growth<'static>>()),
            ("Stats", size_of::<crate::stats::Stats>()),
            ("Option<Iommu>", size_of::<Option<crate::iommu::domain::Iommu<'static>>>()),
            ("DomainSlot", size_of::<crate::iommu::domain::DomainSlot<'static>>()),
            ("IommuCounters", size_of::<crate::iommu::counters::IommuCounters>()),
            ("Tracker", size_of::<crate::tracker::Tracker>()),
            ("DeviceIds", size_of::<crate::device_ids::DeviceIds>()),
            ("RawRecords", size_of::<crate::stream::raw_records::RawRecords<'static>>()),
            ("Option<StaleSlotPolicy>", size_of::<Option<crate::stale_slot::StaleSlotPolicy>>()),
            ("DmaLayer<P> (8 pools, 16 domains)", size_of::<crate::DmaLayer<'static, &'static Flat>>()),
            ("DmaLayer<P, 1, 0>", size_of::<crate::DmaLayer<'static, &'static Flat, 1, 0>>()),
            ("DmaLayer<P, 2, 4>", size_of::<crate::DmaLayer<'static, &'static Flat, 2, 4>>()),
        ];
        for (n, s) in parts {
            std::println!("{n:36} {s:6}");
        }
    }
}
