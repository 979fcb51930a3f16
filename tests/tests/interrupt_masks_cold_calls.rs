//! Issue 20, the interrupt contract on the cold calls: attach, detach, coherent buffers,
//! scatter-gather lists, growth_tick and the bus-range queries each mask interrupts through the
//! platform before taking a lock and restore exactly the state their mask returned (calls nest:
//! restores come in the reverse order of masks). These calls mask through out-of-line helpers over
//! `dyn Platform` (guest/src/interrupts.rs, `ColdMasked`), not the inline guard of map and unmap.

use std::sync::Mutex;

use ccdma::sg::SgEntry;
use ccdma::{DeviceConfig, DmaAttrs, DmaDirection, DmaMask, InterruptState, PhysAddr};
use ccdma_tests::hooked::{hooked_layer, InterruptHooks};

/// Interrupt hooks that hand out distinct states and check each restore.
#[derive(Default)]
struct Nesting {
    log: Mutex<Hooks>,
}

#[derive(Default)]
struct Hooks {
    /// States handed out by masks not yet restored, innermost last.
    open: Vec<usize>,
    next: usize,
    masks: u64,
    /// Restores of a state that was not the innermost open one (or of none).
    wrong: u64,
}

impl InterruptHooks for Nesting {
    fn mask(&self) -> InterruptState {
        let mut h = self.log.lock().unwrap();
        h.next += 1;
        let s = 0x1000 + h.next;
        h.open.push(s);
        h.masks += 1;
        InterruptState(s)
    }
    fn restore(&self, saved: InterruptState) {
        let mut h = self.log.lock().unwrap();
        if h.open.pop() != Some(saved.0) {
            h.wrong += 1;
        }
    }
}

/// Run `call`; it must have masked at least once and restored every mask, innermost first.
fn masks_and_restores<T>(plat: &Nesting, what: &str, call: impl FnOnce() -> T) -> T {
    let before = plat.log.lock().unwrap().masks;
    let r = call();
    let h = plat.log.lock().unwrap();
    assert!(h.masks > before, "{what}: no mask_interrupts");
    assert!(h.open.is_empty(), "{what}: {} mask(s) never restored", h.open.len());
    assert_eq!(h.wrong, 0, "{what}: a restore was handed a state its mask did not return");
    r
}

#[test]
fn every_cold_call_masks_and_restores_what_its_mask_returned() {
    let (plat, layer) = hooked_layer(Nesting::default());
    let plat = &plat.hooks;

    let dev =
        masks_and_restores(plat, "attach", || layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap());
    // SAFETY: [32 MiB, 32 MiB + 4 KiB) is model RAM nothing else uses.
    let buf = masks_and_restores(plat, "alloc_coherent", || unsafe {
        layer.alloc_coherent(&dev, PhysAddr(0x200_0000), 1).unwrap()
    });
    masks_and_restores(plat, "free_coherent", || layer.free_coherent(&dev, buf).ok().unwrap());
    let mut data = vec![5u8; 3000];
    let mut list = [SgEntry::new(&mut data)];
    masks_and_restores(plat, "map_sg", || {
        layer.map_sg(&dev, &mut list, DmaDirection::Bidirectional, DmaAttrs::NONE).unwrap()
    });
    masks_and_restores(plat, "unmap_sg", || {
        layer.unmap_sg(&dev, &mut list, DmaDirection::Bidirectional, DmaAttrs::NONE).unwrap()
    });
    masks_and_restores(plat, "live_bus_ranges", || layer.live_bus_ranges());
    masks_and_restores(plat, "growth_tick", || layer.growth_tick());
    masks_and_restores(plat, "detach", || layer.detach(dev).ok().unwrap());
}
