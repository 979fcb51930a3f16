//! Issue 20: a layer over `&Platform` (what every kernel and firmware here builds: `DmaLayer<'static,
//! &'static QemuPlatform>`) must call the platform's interrupt hooks. The blanket `impl Platform for
//! &T` forwards each method to `T`; a hook it leaves out silently falls back to the default (no
//! masking), and the interrupt contract is broken on exactly the layers that matter.

use std::sync::atomic::{AtomicU64, Ordering};

use ccdma::{DeviceConfig, DmaMask, InterruptState};
use ccdma_tests::hooked::{hooked_layer, InterruptHooks};

/// Interrupt hooks that count.
#[derive(Default)]
struct Counting {
    masks: AtomicU64,
    restores: AtomicU64,
}

impl InterruptHooks for Counting {
    fn mask(&self) -> InterruptState {
        InterruptState(self.masks.fetch_add(1, Ordering::Relaxed) as usize)
    }
    fn restore(&self, _: InterruptState) {
        self.restores.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn a_layer_over_a_reference_masks_interrupts_through_the_platform() {
    let (plat, layer) = hooked_layer(Counting::default());
    let plat = &plat.hooks;
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    let before = plat.masks.load(Ordering::Relaxed);
    let buf = [7u8; 256];
    let m = layer.on(&dev).map_to_device(&buf).unwrap();
    m.unmap().unwrap();
    let (masks, restores) = (plat.masks.load(Ordering::Relaxed), plat.restores.load(Ordering::Relaxed));
    assert!(masks > before, "map and unmap through &Platform never called mask_interrupts ({masks} calls)");
    assert_eq!(masks, restores, "every mask is restored");
}
