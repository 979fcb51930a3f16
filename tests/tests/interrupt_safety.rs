//! Interrupt safety (issue 20): a map made by an interrupt handler that interrupted a map on the same
//! CPU must not deadlock.
//!
//! The host stands in for one CPU: a signal handler is the interrupt. The main thread maps and unmaps
//! in a loop through a pool of one area (one lock); a second thread sends it a signal every few
//! microseconds; the handler maps and unmaps too. Without interrupt masking, a signal that lands
//! while the main thread holds the area lock spins forever in the handler (the lock's holder cannot
//! run until the handler returns). With the platform's interrupt hooks (`Platform::mask_interrupts`
//! / `restore_interrupts`, here blocking the signal as a kernel disables IRQs), the handler runs only
//! between ccdma's calls. A watchdog turns a deadlock into a failed test.
//!
//! The platform here is its own, not the model's: the model takes std locks in `cpu_ptr`, which a
//! signal handler must not do. This one is lock-free.
//!
//! To watch the deadlock this test guards against, run it with `CCDMA_IRQ_NO_MASK=1`: the platform
//! then leaves the signal unmasked (what the default hooks do) and the watchdog fails the run.

#![cfg(target_os = "linux")]

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ccdma::{
    Device, DeviceConfig, DmaAttrs, DmaDirection, DmaLayer, DmaMask, InterruptState, MemorySharing,
    PartialSharing, PhysAddr, PhysMemory, Platform, PoolConfig, SlotMeta,
};

const RAM: usize = 16 << 20;
const POOL_AT: u64 = 1 << 20;
const POOL_LEN: usize = 1 << 20;
const MAIN_BUF: u64 = 8 << 20;
const IRQ_BUF: u64 = 9 << 20;
const LEN: usize = 4096;

/// Guest RAM as one leaked, page-aligned host allocation: phys = offset.
struct IrqPlatform {
    base: usize,
    /// Block the signal around ccdma's calls (the contract kept) or not (today's default).
    mask: bool,
}

impl MemorySharing for IrqPlatform {
    fn share(&self, _: PhysAddr, _: u64) -> Result<(), PartialSharing> {
        Ok(())
    }
    fn unshare(&self, _: PhysAddr, _: u64) -> Result<(), PartialSharing> {
        Ok(())
    }
}

// SAFETY: `[base, base + RAM)` is one live allocation, leaked, so every pointer handed out stays
// valid for the process; phys is the offset into it, and virt_to_phys is its exact inverse.
unsafe impl PhysMemory for IrqPlatform {
    fn cpu_ptr(&self, phys: PhysAddr, len: usize) -> Option<NonNull<u8>> {
        let end = phys.0.checked_add(len as u64)?;
        (end <= RAM as u64).then(|| NonNull::new((self.base + phys.0 as usize) as *mut u8)).flatten()
    }
    fn virt_to_phys(&self, ptr: *const u8, len: usize) -> Option<PhysAddr> {
        let off = (ptr as usize).checked_sub(self.base)?;
        (off.checked_add(len)? <= RAM).then_some(PhysAddr(off as u64))
    }
    fn ram_end(&self) -> PhysAddr {
        PhysAddr(RAM as u64)
    }
}

impl Platform for IrqPlatform {
    fn is_confidential(&self) -> bool {
        true
    }
    fn mask_interrupts(&self) -> InterruptState {
        MASKS.fetch_add(1, Ordering::Relaxed);
        DEPTH.fetch_add(1, Ordering::Relaxed);
        if !self.mask {
            return InterruptState(0);
        }
        // SAFETY: sigset_t values are plain data initialised by sigemptyset/sigaddset before use;
        // pthread_sigmask only changes this thread's mask and writes the old one into `old`.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            InterruptState(libc::sigismember(&old, libc::SIGUSR1) as usize)
        }
    }
    fn restore_interrupts(&self, saved: InterruptState) {
        DEPTH.fetch_sub(1, Ordering::Relaxed);
        if !self.mask || saved.0 != 0 {
            return; // masked before this call: stays masked (nesting)
        }
        // SAFETY: as in mask_interrupts.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
    }
}

static LAYER: AtomicPtr<DmaLayer<'static, IrqPlatform>> = AtomicPtr::new(std::ptr::null_mut());
static DEVICE: AtomicPtr<Device> = AtomicPtr::new(std::ptr::null_mut());
/// Calls of mask_interrupts, and masks not yet restored (per process: the tests run one at a time
/// through TEST_LOCK).
static MASKS: AtomicU64 = AtomicU64::new(0);
static DEPTH: AtomicI64 = AtomicI64::new(0);
static TEST_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
static IN_HANDLER_MAPS: AtomicU64 = AtomicU64::new(0);
static HANDLER_ERRORS: AtomicU64 = AtomicU64::new(0);

/// Map and unmap one buffer; false when the layer refused.
fn map_unmap(layer: &DmaLayer<'static, IrqPlatform>, dev: &Device, phys: u64) -> bool {
    // SAFETY: `[phys, phys + LEN)` is RAM of the leaked allocation that only this caller (the main
    // loop or, for IRQ_BUF, the handler) uses, and it is unmapped before the next use.
    unsafe {
        match layer.map_phys(dev, PhysAddr(phys), LEN, DmaDirection::ToDevice, DmaAttrs::NONE) {
            Ok(bus) => layer.unmap(dev, bus, LEN, DmaDirection::ToDevice, DmaAttrs::NONE).is_ok(),
            Err(_) => false,
        }
    }
}

extern "C" fn on_signal(_: libc::c_int) {
    let (layer, dev) = (LAYER.load(Ordering::Acquire), DEVICE.load(Ordering::Acquire));
    if layer.is_null() || dev.is_null() {
        return;
    }
    // SAFETY: both point to leaked values set once before the signals start.
    let (layer, dev) = unsafe { (&*layer, &*dev) };
    if map_unmap(layer, dev, IRQ_BUF) {
        IN_HANDLER_MAPS.fetch_add(1, Ordering::Relaxed);
    } else {
        HANDLER_ERRORS.fetch_add(1, Ordering::Relaxed);
    }
}

/// A leaked layer over fresh RAM with one pool of one area, and an attached 32-bit device.
fn layer_with_one_area(mask: bool) -> (&'static DmaLayer<'static, IrqPlatform>, &'static Device) {
    let ram = vec![0u8; RAM + 4096].leak();
    let base = (ram.as_mut_ptr() as usize + 4095) & !4095;
    let platform = IrqPlatform { base, mask };
    let layer: &'static mut DmaLayer<'static, IrqPlatform> = Box::leak(Box::new(DmaLayer::new(platform)));
    // One area: every map takes the same lock, as a full pool's last area does.
    let cfg = PoolConfig { areas: 1, ..PoolConfig::default() };
    let meta: &'static mut [SlotMeta] = vec![SlotMeta::EMPTY; cfg.slots_for(POOL_LEN)].leak();
    // SAFETY: the pool's range is RAM of the leaked allocation that nothing else uses.
    unsafe { layer.add_pool(PhysAddr(POOL_AT), POOL_LEN, meta, cfg) }.expect("pool");
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::new(32).unwrap())).expect("attach");
    (layer, Box::leak(Box::new(dev)))
}

/// Run the main loop for `rounds` maps with a signal storm; returns (handler maps, main maps) or
/// exits the process when no progress is made for 10 s (a deadlock).
fn storm(mask: bool, rounds: u64) -> (u64, u64) {
    let (layer, dev) = layer_with_one_area(mask);
    LAYER.store(layer as *const _ as *mut _, Ordering::Release);
    DEVICE.store(dev as *const _ as *mut _, Ordering::Release);

    // SAFETY: installing a handler for SIGUSR1, which nothing else in this test binary uses; the
    // handler only touches atomics and the leaked layer.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    let progress = Box::leak(Box::new(AtomicU64::new(0)));
    let stop = Box::leak(Box::new(AtomicBool::new(false)));
    let progress_ref: &'static AtomicU64 = progress;
    let stop_ref: &'static AtomicBool = stop;
    let sender = std::thread::spawn(move || {
        let mut last = (Instant::now(), 0);
        while !stop_ref.load(Ordering::Relaxed) {
            // SAFETY: `me` is the main test thread, alive until it sets `stop` and joins us.
            unsafe { libc::pthread_kill(me, libc::SIGUSR1) };
            std::thread::sleep(Duration::from_micros(20));
            let now = progress_ref.load(Ordering::Relaxed);
            if now != last.1 {
                last = (Instant::now(), now);
            } else if last.0.elapsed() > Duration::from_secs(10) {
                eprintln!(
                    "interrupt_safety: no progress for 10 s after {now} maps (mask_interrupts={mask}): \
                     the handler spins on a lock the interrupted map holds (deadlock)"
                );
                std::process::exit(101);
            }
        }
    });
    let mut main_maps = 0;
    for _ in 0..rounds {
        if map_unmap(layer, dev, MAIN_BUF) {
            main_maps += 1;
        }
        progress.fetch_add(1, Ordering::Relaxed);
    }
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    // SAFETY: restoring the default disposition; no signal is in flight (the sender has stopped).
    unsafe { libc::signal(libc::SIGUSR1, libc::SIG_DFL) };
    (IN_HANDLER_MAPS.load(Ordering::Relaxed), main_maps)
}

#[test]
fn a_map_from_an_interrupt_that_interrupted_a_map_completes() {
    let _serial = TEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mask = std::env::var_os("CCDMA_IRQ_NO_MASK").is_none();
    let (handler, main) = storm(mask, 200_000);
    assert_eq!(main, 200_000, "every map of the interrupted thread succeeded");
    assert!(handler > 100, "the handler mapped while the thread was mapping ({handler} maps)");
    assert_eq!(HANDLER_ERRORS.load(Ordering::Relaxed), 0, "no map in the handler was refused");
    // SAFETY: the storm is over; the layer is only read.
    let layer = unsafe { &*LAYER.load(Ordering::Acquire) };
    assert_eq!(layer.stats().slots_in_use, 0, "nothing left mapped");
}

/// Every call that can take a lock masks once and restores once, on success and on every error.
#[test]
fn every_locking_call_masks_and_restores_on_every_path() {
    let _serial = TEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (layer, dev) = layer_with_one_area(false);
    let calls = |f: &dyn Fn()| {
        let before = MASKS.load(Ordering::Relaxed);
        f();
        assert_eq!(DEPTH.load(Ordering::Relaxed), 0, "every mask restored");
        MASKS.load(Ordering::Relaxed) - before
    };
    let to = DmaDirection::ToDevice;
    // SAFETY: MAIN_BUF is RAM of the leaked allocation this test alone uses; the mapping is
    // unmapped before the test ends (the same holds for each raw call below).
    let bus = unsafe { layer.map_phys(dev, PhysAddr(MAIN_BUF), LEN, to, DmaAttrs::NONE) }.unwrap();
    assert!(
        calls(&|| {
            // SAFETY: as above.
            unsafe { layer.sync_for_device(dev, bus, 0, LEN, to) }.unwrap()
        }) >= 1
    );
    assert!(
        calls(&|| {
            // SAFETY: as above; a wrong length is refused and changes nothing.
            unsafe { layer.unmap(dev, bus, LEN - 1, to, DmaAttrs::NONE) }.unwrap_err();
        }) >= 1
    );
    assert!(
        calls(&|| {
            // SAFETY: as above.
            unsafe { layer.unmap(dev, bus, LEN, to, DmaAttrs::NONE) }.unwrap()
        }) >= 1
    );
    // Refused before any lock (no mask needed); balanced all the same.
    calls(&|| {
        // SAFETY: as above; a zero length is refused.
        unsafe { layer.map_phys(dev, PhysAddr(MAIN_BUF), 0, to, DmaAttrs::NONE) }.unwrap_err();
    });
    assert!(
        calls(&|| {
            // SAFETY: as above; longer than the largest run: refused.
            unsafe { layer.map_phys(dev, PhysAddr(MAIN_BUF), 2 << 20, to, DmaAttrs::NONE) }.unwrap_err();
        }) >= 1
    );
    assert!(
        calls(&|| {
            let d = layer.attach(DeviceConfig::new(2, DmaMask::new(32).unwrap())).unwrap();
            layer.detach(d).unwrap();
        }) >= 2
    );
    assert!(calls(&|| assert!(layer.last_pool_full().is_none())) >= 1);
    assert_eq!(layer.stats().slots_in_use, 0);
}
