//! The driver proper (UEFI only).

use ccdma::storage::{CellInitError, LayerCell};
use ccdma::{
    BusAddr, CoherentBuffer, Device, DeviceConfig, DmaAttrs, DmaLayer, DmaMask, MemorySharing,
    PartialSharing, PhysAddr, PhysMemory, Platform, PoolConfig, SharingErrorKind, SlotMeta,
};
use ccdma_uefi::{attr, Ledger, MapKind, Operation, Table, ACCESS_VALID, PAGE};
use core::ffi::c_void;
use core::fmt::{self, Write};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, Ordering};
use r_efi::efi;
use spin::{Mutex, Once};

/// `gEdkiiIoMmuProtocolGuid` (MdeModulePkg/Include/Protocol/IoMmu.h).
const IOMMU_GUID: efi::Guid =
    efi::Guid::from_fields(0x4e93_9de9, 0xd948, 0x4b0f, 0x88, 0xed, &[0xe6, 0xe1, 0xce, 0x51, 0x7c, 0x1e]);
/// This driver's report protocol (a GUID of its own).
pub const REPORT_GUID: efi::Guid =
    efi::Guid::from_fields(0x7c3a_d0b1, 0x5e2f, 0x4c8a, 0x9d, 0x41, &[0x63, 0xcc, 0xd4, 0xa0, 0x17, 0x23]);
/// `EDKII_IOMMU_PROTOCOL_REVISION`.
const IOMMU_REVISION: u64 = 0x0001_0000;

/// Bounce pool bytes (below 4 GiB, so both devices reach it).
const POOL_BYTES: usize = 8 << 20;
/// Slot size and longest mapping (512 slots of 2 KiB: 1 MiB; longer maps are shortened).
const POOL_CONFIG: PoolConfig = PoolConfig { slot_size: 2048, max_run_slots: 512, areas: 1 };
const MAX_MAP: usize = POOL_CONFIG.slot_size * POOL_CONFIG.max_run_slots;

#[repr(C)]
struct IoMmuProtocol {
    revision: u64,
    set_attribute: extern "efiapi" fn(*mut IoMmuProtocol, efi::Handle, *mut c_void, u64) -> efi::Status,
    map: extern "efiapi" fn(
        *mut IoMmuProtocol,
        u32,
        *mut c_void,
        *mut usize,
        *mut u64,
        *mut *mut c_void,
    ) -> efi::Status,
    unmap: extern "efiapi" fn(*mut IoMmuProtocol, *mut c_void) -> efi::Status,
    allocate_buffer:
        extern "efiapi" fn(*mut IoMmuProtocol, u32, u32, usize, *mut *mut c_void, u64) -> efi::Status,
    free_buffer: extern "efiapi" fn(*mut IoMmuProtocol, usize, *mut c_void) -> efi::Status,
}

/// The report protocol: one function that prints the report on the console.
#[repr(C)]
pub struct ReportProtocol {
    pub revision: u64,
    pub print: extern "efiapi" fn() -> efi::Status,
}

struct SyncCell<T>(core::cell::UnsafeCell<T>);
// SAFETY: the protocol structs are written once before installation and only read afterwards
// (by firmware, through the pointer handed to InstallProtocolInterface).
unsafe impl<T> Sync for SyncCell<T> {}

static IOMMU: SyncCell<IoMmuProtocol> = SyncCell(core::cell::UnsafeCell::new(IoMmuProtocol {
    revision: IOMMU_REVISION,
    set_attribute,
    map,
    unmap,
    allocate_buffer,
    free_buffer,
}));
static REPORT: SyncCell<ReportProtocol> =
    SyncCell(core::cell::UnsafeCell::new(ReportProtocol { revision: 1, print: print_report }));

static SYSTEM_TABLE: AtomicPtr<efi::SystemTable> = AtomicPtr::new(ptr::null_mut());

// ---------------------------------------------------------------------------------------------
// Platform

/// The firmware as ccdma sees it: identity-mapped RAM, a ledger of shared pages.
pub struct UefiPlatform {
    ledger: Mutex<Ledger<256>>,
}

static PLATFORM: UefiPlatform = UefiPlatform { ledger: Mutex::new(Ledger::new()) };

const REFUSED: i64 = -4;

impl MemorySharing for UefiPlatform {
    fn share(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        self.ledger
            .lock()
            .share(phys.0, pages)
            .map_err(|_| PartialSharing { pages_done: 0, kind: SharingErrorKind::Hypervisor(REFUSED.into()) })
    }

    fn unshare(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        self.ledger
            .lock()
            .unshare(phys.0, pages)
            .map_err(|_| PartialSharing { pages_done: 0, kind: SharingErrorKind::Hypervisor(REFUSED.into()) })
    }
}

/// Top of the addresses this driver treats as RAM (UEFI on x86_64 identity-maps memory; the
/// driver never asks for a CPU pointer beyond what boot services or a caller handed it).
const RAM_END: u64 = 1 << 40;

// SAFETY: UEFI on x86_64 identity-maps all memory while boot services run, which is the driver's
// whole life; both translations are the identity and refuse null and ranges beyond RAM_END.
unsafe impl PhysMemory for UefiPlatform {
    fn cpu_ptr(&self, phys: PhysAddr, len: usize) -> Option<NonNull<u8>> {
        let end = phys.0.checked_add(len as u64)?;
        if end > RAM_END {
            return None;
        }
        NonNull::new(phys.0 as *mut u8)
    }

    fn virt_to_phys(&self, ptr: *const u8, len: usize) -> Option<PhysAddr> {
        let phys = ptr as u64;
        (phys != 0 && phys.checked_add(len as u64)? <= RAM_END).then_some(PhysAddr(phys))
    }

    fn ram_end(&self) -> PhysAddr {
        PhysAddr(RAM_END)
    }
}

/// What `mask_interrupts` returns when boot services are gone (nothing was raised, nothing to restore).
const NO_TPL: usize = usize::MAX;

impl Platform for UefiPlatform {
    fn is_confidential(&self) -> bool {
        true
    }

    /// EDK2 has no interrupt handlers of its own for drivers: timer events run their notification
    /// functions at a raised TPL. Raising to `TPL_HIGH_LEVEL` holds every event (and the timer
    /// interrupt) off until the TPL is restored, so a notification function calling the IOMMU
    /// protocol never interrupts a ccdma call. While raised ccdma calls only this platform's
    /// functions (the ledger's lock, identity translation): no boot service restricted to
    /// `TPL_NOTIFY` or below runs.
    fn mask_interrupts(&self) -> ccdma::InterruptState {
        match bs() {
            Some(bs) => ccdma::InterruptState((bs.raise_tpl)(efi::TPL_HIGH_LEVEL)),
            None => ccdma::InterruptState(NO_TPL),
        }
    }

    /// `RestoreTPL` to what `RaiseTPL` returned (calls nest: each restores the level it found).
    fn restore_interrupts(&self, saved: ccdma::InterruptState) {
        if saved.0 == NO_TPL {
            return;
        }
        if let Some(bs) = bs() {
            (bs.restore_tpl)(saved.0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// State

type Layer = DmaLayer<'static, &'static UefiPlatform>;

/// Built and configured in place (`LayerCell::init_with`): no stack frame holds the layer.
static LAYER: LayerCell<&'static UefiPlatform> = LayerCell::new();

struct Dma {
    layer: &'static Layer,
    /// 32-bit and 64-bit devices.
    narrow: Device,
    wide: Device,
}

static DMA: Once<Dma> = Once::new();

#[derive(Clone, Copy)]
struct MapRec {
    len: usize,
    bus: u64,
    kind: MapKind,
    wide: bool,
    device: usize,
}

#[derive(Clone, Copy, Default)]
struct DevRec {
    loc: [usize; 4],
    maps: u64,
    bytes: u64,
    common: u64,
    wide: bool,
}

struct CoherentRec {
    buf: CoherentBuffer,
    wide: bool,
}

#[derive(Default)]
struct Counters {
    stream_maps: u64,
    stream_by_op: [u64; 6],
    common_maps: u64,
    unmaps: u64,
    shortened: u64,
    bounced_bytes: u64,
    host_equals_device: u64,
    refused: u64,
    coherent_allocs: u64,
    coherent_frees: u64,
    coherent_pages: u64,
    set_attributes: u64,
    unattributed: u64,
    foreign_unmaps: u64,
    foreign_frees: u64,
}

struct State {
    maps: Table<MapRec, 256>,
    devices: Table<DevRec, 16>,
    coherent: [Option<CoherentRec>; 64],
    c: Counters,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn bs() -> Option<&'static efi::BootServices> {
    let st = SYSTEM_TABLE.load(Ordering::Relaxed);
    // SAFETY: set once from the entry point's system table, valid while boot services run (the
    // driver's whole life); boot_services is non-null then.
    unsafe { st.as_ref().and_then(|st| st.boot_services.as_ref()) }
}

fn alloc_pages_below(pages: usize, max: u64) -> Option<u64> {
    let bs = bs()?;
    let mut addr: efi::PhysicalAddress = max;
    let status = (bs.allocate_pages)(efi::ALLOCATE_MAX_ADDRESS, efi::BOOT_SERVICES_DATA, pages, &mut addr);
    (status == efi::Status::SUCCESS).then_some(addr)
}

fn free_pages(addr: u64, pages: usize) {
    if let Some(bs) = bs() {
        (bs.free_pages)(addr, pages);
    }
}

// ---------------------------------------------------------------------------------------------
// Console

struct Con;

impl Write for Con {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let st = SYSTEM_TABLE.load(Ordering::Relaxed);
        // SAFETY: see `bs`; con_out is the firmware's console, valid while boot services run.
        let Some(out) = (unsafe { st.as_ref() }).map(|st| st.con_out) else { return Ok(()) };
        if out.is_null() {
            return Ok(());
        }
        let mut buf = [0u16; 130];
        let mut n = 0;
        for c in s.chars() {
            if c == '\n' {
                buf[n] = u16::from(b'\r');
                n += 1;
            }
            buf[n] = if (c as u32) < 0x7f { c as u16 } else { u16::from(b'?') };
            n += 1;
            if n >= buf.len() - 2 {
                buf[n] = 0;
                // SAFETY: `out` is the live console protocol; `buf` is NUL-terminated UCS-2.
                unsafe { ((*out).output_string)(out, buf.as_mut_ptr()) };
                n = 0;
            }
        }
        buf[n] = 0;
        // SAFETY: as above.
        unsafe { ((*out).output_string)(out, buf.as_mut_ptr()) };
        Ok(())
    }
}

macro_rules! say {
    ($($t:tt)*) => {{ let _ = writeln!(Con, $($t)*); }};
}

// ---------------------------------------------------------------------------------------------
// Entry

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    say!("ccdma-iommu: panic: {info}");
    loop {
        core::hint::spin_loop();
    }
}

#[export_name = "efi_main"]
extern "efiapi" fn efi_main(_image: efi::Handle, st: *mut efi::SystemTable) -> efi::Status {
    SYSTEM_TABLE.store(st, Ordering::Relaxed);
    match init() {
        Ok(()) => efi::Status::SUCCESS,
        Err(what) => {
            say!("ccdma-iommu: not installed: {what}");
            efi::Status::LOAD_ERROR
        }
    }
}

fn init() -> Result<(), &'static str> {
    let bs = bs().ok_or("no boot services")?;
    let mut guid = IOMMU_GUID;
    let mut existing: *mut c_void = ptr::null_mut();
    if (bs.locate_protocol)(&mut guid, ptr::null_mut(), &mut existing) == efi::Status::SUCCESS {
        return Err("an EDKII_IOMMU_PROTOCOL is installed already (SEV/TDX IoMmuDxe?)");
    }
    let pool = alloc_pages_below(POOL_BYTES / PAGE as usize, 0xffff_ffff).ok_or("no pool pages")?;
    let slots = POOL_BYTES / POOL_CONFIG.slot_size;
    let meta_bytes = slots * core::mem::size_of::<SlotMeta>();
    let meta_pages = meta_bytes.div_ceil(PAGE as usize);
    let meta_at = alloc_pages_below(meta_pages, u64::MAX).ok_or("no metadata pages")?;
    let meta_ptr = meta_at as *mut SlotMeta;
    for i in 0..slots {
        // SAFETY: the pages were just allocated for this array and are large enough.
        unsafe { meta_ptr.add(i).write(SlotMeta::EMPTY) };
    }
    // SAFETY: the pages are ours for the driver's life (never freed) and were initialised above.
    let meta: &'static mut [SlotMeta] = unsafe { core::slice::from_raw_parts_mut(meta_ptr, slots) };
    let layer = LAYER
        .init_with(&PLATFORM, |layer| {
            // SAFETY: the pool pages were allocated from boot services for this layer alone and are
            // never freed; the layer lives for the driver's life (static).
            unsafe { layer.add_pool(PhysAddr(pool), POOL_BYTES, meta, POOL_CONFIG) }
                .map(|_index| ())
                .map_err(|_| "pool refused")
        })
        .map_err(|e| match e {
            CellInitError::Occupied => "the driver's layer is initialised already",
            CellInitError::Configure(why) => why,
        })?;
    let mask = |bits| DmaMask::new(bits).map_err(|_| "mask");
    let narrow = layer.attach(DeviceConfig::new(32, mask(32)?)).map_err(|_| "32-bit attach refused")?;
    let wide = layer.attach(DeviceConfig::new(64, mask(64)?)).map_err(|_| "64-bit attach refused")?;
    DMA.call_once(|| Dma { layer, narrow, wide });
    *STATE.lock() = Some(State {
        maps: Table::new(),
        devices: Table::new(),
        coherent: [const { None }; 64],
        c: Counters::default(),
    });
    let mut handle: efi::Handle = ptr::null_mut();
    let status =
        (bs.install_protocol_interface)(&mut handle, &mut guid, efi::NATIVE_INTERFACE, IOMMU.0.get().cast());
    if status != efi::Status::SUCCESS {
        return Err("InstallProtocolInterface(IoMmu) failed");
    }
    let mut rguid = REPORT_GUID;
    (bs.install_protocol_interface)(&mut handle, &mut rguid, efi::NATIVE_INTERFACE, REPORT.0.get().cast());
    say!(
        "ccdma-iommu: EDKII_IOMMU_PROTOCOL installed: pool {POOL_BYTES} bytes at {pool:#x} (shared), \
         devices 32-bit and 64-bit on path {}",
        DMA.get().map_or("?", |d| d.narrow.path().name())
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The protocol

extern "efiapi" fn map(
    _this: *mut IoMmuProtocol,
    operation: u32,
    host: *mut c_void,
    bytes: *mut usize,
    device_address: *mut u64,
    mapping: *mut *mut c_void,
) -> efi::Status {
    let (Some(op), Some(dma)) = (Operation::decode(operation), DMA.get()) else {
        return efi::Status::INVALID_PARAMETER;
    };
    if host.is_null() || bytes.is_null() || device_address.is_null() || mapping.is_null() {
        return efi::Status::INVALID_PARAMETER;
    }
    // SAFETY: checked non-null; the caller passes valid pointers (protocol contract).
    let requested = unsafe { *bytes };
    let mut guard = STATE.lock();
    let Some(state) = guard.as_mut() else { return efi::Status::NOT_READY };
    let host = host as u64;
    let dev = if op.wide { &dma.wide } else { &dma.narrow };
    let (len, bus) = match op.kind {
        MapKind::Common => {
            // Must lie in one of our coherent buffers; the device gets its bus address.
            let found = state.coherent.iter().flatten().find(|c| {
                let start = c.buf.phys().0;
                host >= start && host - start + requested as u64 <= c.buf.len() as u64
            });
            let Some(c) = found else {
                state.c.refused += 1;
                say!("ccdma-iommu: common-buffer map of {host:#x}+{requested} outside every coherent buffer: refused");
                return efi::Status::UNSUPPORTED;
            };
            state.c.common_maps += 1;
            (requested, c.buf.bus_addr().0 + (host - c.buf.phys().0))
        }
        MapKind::Stream(dir) => {
            let len = requested.min(MAX_MAP);
            if len == 0 {
                return efi::Status::INVALID_PARAMETER;
            }
            if cfg!(feature = "unbounced") {
                // The broken build the runner uses to see its containment check fail: the device
                // is given the host buffer itself (private memory), as with no IOMMU protocol.
                state.c.stream_maps += 1;
                state.c.host_equals_device += 1;
                (len, host)
            } else {
                // SAFETY: the caller (PciHostBridgeDxe on behalf of a driver) owns [host, host+len)
                // until Unmap, as EFI_PCI_IO_PROTOCOL.Map's contract requires of it.
                match unsafe { dma.layer.map_ptr(dev, host as *mut u8, len, dir, DmaAttrs::NONE) } {
                    Ok(bus) => {
                        state.c.stream_maps += 1;
                        state.c.stream_by_op[operation as usize] += 1;
                        state.c.bounced_bytes += len as u64;
                        if len < requested {
                            state.c.shortened += 1;
                        }
                        if bus.0 == host {
                            state.c.host_equals_device += 1;
                        }
                        (len, bus.0)
                    }
                    Err(e) => {
                        state.c.refused += 1;
                        say!("ccdma-iommu: map {host:#x}+{len} refused: {e:?}");
                        return efi::Status::OUT_OF_RESOURCES;
                    }
                }
            }
        }
    };
    PLATFORM.ledger.lock().check_device(bus, len as u64);
    let rec = MapRec { len, bus, kind: op.kind, wide: op.wide, device: 0 };
    let Some(token) = state.maps.insert(rec) else {
        if let MapKind::Stream(dir) = op.kind {
            // SAFETY: the mapping was made just above by this driver on `dev`.
            let _ = unsafe { dma.layer.unmap(dev, BusAddr(bus), len, dir, DmaAttrs::NONE) };
        }
        state.c.refused += 1;
        return efi::Status::OUT_OF_RESOURCES;
    };
    // SAFETY: checked non-null above (protocol contract: valid out pointers).
    unsafe {
        *bytes = len;
        *device_address = bus;
        *mapping = token as *mut c_void;
    }
    efi::Status::SUCCESS
}

extern "efiapi" fn unmap(_this: *mut IoMmuProtocol, mapping: *mut c_void) -> efi::Status {
    let Some(dma) = DMA.get() else { return efi::Status::NOT_READY };
    let mut guard = STATE.lock();
    let Some(state) = guard.as_mut() else { return efi::Status::NOT_READY };
    if mapping.is_null() || mapping as usize == usize::MAX {
        // A mapping PciHostBridgeDxe made itself before this protocol was installed (NULL or its
        // NO_MAPPING, (VOID *)-1: a buffer the device used in place): once an IOMMU protocol is installed the
        // root bridge forwards every Unmap here. Nothing to undo.
        state.c.foreign_unmaps += 1;
        return efi::Status::SUCCESS;
    }
    let Some(rec) = state.maps.take(mapping as usize) else {
        state.c.refused += 1;
        say!("ccdma-iommu: unmap of unknown mapping {mapping:p}: refused");
        return efi::Status::INVALID_PARAMETER;
    };
    state.c.unmaps += 1;
    if let (MapKind::Stream(dir), false) = (rec.kind, cfg!(feature = "unbounced")) {
        let dev = if rec.wide { &dma.wide } else { &dma.narrow };
        // SAFETY: `rec` is this driver's record of a mapping it made on `dev` (taken out of the
        // table, so no one else unmaps it).
        if let Err(e) = unsafe { dma.layer.unmap(dev, BusAddr(rec.bus), rec.len, dir, DmaAttrs::NONE) } {
            say!("ccdma-iommu: unmap {:#x} refused: {e:?}", rec.bus);
            return efi::Status::DEVICE_ERROR;
        }
    }
    efi::Status::SUCCESS
}

extern "efiapi" fn set_attribute(
    _this: *mut IoMmuProtocol,
    handle: efi::Handle,
    mapping: *mut c_void,
    access: u64,
) -> efi::Status {
    if access & !ACCESS_VALID != 0 {
        return efi::Status::UNSUPPORTED;
    }
    let mut guard = STATE.lock();
    let Some(state) = guard.as_mut() else { return efi::Status::NOT_READY };
    state.c.set_attributes += 1;
    let Some(rec) = state.maps.get_mut(mapping as usize) else {
        // Access 0 after Unmap is how PciBusDxe revokes: nothing left to do.
        if access != 0 {
            state.c.unattributed += 1;
        }
        return efi::Status::SUCCESS;
    };
    if access == 0 || rec.device != 0 {
        return efi::Status::SUCCESS;
    }
    rec.device = handle as usize;
    let rec = *rec;
    let loc = pci_location(handle).unwrap_or([usize::MAX; 4]);
    let token = match state.devices.find(|d| d.loc == loc) {
        Some(t) => t,
        None => {
            let d = DevRec { loc, ..DevRec::default() };
            match state.devices.insert(d) {
                Some(t) => t,
                None => return efi::Status::SUCCESS,
            }
        }
    };
    if let Some(d) = state.devices.get_mut(token) {
        match rec.kind {
            MapKind::Common => d.common += 1,
            MapKind::Stream(_) => {
                d.maps += 1;
                d.bytes += rec.len as u64;
            }
        }
        d.wide |= rec.wide;
    }
    efi::Status::SUCCESS
}

fn pci_location(handle: efi::Handle) -> Option<[usize; 4]> {
    let bs = bs()?;
    let mut guid = r_efi::protocols::pci_io::PROTOCOL_GUID;
    let mut pci: *mut c_void = ptr::null_mut();
    if (bs.handle_protocol)(handle, &mut guid, &mut pci) != efi::Status::SUCCESS || pci.is_null() {
        return None;
    }
    let pci = pci.cast::<r_efi::protocols::pci_io::Protocol>();
    let mut loc = [0usize; 4];
    let [s, b, d, f] = &mut loc;
    // SAFETY: `pci` is the handle's live PciIo protocol; the out pointers are valid.
    let status = unsafe { ((*pci).get_location)(pci, s, b, d, f) };
    (status == efi::Status::SUCCESS).then_some(loc)
}

extern "efiapi" fn allocate_buffer(
    _this: *mut IoMmuProtocol,
    alloc_type: u32,
    memory_type: u32,
    pages: usize,
    host: *mut *mut c_void,
    attributes: u64,
) -> efi::Status {
    let Some(dma) = DMA.get() else { return efi::Status::NOT_READY };
    if host.is_null() || pages == 0 || attributes & !attr::VALID != 0 {
        return efi::Status::INVALID_PARAMETER;
    }
    if memory_type != efi::BOOT_SERVICES_DATA && memory_type != efi::RUNTIME_SERVICES_DATA {
        return efi::Status::INVALID_PARAMETER;
    }
    let _ = alloc_type; // The address is the driver's choice (below the device's mask).
    let wide = attributes & attr::DUAL_ADDRESS_CYCLE != 0;
    let max = if wide { u64::MAX } else { 0xffff_ffff };
    let Some(phys) = alloc_pages_below(pages, max) else { return efi::Status::OUT_OF_RESOURCES };
    let mut guard = STATE.lock();
    let Some(state) = guard.as_mut() else { return efi::Status::NOT_READY };
    let Some(slot) = state.coherent.iter_mut().find(|c| c.is_none()) else {
        drop(guard);
        free_pages(phys, pages);
        return efi::Status::OUT_OF_RESOURCES;
    };
    let dev = if wide { &dma.wide } else { &dma.narrow };
    // SAFETY: the pages were just allocated from boot services for this buffer and are not used
    // otherwise until FreeBuffer frees the coherent buffer.
    match unsafe { dma.layer.alloc_coherent(dev, PhysAddr(phys), pages as u64) } {
        Ok(buf) => {
            PLATFORM.ledger.lock().check_device(buf.bus_addr().0, buf.len() as u64);
            *slot = Some(CoherentRec { buf, wide });
            state.c.coherent_allocs += 1;
            state.c.coherent_pages += pages as u64;
            // SAFETY: checked non-null (protocol contract: valid out pointer).
            unsafe { *host = phys as *mut c_void };
            efi::Status::SUCCESS
        }
        Err(e) => {
            state.c.refused += 1;
            drop(guard);
            say!("ccdma-iommu: coherent {pages} pages refused: {e:?}");
            free_pages(phys, pages);
            efi::Status::OUT_OF_RESOURCES
        }
    }
}

extern "efiapi" fn free_buffer(_this: *mut IoMmuProtocol, pages: usize, host: *mut c_void) -> efi::Status {
    let Some(dma) = DMA.get() else { return efi::Status::NOT_READY };
    let mut guard = STATE.lock();
    let Some(state) = guard.as_mut() else { return efi::Status::NOT_READY };
    let Some(slot) = state
        .coherent
        .iter_mut()
        .find(|c| c.as_ref().is_some_and(|c| c.buf.phys().0 == host as u64 && c.buf.pages() == pages as u64))
    else {
        // Not ours: pages PciHostBridgeDxe allocated itself before this protocol was installed
        // (plain boot-service pages, never shared). Free them as it would have.
        state.c.foreign_frees += 1;
        drop(guard);
        free_pages(host as u64, pages);
        return efi::Status::SUCCESS;
    };
    let Some(rec) = slot.take() else { return efi::Status::INVALID_PARAMETER };
    let dev = if rec.wide { &dma.wide } else { &dma.narrow };
    match dma.layer.free_coherent(dev, rec.buf) {
        Ok(()) => {
            state.c.coherent_frees += 1;
            state.c.coherent_pages -= pages as u64;
            drop(guard);
            free_pages(host as u64, pages);
            efi::Status::SUCCESS
        }
        Err(ccdma::FreeError::Refused(r)) => {
            *slot = Some(CoherentRec { buf: r.value, wide: rec.wide });
            state.c.refused += 1;
            efi::Status::DEVICE_ERROR
        }
        Err(ccdma::FreeError::Quarantined(_)) => {
            // Pages that could not be made private again are never reused: not freed.
            state.c.refused += 1;
            efi::Status::DEVICE_ERROR
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Report

extern "efiapi" fn print_report() -> efi::Status {
    let Some(dma) = DMA.get() else { return efi::Status::NOT_READY };
    let guard = STATE.lock();
    let Some(state) = guard.as_ref() else { return efi::Status::NOT_READY };
    let c = &state.c;
    let s = dma.layer.stats();
    let (violations, shared_pages, shares, unshares) = {
        let l = PLATFORM.ledger.lock();
        (l.violations, l.shared_pages, l.shares, l.unshares)
    };
    say!("ccdma-uefi report");
    say!(
        "  maps: streaming {} (read {}, write {}, read64 {}, write64 {}), common {}, unmaps {}, live {}, shortened {}",
        c.stream_maps,
        c.stream_by_op[0],
        c.stream_by_op[1],
        c.stream_by_op[3],
        c.stream_by_op[4],
        c.common_maps,
        c.unmaps,
        state.maps.len(),
        c.shortened
    );
    say!(
        "  bounced: {} maps, {} bytes to device, {} bytes from device (layer: maps {}, unmaps {})",
        s.bounced_maps,
        s.bytes_to_device,
        s.bytes_from_device,
        s.maps,
        s.unmaps
    );
    say!(
        "  coherent buffers: allocated {}, freed {}, live {} ({} pages)",
        c.coherent_allocs,
        c.coherent_frees,
        c.coherent_allocs - c.coherent_frees,
        c.coherent_pages
    );
    for (name, dev) in [("32-bit", &dma.narrow), ("64-bit", &dma.wide)] {
        say!("  ccdma device {name}: path {}", dev.path().name());
    }
    for d in state.devices.iter() {
        let [seg, bus, dev, func] = d.loc;
        say!(
            "  pci {seg:04x}:{bus:02x}:{dev:02x}.{func:x}: streaming maps {}, bytes {}, common maps {}, dma {} (path {})",
            d.maps,
            d.bytes,
            d.common,
            if d.wide { "64-bit" } else { "32-bit" },
            dma.narrow.path().name()
        );
    }
    say!(
        "  ledger: shared pages {shared_pages}, share calls {shares}, unshare calls {unshares}, device addresses outside shared memory {violations}"
    );
    say!(
        "  containment: streaming maps whose device address equals the host buffer {}",
        c.host_equals_device
    );
    say!(
        "  faults: layer failures {}, refused calls {}, set_attribute calls {} (unattributed {})",
        s.failures.iter().sum::<u64>(),
        c.refused,
        c.set_attributes,
        c.unattributed
    );
    say!(
        "  from before the install (root bridge's own, passed through): unmaps {}, frees {}",
        c.foreign_unmaps,
        c.foreign_frees
    );
    efi::Status::SUCCESS
}
