//! Driver for the virtio-iommu device (virtio 1.2, section 5.13), over virtio-drivers' transport
//! and `VirtQueue`.
//!
//! The device translates the DMA of other PCI devices (endpoints, named by their PCI requester
//! ID). The driver puts endpoints into *domains* ([`VirtioIommu::attach`]) and gives each domain
//! mappings from an IOVA range to physical memory ([`VirtioIommu::map`], [`VirtioIommu::unmap`]).
//! A DMA the domain does not map is blocked, and the device reports it on the event queue
//! ([`VirtioIommu::poll_fault`]). In ccdma terms the MAP/UNMAP requests play the part of TCE
//! hypercalls.
//!
//! Every request waits for the device with a deadline. When one expires, the request's buffers
//! still belong to the device, so the driver marks its request queue broken and refuses further
//! requests rather than reuse them. Fault reporting goes on independently, on its own queue.
//!
//! Keep the driver alive for as long as any endpoint needs its translations: dropping it drops the
//! transport, which resets the device. A reset deletes every domain and restores the device's
//! boot bypass setting, which on QEMU lets unattached devices reach all of memory again.

use core::fmt;
use core::marker::PhantomData;
use core::mem::MaybeUninit;
use core::ptr::{addr_of_mut, NonNull};
use core::time::Duration;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::{DeviceStatus, DeviceType, Transport};
use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::time;

/// Queue 0: requests from the driver (ATTACH, MAP, ...), each completed with a status tail.
const REQUEST_QUEUE: u16 = 0;
/// Queue 1: buffers the device fills with fault reports.
const EVENT_QUEUE: u16 = 1;
/// Descriptors per queue. A request takes two; one event buffer takes one. QEMU reports a
/// blocked access once per piece it tries (4 bytes at a time for some), and drops reports while
/// no event buffer is posted, so there are plenty.
const QUEUE_SIZE: usize = 32;
/// Event buffers kept posted. A fault arriving while none is posted is dropped by the device.
const EVENT_BUFFERS: usize = QUEUE_SIZE;

/// How long a request may take before the driver gives up on the device.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

// Feature bits (5.13.3).
const F_INPUT_RANGE: u64 = 1 << 0;
const F_DOMAIN_RANGE: u64 = 1 << 1;
const F_MAP_UNMAP: u64 = 1 << 2;
const F_BYPASS_CONFIG: u64 = 1 << 6;
const F_VERSION_1: u64 = 1 << 32;

// Configuration layout (5.13.4): page_size_mask u64, input_range {u64, u64},
// domain_range {u32, u32}, probe_size u32, bypass u8.
const CONFIG_PAGE_SIZE_MASK: usize = 0;
const CONFIG_INPUT_START: usize = 8;
const CONFIG_INPUT_END: usize = 16;
const CONFIG_DOMAIN_START: usize = 24;
const CONFIG_DOMAIN_END: usize = 28;
const CONFIG_BYPASS: usize = 36;

// Request types (5.13.6).
const REQ_ATTACH: u8 = 1;
const REQ_DETACH: u8 = 2;
const REQ_MAP: u8 = 3;
const REQ_UNMAP: u8 = 4;

/// Layout of the driver's DMA page: one request, its status tail, then the event buffers.
const REQUEST_OFFSET: usize = 0;
const REQUEST_CAPACITY: usize = 64;
const TAIL_OFFSET: usize = REQUEST_OFFSET + REQUEST_CAPACITY;
const TAIL_LEN: usize = size_of::<RequestTail>();
const EVENTS_OFFSET: usize = 128;
const EVENT_LEN: usize = 64;
const _: () = assert!(EVENTS_OFFSET + EVENT_BUFFERS * EVENT_LEN <= PAGE_SIZE);
const _: () = assert!(size_of::<FaultReport>() <= EVENT_LEN);

#[repr(C)]
#[derive(Clone, Copy, FromBytes, Immutable, IntoBytes, KnownLayout)]
struct RequestHead {
    request_type: u8,
    reserved: [u8; 3],
}

impl RequestHead {
    fn new(request_type: u8) -> Self {
        Self { request_type, reserved: [0; 3] }
    }
}

/// Written by the device after the request payload.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, Immutable, IntoBytes, KnownLayout)]
struct RequestTail {
    status: u8,
    reserved: [u8; 3],
}

/// ATTACH and DETACH share one layout.
#[repr(C)]
#[derive(FromBytes, Immutable, IntoBytes, KnownLayout)]
struct AttachRequest {
    head: RequestHead,
    domain: U32,
    endpoint: U32,
    flags: U32,
    reserved: [u8; 4],
}

#[repr(C)]
#[derive(FromBytes, Immutable, IntoBytes, KnownLayout)]
struct MapRequest {
    head: RequestHead,
    domain: U32,
    virt_start: U64,
    /// Inclusive.
    virt_end: U64,
    phys_start: U64,
    flags: U32,
}

#[repr(C)]
#[derive(FromBytes, Immutable, IntoBytes, KnownLayout)]
struct UnmapRequest {
    head: RequestHead,
    domain: U32,
    virt_start: U64,
    /// Inclusive.
    virt_end: U64,
    reserved: [u8; 4],
}

/// `struct virtio_iommu_fault` as the device writes it into an event buffer.
#[repr(C)]
#[derive(FromBytes, Immutable, IntoBytes, KnownLayout)]
struct FaultReport {
    reason: u8,
    reserved: [u8; 3],
    flags: U32,
    endpoint: U32,
    reserved2: [u8; 4],
    address: U64,
}

/// Fault flag: `address` is valid.
const FAULT_F_ADDRESS: u32 = 1 << 8;
const FAULT_F_READ: u32 = 1 << 0;
const FAULT_F_WRITE: u32 = 1 << 1;

/// An endpoint: for a PCI device, its requester ID.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct EndpointId(pub u32);

impl From<crate::pci::RequesterId> for EndpointId {
    fn from(id: crate::pci::RequesterId) -> Self {
        Self(u32::from(id.0))
    }
}

/// A translation domain created by [`VirtioIommu::attach`].
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Domain(u32);

impl Domain {
    /// A domain handle for an arbitrary ID, which may not exist on the device: for exercising
    /// error paths. Real domains come from [`VirtioIommu::attach`].
    pub fn from_raw(id: u32) -> Self {
        Self(id)
    }

    /// The device's domain ID.
    pub fn id(self) -> u32 {
        self.0
    }
}

/// Access a mapping grants to the endpoints of a domain.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Permissions(u32);

impl Permissions {
    /// Device may read (DMA to device).
    pub const READ: Self = Self(1);
    /// Device may write (DMA from device).
    pub const WRITE: Self = Self(2);
    /// Device may read and write.
    pub const READ_WRITE: Self = Self(3);

    /// The permission bits of a DMA in `direction`.
    pub fn for_direction(direction: BufferDirection) -> Self {
        match direction {
            BufferDirection::DriverToDevice => Self::READ,
            BufferDirection::DeviceToDriver => Self::WRITE,
            BufferDirection::Both => Self::READ_WRITE,
        }
    }
}

/// The device's geometry, read once at initialisation.
#[derive(Clone, Copy, Debug)]
pub struct IommuConfig {
    /// Supported page sizes; the lowest set bit is the mapping granule.
    pub page_size_mask: u64,
    /// Lowest IOVA a mapping may use.
    pub input_start: u64,
    /// Highest IOVA a mapping may use (inclusive).
    pub input_end: u64,
    /// Lowest domain ID.
    pub domain_start: u32,
    /// Highest domain ID (inclusive).
    pub domain_end: u32,
    /// Whether the bypass byte can be written (`VIRTIO_IOMMU_F_BYPASS_CONFIG`).
    pub bypass_configurable: bool,
}

impl IommuConfig {
    /// Smallest mapping unit: addresses and lengths of mappings must be multiples of it.
    pub fn granule(&self) -> u64 {
        1 << self.page_size_mask.trailing_zeros()
    }
}

/// Why the device blocked a DMA.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum FaultReason {
    /// Unspecified; QEMU uses it for an unattached endpoint while bypass is off.
    Unknown,
    /// The endpoint's domain is invalid.
    Domain,
    /// No mapping for the address, or the mapping lacks the needed permission.
    Mapping,
    /// A reason code this driver does not know.
    Other(u8),
}

/// A DMA the IOMMU blocked, as reported on the event queue.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Fault {
    /// Why it was blocked.
    pub reason: FaultReason,
    /// The endpoint that attempted the access.
    pub endpoint: EndpointId,
    /// The IOVA, when the device reported one.
    pub address: Option<u64>,
    /// Raw flags (read = 1, write = 2, exec = 4, address valid = 0x100).
    pub flags: u32,
}

impl Fault {
    /// The blocked access was a read by the device.
    pub fn is_read(&self) -> bool {
        self.flags & FAULT_F_READ != 0
    }

    /// The blocked access was a write by the device.
    pub fn is_write(&self) -> bool {
        self.flags & FAULT_F_WRITE != 0
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{:?} fault, endpoint {:#x}", self.reason, self.endpoint.0)?;
        if let Some(address) = self.address {
            write!(f, ", address {address:#x}")?;
        }
        write!(f, ", flags {:#x}", self.flags)
    }
}

/// The kind of request, for error reports.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum RequestKind {
    /// ATTACH.
    Attach,
    /// DETACH.
    Detach,
    /// MAP.
    Map,
    /// UNMAP.
    Unmap,
}

/// A non-OK status from the device's request tail (5.13.6.1).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum RequestStatus {
    /// `VIRTIO_IOMMU_S_IOERR`.
    IoError,
    /// `VIRTIO_IOMMU_S_UNSUPP`: unsupported request.
    Unsupported,
    /// `VIRTIO_IOMMU_S_DEVERR`: internal device error.
    DeviceError,
    /// `VIRTIO_IOMMU_S_INVAL`: invalid parameters.
    Invalid,
    /// `VIRTIO_IOMMU_S_RANGE`: out-of-range parameters.
    Range,
    /// `VIRTIO_IOMMU_S_NOENT`: no such domain, endpoint or mapping.
    NoEntry,
    /// `VIRTIO_IOMMU_S_FAULT`: the device could not read the request.
    Fault,
    /// `VIRTIO_IOMMU_S_NOMEM`: out of resources.
    NoMemory,
    /// A status code this driver does not know.
    Other(u8),
}

impl RequestStatus {
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => return None,
            1 => Self::IoError,
            2 => Self::Unsupported,
            3 => Self::DeviceError,
            4 => Self::Invalid,
            5 => Self::Range,
            6 => Self::NoEntry,
            7 => Self::Fault,
            8 => Self::NoMemory,
            other => Self::Other(other),
        })
    }
}

/// Everything that can go wrong talking to the IOMMU.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum IommuError {
    /// The transport is not a virtio-iommu.
    NotAnIommu,
    /// The device lacks a feature this driver needs (the missing bits).
    MissingFeatures(u64),
    /// The device did not accept the negotiated features.
    FeaturesRejected,
    /// The configuration space makes no sense (empty ranges, no page size).
    InvalidConfig,
    /// The device does not let the driver change bypass.
    BypassNotConfigurable,
    /// The device ignored a write to the bypass byte.
    BypassNotApplied,
    /// Queue or DMA setup failed in virtio-drivers.
    Virtio(virtio_drivers::Error),
    /// The device completed a request with an error status.
    Request {
        /// Which request.
        kind: RequestKind,
        /// What the device said.
        status: RequestStatus,
    },
    /// The device reported a used length too short to contain what it claims to have written.
    ShortReply {
        /// Which request, or `None` for an event buffer.
        kind: Option<RequestKind>,
        /// The length the device reported.
        len: u32,
    },
    /// The device did not complete a request in time; no further requests will be sent.
    Timeout(RequestKind),
    /// An earlier timeout or protocol error left buffers of this queue with the device.
    Broken,
    /// Address or length not a multiple of the granule.
    Unaligned,
    /// Empty range, range wrapping past the top of the address space, or outside the input range.
    OutOfRange,
    /// No permission bit set.
    NoPermissions,
    /// Every domain ID in the device's range is used.
    DomainsExhausted,
}

impl From<virtio_drivers::Error> for IommuError {
    fn from(error: virtio_drivers::Error) -> Self {
        Self::Virtio(error)
    }
}

impl fmt::Display for IommuError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A virtio-iommu device and its two queues.
pub struct VirtioIommu<H: Hal, T: Transport> {
    // Declared first so it is dropped first: the reset stops the device before the queues' and
    // buffers' memory is released.
    transport: T,
    requests: VirtQueue<H, QUEUE_SIZE>,
    events: VirtQueue<H, QUEUE_SIZE>,
    /// Request, status tail and event buffers: DMA memory whose address never changes.
    buffers: DmaPage<H>,
    /// Token (descriptor head) under which each event buffer is posted, `None` while not posted.
    event_tokens: [Option<u16>; EVENT_BUFFERS],
    config: IommuConfig,
    negotiated: u64,
    next_domain: u64,
    /// A request timed out or completed out of order: its buffers may still be with the device.
    requests_broken: bool,
    /// The device returned an event buffer we never posted.
    events_broken: bool,
}

/// One page from `H::dma_alloc`, returned on drop. (virtio-drivers keeps its own `Dma` private.)
struct DmaPage<H: Hal> {
    bus_address: u64,
    ptr: NonNull<u8>,
    _hal: PhantomData<H>,
}

impl<H: Hal> DmaPage<H> {
    fn new() -> Result<Self, IommuError> {
        let (bus_address, ptr) = H::dma_alloc(1, BufferDirection::Both);
        if bus_address == 0 {
            return Err(IommuError::Virtio(virtio_drivers::Error::DmaError));
        }
        Ok(Self { bus_address, ptr, _hal: PhantomData })
    }

    /// Bytes `offset..offset + len` of the page.
    ///
    /// # Safety
    ///
    /// No other reference to these bytes may be live while the returned one is, and the caller
    /// must not read them while the device may write them (between posting and popping).
    #[allow(clippy::mut_from_ref)]
    unsafe fn bytes(&self, offset: usize, len: usize) -> &mut [u8] {
        assert!(offset + len <= PAGE_SIZE);
        // SAFETY: the page is valid for PAGE_SIZE bytes until `drop`, and the range is inside it;
        // exclusivity is the caller's promise.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr().add(offset), len) }
    }
}

impl<H: Hal> Drop for DmaPage<H> {
    fn drop(&mut self) {
        // SAFETY: `bus_address` and `ptr` are what `dma_alloc` returned for one page, and the page
        // is released exactly once.
        unsafe { H::dma_dealloc(self.bus_address, self.ptr, 1) };
    }
}

impl<H: Hal, T: Transport> VirtioIommu<H, T> {
    /// Initialises the device: negotiates features, reads its geometry, sets up both queues and
    /// posts every event buffer. Bypass is left as the device had it; see [`Self::set_bypass`].
    ///
    /// Built in `place` (caller memory: a static in this kernel), so no stack frame holds the
    /// driver (1,520 bytes; `new` and its caller held it twice: 3,512 and 6,424 bytes of frame).
    /// On an error after the driver was built there, it is dropped again (device reset, page
    /// returned) and `place` is left uninitialised.
    pub fn init_in(place: &mut MaybeUninit<Self>, mut transport: T) -> Result<&mut Self, IommuError> {
        if transport.device_type() != DeviceType::IOMMU {
            return Err(IommuError::NotAnIommu);
        }
        transport.set_status(DeviceStatus::empty());
        transport.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);

        let offered = transport.read_device_features();
        let required = F_VERSION_1 | F_MAP_UNMAP;
        if offered & required != required {
            transport.set_status(DeviceStatus::FAILED);
            return Err(IommuError::MissingFeatures(required & !offered));
        }
        let negotiated = offered & (required | F_INPUT_RANGE | F_DOMAIN_RANGE | F_BYPASS_CONFIG);
        transport.write_driver_features(negotiated);
        let features_ok = DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK;
        transport.set_status(features_ok);
        if !transport.get_status().contains(DeviceStatus::FEATURES_OK) {
            transport.set_status(DeviceStatus::FAILED);
            return Err(IommuError::FeaturesRejected);
        }

        let config = read_config(&transport, negotiated)?;
        // Field by field, the queues straight into their place: a `Self` value, or a queue held
        // here, would be one more copy in this frame (624 bytes a queue).
        let this = place.as_mut_ptr();
        // SAFETY: a field of `place`: aligned, valid for writes, holding nothing yet.
        unsafe { Self::queue_into(addr_of_mut!((*this).requests), &mut transport, REQUEST_QUEUE) }?;
        // SAFETY: as above.
        let events = unsafe { Self::queue_into(addr_of_mut!((*this).events), &mut transport, EVENT_QUEUE) };
        let buffers = events.and_then(|()| {
            DmaPage::new().inspect_err(|_| {
                // SAFETY: the events queue was written just above; dropped once, here.
                unsafe { core::ptr::drop_in_place(addr_of_mut!((*this).events)) };
            })
        });
        let buffers = match buffers {
            Ok(buffers) => buffers,
            Err(error) => {
                // SAFETY: the requests queue was written above; dropped once, here.
                unsafe { core::ptr::drop_in_place(addr_of_mut!((*this).requests)) };
                return Err(error);
            }
        };
        // SAFETY: `this` points to `place`: aligned and valid for writes of a `Self`. Each field
        // not written above is written once here, so the whole value is initialised after it.
        unsafe {
            addr_of_mut!((*this).transport).write(transport);
            addr_of_mut!((*this).buffers).write(buffers);
            addr_of_mut!((*this).event_tokens).write([None; EVENT_BUFFERS]);
            addr_of_mut!((*this).config).write(config);
            addr_of_mut!((*this).negotiated).write(negotiated);
            addr_of_mut!((*this).next_domain).write(u64::from(config.domain_start));
            addr_of_mut!((*this).requests_broken).write(false);
            addr_of_mut!((*this).events_broken).write(false);
        }
        // SAFETY: every field was written just above.
        let iommu = unsafe { place.assume_init_mut() };
        let posted = (0..EVENT_BUFFERS).try_for_each(|index| iommu.post_event_buffer(index));
        if posted.is_ok() {
            iommu.transport.set_status(features_ok | DeviceStatus::DRIVER_OK);
            // Buffers may be posted before DRIVER_OK but the device may only be notified after it.
            iommu.transport.notify(EVENT_QUEUE);
        }
        match posted {
            // SAFETY: written just above and not dropped since.
            Ok(()) => Ok(unsafe { place.assume_init_mut() }),
            Err(error) => {
                // SAFETY: written just above and not dropped since; the only reference to it
                // (`iommu`) is no longer used, and the caller gets an error, not the driver.
                unsafe { place.assume_init_drop() };
                Err(error)
            }
        }
    }

    /// Sets up virtqueue `index` straight into `slot`. Not inlined: the queue's value (624 bytes)
    /// is in this frame only.
    ///
    /// # Safety
    ///
    /// `slot` is aligned and valid for writes of a queue; what it held is overwritten, not dropped.
    #[inline(never)]
    unsafe fn queue_into(
        slot: *mut VirtQueue<H, QUEUE_SIZE>,
        transport: &mut T,
        index: u16,
    ) -> Result<(), IommuError> {
        let queue = VirtQueue::new(transport, index, false, false)?;
        // SAFETY: the caller's contract.
        unsafe { slot.write(queue) };
        Ok(())
    }

    /// The device's geometry.
    pub fn config(&self) -> &IommuConfig {
        &self.config
    }

    /// Negotiated feature bits.
    pub fn features(&self) -> u64 {
        self.negotiated
    }

    /// Reads the bypass byte: whether endpoints in no domain reach memory untranslated.
    pub fn bypass(&self) -> Result<bool, IommuError> {
        if !self.config.bypass_configurable {
            return Err(IommuError::BypassNotConfigurable);
        }
        Ok(self.transport.read_config_space::<u8>(CONFIG_BYPASS)? != 0)
    }

    /// Sets bypass for endpoints in no domain. Clearing it makes their DMA fault. QEMU boots with
    /// bypass on so firmware can use its disks; clear it once the firmware is done.
    pub fn set_bypass(&mut self, bypass: bool) -> Result<(), IommuError> {
        if !self.config.bypass_configurable {
            return Err(IommuError::BypassNotConfigurable);
        }
        self.transport.write_config_space::<u8>(CONFIG_BYPASS, u8::from(bypass))?;
        if self.bypass()? != bypass {
            return Err(IommuError::BypassNotApplied);
        }
        Ok(())
    }

    /// Creates a new domain and attaches `endpoint` to it (detaching it from any previous one).
    pub fn attach(&mut self, endpoint: EndpointId) -> Result<Domain, IommuError> {
        if self.next_domain > u64::from(self.config.domain_end) {
            return Err(IommuError::DomainsExhausted);
        }
        let domain = Domain(self.next_domain as u32);
        self.attach_to(domain, endpoint)?;
        self.next_domain += 1;
        Ok(domain)
    }

    /// Attaches `endpoint` to an existing `domain`, so it shares that domain's mappings.
    pub fn attach_to(&mut self, domain: Domain, endpoint: EndpointId) -> Result<(), IommuError> {
        let request = AttachRequest {
            head: RequestHead::new(REQ_ATTACH),
            domain: domain.0.into(),
            endpoint: endpoint.0.into(),
            flags: 0.into(),
            reserved: [0; 4],
        };
        self.submit(RequestKind::Attach, request.as_bytes())
    }

    /// Detaches `endpoint` from `domain`. With bypass off, its DMA then faults.
    pub fn detach(&mut self, domain: Domain, endpoint: EndpointId) -> Result<(), IommuError> {
        let request = AttachRequest {
            head: RequestHead::new(REQ_DETACH),
            domain: domain.0.into(),
            endpoint: endpoint.0.into(),
            flags: 0.into(),
            reserved: [0; 4],
        };
        self.submit(RequestKind::Detach, request.as_bytes())
    }

    /// Maps `len` bytes at `iova` in `domain` to physical address `phys`.
    ///
    /// `iova`, `phys` and `len` must be multiples of the granule and the range must lie inside
    /// the device's input range. The device refuses a range that overlaps an existing mapping.
    pub fn map(
        &mut self,
        domain: Domain,
        iova: u64,
        phys: u64,
        len: u64,
        permissions: Permissions,
    ) -> Result<(), IommuError> {
        let iova_end = self.check_range(iova, len)?;
        if !phys.is_multiple_of(self.config.granule()) {
            return Err(IommuError::Unaligned);
        }
        phys.checked_add(len - 1).ok_or(IommuError::OutOfRange)?;
        if permissions.0 & Permissions::READ_WRITE.0 == 0 {
            return Err(IommuError::NoPermissions);
        }
        let request = MapRequest {
            head: RequestHead::new(REQ_MAP),
            domain: domain.0.into(),
            virt_start: iova.into(),
            virt_end: iova_end.into(),
            phys_start: phys.into(),
            flags: permissions.0.into(),
        };
        self.submit(RequestKind::Map, request.as_bytes())
    }

    /// Removes the mappings in `iova..iova + len` from `domain`. The range must not split a
    /// mapping (the device answers `Range`).
    pub fn unmap(&mut self, domain: Domain, iova: u64, len: u64) -> Result<(), IommuError> {
        let iova_end = self.check_range(iova, len)?;
        let request = UnmapRequest {
            head: RequestHead::new(REQ_UNMAP),
            domain: domain.0.into(),
            virt_start: iova.into(),
            virt_end: iova_end.into(),
            reserved: [0; 4],
        };
        self.submit(RequestKind::Unmap, request.as_bytes())
    }

    /// Takes the next fault report off the event queue, if the device has written one, and
    /// gives the buffer back to the device. Never waits.
    pub fn poll_fault(&mut self) -> Result<Option<Fault>, IommuError> {
        if self.events_broken {
            return Err(IommuError::Broken);
        }
        let Some(token) = self.events.peek_used() else {
            return Ok(None);
        };
        let Some(index) = self.event_tokens.iter().position(|&t| t == Some(token)) else {
            // The device named a descriptor chain we never posted.
            self.events_broken = true;
            return Err(IommuError::Virtio(virtio_drivers::Error::WrongToken));
        };
        // SAFETY: event buffer `index` was posted under `token`, which the device has returned;
        // no other reference to it exists.
        let buffer = unsafe { self.buffers.bytes(EVENTS_OFFSET + index * EVENT_LEN, EVENT_LEN) };
        // SAFETY: `buffer` is the one posted under `token` in `post_event_buffer`.
        let written = unsafe { self.events.pop_used(token, &[], &mut [&mut *buffer]) }?;
        self.event_tokens[index] = None;

        // Read the report once, into private memory, before the buffer goes back to the device.
        let report = FaultReport::read_from_prefix(buffer).ok().map(|(report, _)| report);
        self.post_event_buffer(index)?;
        self.transport.notify(EVENT_QUEUE);

        if (written as usize) < size_of::<FaultReport>() {
            return Err(IommuError::ShortReply { kind: None, len: written });
        }
        let report = report.ok_or(IommuError::ShortReply { kind: None, len: written })?;
        let flags = report.flags.get();
        Ok(Some(Fault {
            reason: match report.reason {
                0 => FaultReason::Unknown,
                1 => FaultReason::Domain,
                2 => FaultReason::Mapping,
                other => FaultReason::Other(other),
            },
            endpoint: EndpointId(report.endpoint.get()),
            address: (flags & FAULT_F_ADDRESS != 0).then(|| report.address.get()),
            flags,
        }))
    }

    /// Polls for a fault report until one arrives or `timeout` passes.
    pub fn wait_fault(&mut self, timeout: Duration) -> Result<Option<Fault>, IommuError> {
        let mut deadline = time::Deadline::after(timeout);
        loop {
            if let Some(fault) = self.poll_fault()? {
                return Ok(Some(fault));
            }
            if deadline.expired() {
                return Ok(None);
            }
            core::hint::spin_loop();
        }
    }

    /// Checks alignment and bounds of `iova..iova + len`; returns the inclusive end.
    fn check_range(&self, iova: u64, len: u64) -> Result<u64, IommuError> {
        let granule = self.config.granule();
        if !iova.is_multiple_of(granule) || !len.is_multiple_of(granule) {
            return Err(IommuError::Unaligned);
        }
        if len == 0 {
            return Err(IommuError::OutOfRange);
        }
        let end = iova.checked_add(len - 1).ok_or(IommuError::OutOfRange)?;
        if iova < self.config.input_start || end > self.config.input_end {
            return Err(IommuError::OutOfRange);
        }
        Ok(end)
    }

    fn post_event_buffer(&mut self, index: usize) -> Result<(), IommuError> {
        debug_assert!(self.event_tokens[index].is_none());
        // SAFETY: buffer `index` is not posted (its token is `None`), so nothing else, device
        // included, references it.
        let buffer = unsafe { self.buffers.bytes(EVENTS_OFFSET + index * EVENT_LEN, EVENT_LEN) };
        buffer.fill(0);
        // SAFETY: the buffer lives in `self.buffers` until `self` is dropped, after the transport
        // has reset the device; it is only touched again once popped in `poll_fault`.
        let token = unsafe { self.events.add(&[], &mut [&mut *buffer]) }?;
        self.event_tokens[index] = Some(token);
        Ok(())
    }

    /// Sends one request and waits, bounded, for its status.
    fn submit(&mut self, kind: RequestKind, request: &[u8]) -> Result<(), IommuError> {
        if self.requests_broken {
            return Err(IommuError::Broken);
        }
        assert!(request.len() <= REQUEST_CAPACITY);
        // SAFETY: no request is in flight (each `submit` either pops its request or marks the
        // request queue broken), so the request and tail areas are ours; they do not overlap each other
        // or the event buffers.
        let (payload, tail) = unsafe {
            (self.buffers.bytes(REQUEST_OFFSET, request.len()), self.buffers.bytes(TAIL_OFFSET, TAIL_LEN))
        };
        payload.copy_from_slice(request);
        // A status the device never wrote must not read as success (0 = OK).
        tail.fill(0xff);

        // SAFETY: both buffers stay valid until the driver is dropped and are not touched again
        // until popped; on timeout the request queue is marked broken and they are never reused.
        let token = unsafe { self.requests.add(&[&*payload], &mut [&mut *tail]) }?;
        if self.requests.should_notify() {
            self.transport.notify(REQUEST_QUEUE);
        }
        let requests = &self.requests;
        if time::poll_until(REQUEST_TIMEOUT, || requests.can_pop().then_some(())).is_none() {
            self.requests_broken = true;
            return Err(IommuError::Timeout(kind));
        }
        // SAFETY: the same buffers that were added under `token`.
        let written = match unsafe { self.requests.pop_used(token, &[&*payload], &mut [&mut *tail]) } {
            Ok(written) => written,
            Err(error) => {
                // The device completed something else: our buffers may still be in flight.
                self.requests_broken = true;
                return Err(error.into());
            }
        };
        if (written as usize) < 1 {
            return Err(IommuError::ShortReply { kind: Some(kind), len: written });
        }
        match RequestStatus::from_code(tail[0]) {
            None => Ok(()),
            Some(status) => Err(IommuError::Request { kind, status }),
        }
    }
}

/// Reads the device geometry. Fields whose feature was not negotiated take the spec's defaults.
/// 64-bit fields are read as two 32-bit halves: the PCI transport only guarantees 4-byte
/// alignment of the device configuration and refuses wider reads.
fn read_config<T: Transport>(transport: &T, negotiated: u64) -> Result<IommuConfig, IommuError> {
    let read_u64 = |offset: usize| -> Result<u64, IommuError> {
        let low = transport.read_config_space::<u32>(offset)?;
        let high = transport.read_config_space::<u32>(offset + 4)?;
        Ok(u64::from(low) | u64::from(high) << 32)
    };
    let page_size_mask = read_u64(CONFIG_PAGE_SIZE_MASK)?;
    let (input_start, input_end) = if negotiated & F_INPUT_RANGE != 0 {
        (read_u64(CONFIG_INPUT_START)?, read_u64(CONFIG_INPUT_END)?)
    } else {
        (0, u64::MAX)
    };
    let (domain_start, domain_end) = if negotiated & F_DOMAIN_RANGE != 0 {
        (
            transport.read_config_space::<u32>(CONFIG_DOMAIN_START)?,
            transport.read_config_space::<u32>(CONFIG_DOMAIN_END)?,
        )
    } else {
        (0, u32::MAX)
    };
    if page_size_mask == 0 || input_start > input_end || domain_start > domain_end {
        return Err(IommuError::InvalidConfig);
    }
    Ok(IommuConfig {
        page_size_mask,
        input_start,
        input_end,
        domain_start,
        domain_end,
        bypass_configurable: negotiated & F_BYPASS_CONFIG != 0,
    })
}
