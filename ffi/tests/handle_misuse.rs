//! Handle safety of the C interface (issue 18, item 9): a handle that is dead (freed, detached,
//! finished), stale (its memory reused), of another layer or device, or never initialised, and
//! memory that already holds a live handle, are `CCDMA_ERR_MISUSE` and change nothing: no share or
//! unshare, no leaked list, no device fault in the model.

mod model;

use std::ffi::{c_int, c_void};

use ccdma_ffi::*;
use ccdma_hv_model::HvConfig;
use model::{CohMem, DevMem, Guest, LayerMem, SgMem, POOL_LEN};

const GIB: u64 = 1 << 30;
const POOL_PAGES: u64 = (POOL_LEN / CCDMA_PAGE_SIZE) as u64;

fn guest() -> Guest {
    Guest::new(HvConfig::tdx(2 * GIB))
}

/// Allocate a one-page coherent buffer for `dev` at `phys` into `mem`: (code, bus, cpu).
fn alloc(g: &Guest, dev: *mut ccdma_device, phys: u64, mem: &mut CohMem) -> (c_int, u64, *mut c_void) {
    let (mut cpu, mut bus) = (std::ptr::null_mut(), 0u64);
    // SAFETY: an initialised layer and device; the page is the test's; out pointers valid.
    let rc = unsafe {
        ccdma_alloc_coherent(
            g.layer(),
            dev,
            phys,
            1,
            mem.0.as_mut_ptr().cast(),
            CCDMA_COHERENT_SIZE,
            &mut cpu,
            &mut bus,
        )
    };
    (rc, bus, cpu)
}

fn free(g: &Guest, dev: *mut ccdma_device, mem: &mut CohMem) -> c_int {
    // SAFETY: pointers to live test memory; the interface checks the handle.
    unsafe { ccdma_free_coherent(g.layer(), dev, mem.ptr()) }
}

fn map(g: &Guest, dev: *mut ccdma_device, ptr: *mut u8, len: usize) -> (c_int, u64) {
    let mut bus = 0u64;
    // SAFETY: the buffer is the test's, lent until unmap.
    let rc = unsafe { ccdma_map(g.layer(), dev, ptr.cast(), len, CCDMA_TO_DEVICE, &mut bus) };
    (rc, bus)
}

fn unmap(g: &Guest, dev: *mut ccdma_device, bus: u64, len: usize) -> c_int {
    // SAFETY: the test's own mapping.
    unsafe { ccdma_unmap(g.layer(), dev, bus, len, CCDMA_TO_DEVICE) }
}

fn detach(g: &Guest, dev: *mut ccdma_device) -> c_int {
    // SAFETY: pointers to live test memory; the interface checks the handle.
    unsafe { ccdma_detach(g.layer(), dev) }
}

fn map_sg(g: &Guest, dev: *mut ccdma_device, bufs: &[(*mut u8, usize)], entries: &mut SgMem) -> c_int {
    let sg: Vec<ccdma_sg_in> = bufs.iter().map(|&(ptr, len)| ccdma_sg_in { ptr: ptr.cast(), len }).collect();
    let mut segs = vec![ccdma_segment { bus: 0, len: 0 }; sg.len()];
    let mut nsegs = 0usize;
    // SAFETY: buffers lent until unmap; entry memory of the stated size; out pointers valid.
    unsafe {
        ccdma_map_sg(
            g.layer(),
            dev,
            sg.as_ptr(),
            sg.len(),
            CCDMA_TO_DEVICE,
            entries.ptr(),
            std::mem::size_of::<SgMem>(),
            segs.as_mut_ptr(),
            &mut nsegs,
        )
    }
}

fn unmap_sg(g: &Guest, dev: *mut ccdma_device, entries: &mut SgMem, n: usize) -> c_int {
    // SAFETY: the test's list memory; the interface checks the handle.
    unsafe { ccdma_unmap_sg(g.layer(), dev, entries.ptr(), n, CCDMA_TO_DEVICE) }
}

fn no_faults(g: &Guest) {
    assert!(g.hv.faults().is_empty(), "device or CPU faults in the model: {:?}", g.hv.faults());
}

#[test]
fn freeing_a_coherent_buffer_twice_is_misuse_and_changes_nothing() {
    let g = guest();
    let mut d = DevMem::new();
    assert_eq!(g.attach(&mut d, 1, 64), CCDMA_OK);
    let (phys, _) = g.buffer(4096);
    let mut h = CohMem::new();
    assert_eq!(alloc(&g, d.ptr(), phys, &mut h).0, CCDMA_OK);
    assert_eq!(g.hv.shared_pages(), POOL_PAGES + 1);
    assert_eq!(free(&g, d.ptr(), &mut h), CCDMA_OK);
    let unshares = g.hv.calls().counts();
    assert_eq!(free(&g, d.ptr(), &mut h), CCDMA_ERR_MISUSE, "a second free of the same handle");
    assert_eq!(g.hv.calls().counts(), unshares, "the refused free made no platform call");
    assert_eq!(g.hv.shared_pages(), POOL_PAGES);
    assert_eq!(detach(&g, d.ptr()), CCDMA_OK);
    no_faults(&g);
}

#[test]
fn a_stale_free_after_the_pages_became_a_live_ring_is_misuse_and_the_ring_stays_shared() {
    let g = guest();
    let mut d = DevMem::new();
    assert_eq!(g.attach(&mut d, 2, 64), CCDMA_OK);
    let (phys, _) = g.buffer(4096);
    let (mut old, mut ring) = (CohMem::new(), CohMem::new());
    assert_eq!(alloc(&g, d.ptr(), phys, &mut old).0, CCDMA_OK);
    assert_eq!(free(&g, d.ptr(), &mut old), CCDMA_OK);
    // The same page, now a ring the device reads, in another handle.
    let (rc, bus, cpu) = alloc(&g, d.ptr(), phys, &mut ring);
    assert_eq!(rc, CCDMA_OK);
    // SAFETY: the coherent buffer's CPU pointer, one page.
    unsafe { cpu.cast::<u8>().write_bytes(0x5A, 64) };
    assert_eq!(g.hv.device(2).read(bus, 64).expect("ring readable"), vec![0x5A; 64]);
    assert_eq!(free(&g, d.ptr(), &mut old), CCDMA_ERR_MISUSE, "the stale handle");
    assert_eq!(g.hv.shared_pages(), POOL_PAGES + 1, "the ring stays shared");
    assert_eq!(g.hv.device(2).read(bus, 64).expect("ring still readable"), vec![0x5A; 64]);
    assert_eq!(free(&g, d.ptr(), &mut ring), CCDMA_OK);
    assert_eq!(detach(&g, d.ptr()), CCDMA_OK);
    no_faults(&g);
}

#[test]
fn detaching_twice_is_misuse_and_the_stale_device_cannot_map() {
    let g = guest();
    let mut d = DevMem::new();
    assert_eq!(g.attach(&mut d, 3, 64), CCDMA_OK);
    assert_eq!(detach(&g, d.ptr()), CCDMA_OK);
    assert_eq!(detach(&g, d.ptr()), CCDMA_ERR_MISUSE, "detach twice");
    let (_, buf) = g.buffer(512);
    let shares = g.hv.calls().counts();
    assert_eq!(map(&g, d.ptr(), buf, 512).0, CCDMA_ERR_MISUSE, "map on a detached device");
    let (phys, _) = g.buffer(4096);
    let mut h = CohMem::new();
    assert_eq!(alloc(&g, d.ptr(), phys, &mut h).0, CCDMA_ERR_MISUSE, "coherent on a detached device");
    let mut sg = SgMem::new();
    assert_eq!(map_sg(&g, d.ptr(), &[(buf, 512)], &mut sg), CCDMA_ERR_MISUSE, "list on a detached device");
    // SAFETY: test memory; the interface checks the handle.
    unsafe {
        assert_eq!(ccdma_device_path(g.layer(), d.ptr()), CCDMA_ERR_MISUSE);
        assert_eq!(ccdma_accept(g.layer(), d.ptr()), CCDMA_ERR_MISUSE);
        assert_eq!(ccdma_revoke(g.layer(), d.ptr()), CCDMA_ERR_MISUSE);
    }
    assert_eq!(g.hv.calls().counts(), shares, "nothing reached the platform");
    assert_eq!(g.hv.shared_pages(), POOL_PAGES);
    // Attached again into the same memory, it works.
    assert_eq!(g.attach(&mut d, 3, 64), CCDMA_OK);
    let (rc, bus) = map(&g, d.ptr(), buf, 512);
    assert_eq!(rc, CCDMA_OK);
    assert_eq!(unmap(&g, d.ptr(), bus, 512), CCDMA_OK);
    assert_eq!(detach(&g, d.ptr()), CCDMA_OK);
    no_faults(&g);
}

#[test]
fn fini_twice_is_misuse_and_a_finished_layer_refuses_every_call() {
    let g = guest();
    // SAFETY: an initialised layer, no other user.
    assert_eq!(unsafe { ccdma_layer_fini(g.layer()) }, CCDMA_OK);
    assert_eq!(g.hv.shared_pages(), 0, "the pool is private again");
    let calls = g.hv.calls().counts();
    // SAFETY: test memory; the interface checks the handle.
    unsafe {
        assert_eq!(ccdma_layer_fini(g.layer()), CCDMA_ERR_MISUSE, "fini twice");
        assert_eq!(ccdma_release_pools(g.layer()), CCDMA_ERR_MISUSE);
        assert_eq!(ccdma_disable_iommu(g.layer()), CCDMA_ERR_MISUSE);
        let mut meta = vec![0u64; 64];
        assert_eq!(
            ccdma_add_pool(g.layer(), 0x20_0000, 8192, meta.as_mut_ptr().cast(), 512),
            CCDMA_ERR_MISUSE
        );
    }
    let mut d = DevMem::new();
    assert_eq!(g.attach(&mut d, 4, 64), CCDMA_ERR_MISUSE, "attach to a finished layer");
    assert_eq!(g.hv.calls().counts(), calls, "nothing reached the platform");
    assert_eq!(g.hv.shared_pages(), 0);
    no_faults(&g);
}

#[test]
fn a_device_left_attached_at_fini_is_refused_by_the_next_layer_in_the_same_memory() {
    let g = guest();
    let mut d = DevMem::new();
    assert_eq!(g.attach(&mut d, 5, 64), CCDMA_OK);
    // SAFETY: an initialised layer, no other user.
    let rc = unsafe { ccdma_layer_fini(g.layer()) };
    if rc == CCDMA_OK {
        // A new layer in the same memory, with the same pool: the old device is not its device.
        let t = model::table(&g.hv);
        // SAFETY: the test's layer memory, finished above; the table forwards to the model.
        assert_eq!(unsafe { ccdma_layer_init(g.layer().cast(), CCDMA_LAYER_SIZE, &t) }, CCDMA_OK);
        let (_, buf) = g.buffer(512);
        assert_eq!(map(&g, d.ptr(), buf, 512).0, CCDMA_ERR_MISUSE, "a device of the previous layer");
        assert_eq!(detach(&g, d.ptr()), CCDMA_ERR_MISUSE);
    } else {
        assert_eq!(rc, CCDMA_ERR_BUSY, "fini with a device attached");
        assert_eq!(detach(&g, d.ptr()), CCDMA_OK);
    }
    no_faults(&g);
}

#[test]
fn map_sg_into_the_memory_of_a_live_list_is_misuse_and_the_first_list_stays_unmappable() {
    let g = guest();
    let mut d = DevMem::new();
    assert_eq!(g.attach(&mut d, 6, 64), CCDMA_OK);
    let ((_, a), (_, b)) = (g.buffer(300), g.buffer(300));
    let mut sg = SgMem::new();
    assert_eq!(map_sg(&g, d.ptr(), &[(a, 300), (b, 300)], &mut sg), CCDMA_OK);
    let shared = g.hv.shared_pages();
    assert_eq!(map_sg(&g, d.ptr(), &[(b, 300)], &mut sg), CCDMA_ERR_MISUSE, "a list over a live list");
    assert_eq!(g.hv.shared_pages(), shared);
    assert_eq!(detach(&g, d.ptr()), CCDMA_ERR_BUSY, "the first list is live");
    assert_eq!(unmap_sg(&g, d.ptr(), &mut sg, 1), CCDMA_ERR_MISUSE, "a count other than the list's");
    assert_eq!(unmap_sg(&g, d.ptr(), &mut sg, 2), CCDMA_OK, "the first list unmaps");
    assert_eq!(unmap_sg(&g, d.ptr(), &mut sg, 2), CCDMA_ERR_MISUSE, "unmap_sg twice");
    // SAFETY: test memory; the interface checks the handle.
    let sync = unsafe { ccdma_sync_sg_for_cpu(g.layer(), d.ptr(), sg.ptr(), 2, CCDMA_TO_DEVICE) };
    assert_eq!(sync, CCDMA_ERR_MISUSE, "sync of an unmapped list");
    assert_eq!(detach(&g, d.ptr()), CCDMA_OK, "nothing leaked");
    no_faults(&g);
}

#[test]
fn initialising_over_a_live_handle_is_misuse_and_leaks_nothing() {
    let g = guest();
    let t = model::table(&g.hv);
    // SAFETY: the test's layer memory (live); the interface checks it.
    assert_eq!(unsafe { ccdma_layer_init(g.layer().cast(), CCDMA_LAYER_SIZE, &t) }, CCDMA_ERR_MISUSE);
    let mut d = DevMem::new();
    assert_eq!(g.attach(&mut d, 7, 64), CCDMA_OK);
    assert_eq!(g.attach(&mut d, 8, 32), CCDMA_ERR_MISUSE, "attach over a live device");
    let (phys, _) = g.buffer(4096);
    let (phys2, _) = g.buffer(4096);
    let mut h = CohMem::new();
    assert_eq!(alloc(&g, d.ptr(), phys, &mut h).0, CCDMA_OK);
    assert_eq!(alloc(&g, d.ptr(), phys2, &mut h).0, CCDMA_ERR_MISUSE, "a buffer over a live buffer");
    assert_eq!(g.hv.shared_pages(), POOL_PAGES + 1, "the second page was not shared");
    assert_eq!(free(&g, d.ptr(), &mut h), CCDMA_OK);
    assert_eq!(detach(&g, d.ptr()), CCDMA_OK, "the device's count is right");
    // SAFETY: an initialised layer, no other user.
    assert_eq!(unsafe { ccdma_layer_fini(g.layer()) }, CCDMA_OK);
    assert_eq!(g.hv.shared_pages(), 0, "the first layer's pool was not leaked");
    no_faults(&g);
}

#[test]
fn handles_of_another_layer_or_device_or_never_initialised_are_misuse() {
    let g = guest();
    let other = guest();
    let (mut d, mut e) = (DevMem::new(), DevMem::new());
    assert_eq!(g.attach(&mut d, 9, 64), CCDMA_OK);
    assert_eq!(g.attach(&mut e, 10, 64), CCDMA_OK);
    let (_, buf) = g.buffer(512);
    assert_eq!(map(&other, d.ptr(), buf, 512).0, CCDMA_ERR_MISUSE, "a device of another layer");
    assert_eq!(detach(&other, d.ptr()), CCDMA_ERR_MISUSE);
    let (phys, _) = g.buffer(4096);
    let mut h = CohMem::new();
    assert_eq!(alloc(&g, d.ptr(), phys, &mut h).0, CCDMA_OK);
    assert_eq!(free(&g, e.ptr(), &mut h), CCDMA_ERR_MISUSE, "a buffer of another device");
    assert_eq!(free(&g, d.ptr(), &mut h), CCDMA_OK);
    // Memory never initialised (zeroes, or bytes of something else).
    let mut zero = DevMem::new();
    assert_eq!(map(&g, zero.ptr(), buf, 512).0, CCDMA_ERR_MISUSE, "a device never attached");
    let mut junk = DevMem::new();
    junk.0.fill(0xA5);
    assert_eq!(detach(&g, junk.ptr()), CCDMA_ERR_MISUSE);
    let mut never = CohMem::new();
    assert_eq!(free(&g, d.ptr(), &mut never), CCDMA_ERR_MISUSE, "a buffer never allocated");
    let mut list = SgMem::new();
    assert_eq!(unmap_sg(&g, d.ptr(), &mut list, 1), CCDMA_ERR_MISUSE, "a list never mapped");
    let mut fresh = LayerMem::new();
    // SAFETY: zeroed layer memory; the interface checks it.
    assert_eq!(unsafe { ccdma_release_pools(fresh.ptr()) }, CCDMA_ERR_MISUSE, "a layer never initialised");
    assert_eq!(detach(&g, d.ptr()), CCDMA_OK);
    assert_eq!(detach(&g, e.ptr()), CCDMA_OK);
    assert_eq!(g.hv.shared_pages(), POOL_PAGES);
    no_faults(&g);
    no_faults(&other);
}

// A C IOMMU whose `map` always fails.
unsafe extern "C" fn io_window(
    _: *mut c_void,
    _: u32,
    start: *mut u64,
    size: *mut u64,
    shift: *mut u32,
) -> c_int {
    // SAFETY: ccdma-ffi passes valid out pointers.
    unsafe {
        start.write(0x1000_0000);
        size.write(64 << 20);
        shift.write(12);
    }
    0
}
unsafe extern "C" fn io_map(_: *mut c_void, _: u32, _: u64, _: u64, _: *const u64) -> c_int {
    -5
}
unsafe extern "C" fn io_unmap(_: *mut c_void, _: u32, _: u64, _: u64) -> c_int {
    0
}

#[test]
fn a_failing_c_iommu_answers_ccdma_err_iommu_as_the_header_says() {
    let iommu = ccdma_iommu {
        ctx: std::ptr::null_mut(),
        window: Some(io_window),
        map: Some(io_map),
        unmap: Some(io_unmap),
    };
    let iommu_ptr: *const ccdma_iommu = &iommu;
    let g = Guest::with_table(HvConfig::tdx(2 * GIB), |t| t.iommu = iommu_ptr);
    let mut ranges = vec![0u64; 64 * CCDMA_BUS_RANGE_SIZE / 8];
    // SAFETY: an initialised layer; bus-range storage of the stated size, kept alive by the test.
    let rc = unsafe {
        ccdma_enable_iommu(g.layer(), CCDMA_IOMMU_PREMAPPED, 2, ranges.as_mut_ptr().cast(), ranges.len() * 8)
    };
    assert_eq!(rc, CCDMA_OK);
    let mut d = DevMem::new();
    assert_eq!(g.attach(&mut d, 11, 64), CCDMA_ERR_IOMMU, "the pools cannot be premapped");
    let header = include_str!("../include/ccdma.h");
    let doc =
        header.split("#define CCDMA_ERR_IOMMU").next().and_then(|h| h.rsplit("/**").next()).unwrap_or("");
    assert!(!doc.contains("not reachable"), "the header still calls CCDMA_ERR_IOMMU unreachable: {doc}");
    // SAFETY: a static string.
    let s = unsafe { std::ffi::CStr::from_ptr(ccdma_strerror(CCDMA_ERR_IOMMU)) };
    assert!(s.to_str().unwrap().contains("IOMMU"));
    // SAFETY: an initialised layer, no other user.
    assert_eq!(unsafe { ccdma_layer_fini(g.layer()) }, CCDMA_OK);
    no_faults(&g);
}
