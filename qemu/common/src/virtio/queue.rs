//! A split virtqueue (virtio 1.x, 2.7) whose descriptors and rings are little-endian whatever the
//! CPU's byte order. The API follows virtio-drivers' `VirtQueue` (add, peek_used, pop_used), and
//! all memory the device sees comes from the HAL `H`: the rings from `dma_alloc` (given back when
//! the queue is dropped, after its owner reset the device), each buffer through `share`/`unshare`.

use core::marker::PhantomData;
use core::ptr::{addr_of_mut, NonNull};
use core::sync::atomic::{fence, Ordering};
use virtio_drivers::transport::Transport;
use virtio_drivers::{BufferDirection, Error, Hal, PhysAddr, Result, PAGE_SIZE};

use super::le;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
/// Bytes per descriptor: addr (8), len (4), flags (2), next (2).
const DESC_SIZE: usize = 16;
/// Most buffers in one chain (blk: header, data, status).
const MAX_CHAIN: usize = 4;

/// A split virtqueue of `SIZE` descriptors (a power of two), in one page of DMA memory.
pub struct LeQueue<H: Hal, const SIZE: usize> {
    ring: NonNull<u8>,
    ring_bus: PhysAddr,
    queue: u16,
    /// Head of the free descriptor list (chained through a shadow, not through device memory).
    free_head: u16,
    free_next: [u16; SIZE],
    free_count: usize,
    avail_idx: u16,
    last_used: u16,
    /// Per head: the chain's descriptors, bus addresses and lengths as added (never read back
    /// from memory the device can write).
    chains: [[(u16, PhysAddr, u32); MAX_CHAIN]; SIZE],
    chain_len: [usize; SIZE],
    _hal: PhantomData<H>,
}

impl<H: Hal, const SIZE: usize> LeQueue<H, SIZE> {
    const AVAIL: usize = DESC_SIZE * SIZE;
    /// The used ring, 4-byte aligned after the avail ring (flags, idx, ring[SIZE], used_event).
    const USED: usize = (Self::AVAIL + 6 + 2 * SIZE).next_multiple_of(4);
    const BYTES: usize = Self::USED + 6 + 8 * SIZE;

    /// Sets up queue `queue` of the device behind `transport` straight into `slot`: no copy of the
    /// queue (1.2 KiB at 16 descriptors: its chain bookkeeping) in any stack frame.
    ///
    /// # Safety
    /// `slot` is aligned and valid for writes of a queue; what it held is overwritten, not dropped.
    /// On `Ok` it holds an initialised queue; on `Err` it is left as it was.
    pub unsafe fn init_at<T: Transport>(slot: *mut Self, transport: &mut T, queue: u16) -> Result<()> {
        let (ring_bus, ring) = Self::set_up(transport, queue)?;
        // SAFETY: `slot` is valid for writes (the caller's contract); each field is written once.
        // `chains` and `chain_len` are integers, for which all-zero bytes are the value `new` gives.
        unsafe {
            addr_of_mut!((*slot).ring).write(ring);
            addr_of_mut!((*slot).ring_bus).write(ring_bus);
            addr_of_mut!((*slot).queue).write(queue);
            addr_of_mut!((*slot).free_head).write(0);
            let free_next = addr_of_mut!((*slot).free_next).cast::<u16>();
            for i in 0..SIZE {
                free_next.add(i).write((i + 1) as u16);
            }
            addr_of_mut!((*slot).free_count).write(SIZE);
            addr_of_mut!((*slot).avail_idx).write(0);
            addr_of_mut!((*slot).last_used).write(0);
            addr_of_mut!((*slot).chains).write_bytes(0, 1);
            addr_of_mut!((*slot).chain_len).write_bytes(0, 1);
            addr_of_mut!((*slot)._hal).write(PhantomData);
        }
        Ok(())
    }

    /// Checks the queue can be set up, allocates its ring page and hands the ring to the device.
    fn set_up<T: Transport>(transport: &mut T, queue: u16) -> Result<(PhysAddr, NonNull<u8>)> {
        if !SIZE.is_power_of_two() || Self::BYTES > PAGE_SIZE || SIZE > u16::MAX as usize {
            return Err(Error::InvalidParam);
        }
        if transport.queue_used(queue) {
            return Err(Error::AlreadyUsed);
        }
        if transport.max_queue_size(queue) < SIZE as u32 {
            return Err(Error::InvalidParam);
        }
        let (ring_bus, ring) = H::dma_alloc(1, BufferDirection::Both);
        if ring_bus == 0 {
            return Err(Error::DmaError);
        }
        transport.queue_set(
            queue,
            SIZE as u32,
            ring_bus,
            ring_bus + Self::AVAIL as u64,
            ring_bus + Self::USED as u64,
        );
        Ok((ring_bus, ring))
    }

    /// Sets up queue `queue` of the device behind `transport`.
    pub fn new<T: Transport>(transport: &mut T, queue: u16) -> Result<Self> {
        let (ring_bus, ring) = Self::set_up(transport, queue)?;
        let mut free_next = [0; SIZE];
        for (i, next) in free_next.iter_mut().enumerate() {
            *next = (i + 1) as u16;
        }
        Ok(Self {
            ring,
            ring_bus,
            queue,
            free_head: 0,
            free_next,
            free_count: SIZE,
            avail_idx: 0,
            last_used: 0,
            chains: [[(0, 0, 0); MAX_CHAIN]; SIZE],
            chain_len: [0; SIZE],
            _hal: PhantomData,
        })
    }

    fn at(&self, offset: usize) -> *mut u8 {
        // SAFETY: callers pass offsets inside the ring layout, which `BYTES <= PAGE_SIZE` keeps
        // inside the page `dma_alloc` gave.
        unsafe { self.ring.as_ptr().add(offset) }
    }

    fn write_descriptor(&mut self, index: u16, bus: PhysAddr, len: u32, flags: u16, next: u16) {
        let base = usize::from(index) * DESC_SIZE;
        // SAFETY: descriptor `index < SIZE` lies in the ring page, 8-byte aligned.
        unsafe {
            le::write64(self.at(base), bus);
            le::write32(self.at(base + 8), len);
            le::write16(self.at(base + 12), flags);
            le::write16(self.at(base + 14), next);
        }
    }

    /// Adds a chain: `inputs` for the device to read, then `outputs` for it to write. Each buffer
    /// is shared through `H`. Returns the chain's token (its head).
    ///
    /// # Safety
    /// The buffers must stay valid and untouched until [`LeQueue::pop_used`] returns them.
    pub unsafe fn add(&mut self, inputs: &[&[u8]], outputs: &mut [&mut [u8]]) -> Result<u16> {
        let count = inputs.len() + outputs.len();
        if count == 0 || count > MAX_CHAIN {
            return Err(Error::InvalidParam);
        }
        if count > self.free_count {
            return Err(Error::QueueFull);
        }
        let head = self.free_head;
        let mut index = head;
        let mut chain = [(0, 0, 0); MAX_CHAIN];
        let buffers = inputs
            .iter()
            .map(|b| (NonNull::from(*b), BufferDirection::DriverToDevice))
            .chain(outputs.iter_mut().map(|b| (NonNull::from(&mut **b), BufferDirection::DeviceToDriver)));
        for (n, (buffer, direction)) in buffers.enumerate() {
            // SAFETY: the caller keeps the buffer valid until `pop_used`, which unshares it.
            let bus = unsafe { H::share(buffer, direction) };
            let next = self.free_next[usize::from(index)];
            let last = n + 1 == count;
            let mut flags = if last { 0 } else { DESC_F_NEXT };
            if direction == BufferDirection::DeviceToDriver {
                flags |= DESC_F_WRITE;
            }
            self.write_descriptor(index, bus, buffer.len() as u32, flags, if last { 0 } else { next });
            chain[n] = (index, bus, buffer.len() as u32);
            index = next;
        }
        self.free_head = index;
        self.free_count -= count;
        self.chains[usize::from(head)] = chain;
        self.chain_len[usize::from(head)] = count;
        let slot = usize::from(self.avail_idx) % SIZE;
        // SAFETY: avail ring entry `slot` and idx lie in the ring page, 2-byte aligned.
        unsafe { le::write16(self.at(Self::AVAIL + 4 + 2 * slot), head) };
        // The descriptors and the ring entry before the index that publishes them.
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // SAFETY: as above.
        unsafe { le::write16(self.at(Self::AVAIL + 2), self.avail_idx) };
        fence(Ordering::SeqCst);
        Ok(head)
    }

    /// Tells the device about new buffers.
    pub fn notify<T: Transport>(&self, transport: &mut T) {
        transport.notify(self.queue);
    }

    /// The token of the next chain the device has finished with, if any.
    pub fn peek_used(&self) -> Option<u16> {
        // SAFETY: the used ring's idx lies in the ring page, 2-byte aligned.
        let used_idx = unsafe { le::read16(self.at(Self::USED + 2)) };
        if used_idx == self.last_used {
            return None;
        }
        // The entry after the index that published it.
        fence(Ordering::SeqCst);
        let slot = usize::from(self.last_used) % SIZE;
        // SAFETY: used ring entry `slot` (id: u32) lies in the ring page, 4-byte aligned.
        let id = unsafe { le::read32(self.at(Self::USED + 4 + 8 * slot)) };
        Some(id as u16)
    }

    /// Takes back chain `token` (the next used one) and unshares its buffers, which must be the
    /// ones it was added with. Returns the length the device says it wrote.
    ///
    /// # Safety
    /// `inputs` and `outputs` must be the buffers passed to [`LeQueue::add`] for `token`.
    pub unsafe fn pop_used(
        &mut self,
        token: u16,
        inputs: &[&[u8]],
        outputs: &mut [&mut [u8]],
    ) -> Result<u32> {
        if self.peek_used() != Some(token) || usize::from(token) >= SIZE {
            return Err(Error::WrongToken);
        }
        let slot = usize::from(self.last_used) % SIZE;
        // SAFETY: used ring entry `slot` (len: u32) lies in the ring page, 4-byte aligned.
        let written = unsafe { le::read32(self.at(Self::USED + 8 + 8 * slot)) };
        let count = self.chain_len[usize::from(token)];
        if count != inputs.len() + outputs.len() {
            return Err(Error::InvalidParam);
        }
        let chain = self.chains[usize::from(token)];
        let buffers = inputs
            .iter()
            .map(|b| (NonNull::from(*b), BufferDirection::DriverToDevice))
            .chain(outputs.iter_mut().map(|b| (NonNull::from(&mut **b), BufferDirection::DeviceToDriver)));
        for ((_, bus, _), (buffer, direction)) in chain[..count].iter().zip(buffers) {
            // SAFETY: shared by `add` for this chain with the same buffer and direction.
            unsafe { H::unshare(*bus, buffer, direction) };
        }
        // Back on the free list, in chain order.
        let last = chain[count - 1].0;
        self.free_next[usize::from(last)] = self.free_head;
        for n in (0..count - 1).rev() {
            self.free_next[usize::from(chain[n].0)] = chain[n + 1].0;
        }
        self.free_head = chain[0].0;
        self.free_count += count;
        self.chain_len[usize::from(token)] = 0;
        self.last_used = self.last_used.wrapping_add(1);
        Ok(written)
    }

    /// Bus address of the ring page.
    pub fn ring_bus(&self) -> PhysAddr {
        self.ring_bus
    }
}

impl<H: Hal, const SIZE: usize> Drop for LeQueue<H, SIZE> {
    fn drop(&mut self) {
        // SAFETY: the page came from `H::dma_alloc(1, ..)` in `new` and is given back once. Every
        // owner resets its device before its queues go (the drivers' `Drop`, or the transport
        // declared before the queue), so the device no longer uses the rings.
        unsafe { H::dma_dealloc(self.ring_bus, self.ring, 1) };
    }
}
