//! The device checks both kernels run: disk signature and write marker, block patterns, rng
//! buffers, frames between two NICs. Each prints one `PASS`/`FAIL` line through [`Report`].

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;
use virtio_drivers::transport::Transport;
use virtio_drivers::Hal;

use crate::blk::{self, Blk, BlkIoError, BlkRequest};
use crate::memory;
use crate::net::{Nic, MAX_FRAME};
use crate::patterns;
use crate::report::Report;
use crate::rng::VirtioRng;
use crate::time;
use crate::virtio::blk::SECTOR_SIZE;

/// Bytes a device's HAL bounced each way (to the device, from it), for the pattern check.
pub struct Bounced<'a> {
    /// Bytes of buffers the device reads.
    pub to_device: &'a AtomicU64,
    /// Bytes of buffers the device writes.
    pub from_device: &'a AtomicU64,
}

/// A sector transfer takes microseconds; this only bounds a broken device.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound for one frame to arrive.
pub const NET_TIMEOUT: Duration = Duration::from_secs(1);

/// The runner writes this at the start of the data disk; reading it proves data comes from the
/// disk, not from stale memory.
pub const DISK_SIGNATURE: &[u8] = b"CCDMA-DISK-SIGNATURE";
/// Written at the start of sector [`WRITE_SECTOR`]; the runner looks for it in the image after
/// QEMU exits, which proves the write reached the disk.
pub const WRITE_MARKER: &[u8] = b"CCDMA-WRITE-CHECK";
pub const WRITE_SECTOR: usize = 1;

/// Block patterns: (sectors, byte offset of the buffer from a 4 KiB boundary). Sizes from one
/// sector to the largest mapping a pool run holds (256 KiB); offsets make buffers start inside a
/// page and cross page boundaries.
pub const BLK_PATTERNS: &[(usize, usize)] = &[
    (1, 0),
    (1, 8),
    (2, 512),
    (3, 24),
    (7, 0),
    (8, 0),
    (8, 2048),
    (16, 8),
    (31, 64),
    (64, 0),
    (100, 512),
    (128, 0),
    (255, 8),
    (512, 0),
];
/// First sector the patterns use (the signature and marker live below).
pub const PATTERN_FIRST_SECTOR: usize = 64;

/// virtio-rng buffer sizes.
pub const RNG_SIZES: &[usize] = &[1, 16, 63, 512, 4096, 16384, 65536];
/// Frame sizes (Ethernet header included, FCS excluded).
pub const FRAME_SIZES: &[usize] = &[60, 61, 128, 333, 1000, 1500, MAX_FRAME];
/// Ethertype for the test frames (IEEE local experimental).
pub const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

pub fn check_disk_signature<H: Hal>(report: &mut Report, blk: &mut Blk<H>) {
    let result = BlkRequest::new(1).and_then(|request| blk::read(blk, request, 0, IO_TIMEOUT));
    match result {
        Ok(mut request) => {
            let found = request.data().starts_with(DISK_SIGNATURE);
            report.expect(
                "blk.read_signature",
                found,
                format_args!("sector 0 starts with the runner's signature: {found}"),
            );
        }
        Err(error) => report.fail("blk.read_signature", error),
    }
}

/// Writes the marker the runner finds in the image after QEMU exits.
pub fn check_write_marker<H: Hal>(report: &mut Report, blk: &mut Blk<H>) {
    let result = BlkRequest::new(1).and_then(|mut request| {
        let data = request.data();
        data.fill(0);
        data[..WRITE_MARKER.len()].copy_from_slice(WRITE_MARKER);
        blk::write(blk, request, WRITE_SECTOR, IO_TIMEOUT)
    });
    match result {
        Ok(_) => report.pass(
            "blk.write_marker",
            format_args!("marker written at sector {WRITE_SECTOR}; the runner checks the image"),
        ),
        Err(error) => report.fail("blk.write_marker", error),
    }
}

/// Writes every pattern of [`BLK_PATTERNS`], then reads each back and compares every byte.
pub fn check_blk_patterns<H: Hal>(report: &mut Report, blk: &mut Blk<H>, stats: &Bounced) {
    const NAME: &str = "blk.patterns";
    let largest =
        BLK_PATTERNS.iter().map(|&(sectors, offset)| sectors * SECTOR_SIZE + offset).max().unwrap_or(0);
    let (Some(write_buffer), Some(read_buffer), Some(scratch)) = (
        memory::leak_bytes(largest, 4096),
        memory::leak_bytes(largest, 4096),
        memory::leak_bytes(largest, 4096),
    ) else {
        return report.fail(NAME, "no memory for buffers");
    };
    let (mut writer, mut reader) =
        match (BlkRequest::with_buffer(write_buffer), BlkRequest::with_buffer(read_buffer)) {
            (Ok(writer), Ok(reader)) => (writer, reader),
            _ => return report.fail(NAME, "no memory for request headers"),
        };
    let to_before = stats.to_device.load(Ordering::Relaxed);
    let from_before = stats.from_device.load(Ordering::Relaxed);

    let mut sector = PATTERN_FIRST_SECTOR;
    let mut bytes = 0;
    for &(sectors, offset) in BLK_PATTERNS {
        let len = sectors * SECTOR_SIZE;
        let Some(data) = writer.select(offset, len) else {
            return report.fail(NAME, "pattern outside its buffer");
        };
        patterns::fill(data, sector as u64);
        writer = match blk::write(blk, writer, sector, IO_TIMEOUT) {
            Ok(writer) => writer,
            Err(error) => {
                return report.fail(NAME, format_args!("write of {sectors} sectors at {sector}: {error}"))
            }
        };
        sector += sectors + 3;
        bytes += len;
    }
    let mut sector = PATTERN_FIRST_SECTOR;
    for &(sectors, offset) in BLK_PATTERNS {
        let len = sectors * SECTOR_SIZE;
        let Some(data) = reader.select(offset, len) else {
            return report.fail(NAME, "pattern outside its buffer");
        };
        data.fill(0xee);
        reader = match blk::read(blk, reader, sector, IO_TIMEOUT) {
            Ok(reader) => reader,
            Err(error) => {
                return report.fail(NAME, format_args!("read of {sectors} sectors at {sector}: {error}"))
            }
        };
        if let Some(at) = patterns::check(reader.data(), sector as u64, scratch) {
            return report.fail(
                NAME,
                format_args!(
                    "{sectors} sectors at sector {sector} (buffer offset {offset}): first wrong byte at {at}"
                ),
            );
        }
        sector += sectors + 3;
    }
    let to_device = stats.to_device.load(Ordering::Relaxed) - to_before;
    let from_device = stats.from_device.load(Ordering::Relaxed) - from_before;
    report.expect(
        NAME,
        to_device >= bytes as u64 && from_device >= bytes as u64,
        format_args!(
            "{} transfers of 1..={} sectors at buffer offsets 0..=2048: {} KiB written, read back, every byte identical; bounced {} KiB to and {} KiB from the device",
            BLK_PATTERNS.len(),
            BLK_PATTERNS.iter().map(|&(sectors, _)| sectors).max().unwrap_or(0),
            bytes >> 10,
            to_device >> 10,
            from_device >> 10
        ),
    );
}

/// Benchmark: bytes written and read per device and round, in requests of [`BENCH_CHUNK`].
pub const BENCH_BYTES: usize = 16 << 20;
/// Timed rounds per device (the report gives the median).
pub const BENCH_ROUNDS: usize = 5;
pub const BENCH_CHUNK: usize = 128 << 10;
pub const BENCH_FIRST_SECTOR: usize = 4096;

/// Buffers of several sizes arrive filled by the device (check `<device>.sizes`).
pub fn check_rng<H: Hal, T: Transport>(report: &mut Report, device: &str, rng: &mut VirtioRng<H, T>) {
    let name = format_args!("{device}.sizes");
    let mut total = 0;
    for &size in RNG_SIZES {
        let Some(buffer) = memory::leak_bytes(size, 8) else {
            return report.fail(name, "no memory for buffers");
        };
        buffer.fill(0xaa);
        let (written, buffer) = match rng.fill(buffer, IO_TIMEOUT) {
            Ok(result) => result,
            Err(error) => return report.fail(name, format_args!("{size}-byte buffer: {error}")),
        };
        let data = &buffer[..written];
        let distinct = patterns::distinct_bytes(data);
        // From 16 bytes on, content tells: a buffer still all 0xaa never got the device's data,
        // all zeroes would be the bounce slot's initial fill coming back (each has a chance of
        // 2^-128 with random data). Random data of 4 KiB or more has nearly all 256 byte values.
        // Shorter buffers can only be checked by the length the device reports.
        let untouched = size >= 16 && (data.iter().all(|&b| b == 0xaa) || data.iter().all(|&b| b == 0));
        let varied = size < 4096 || distinct > 200;
        if written != size || untouched || !varied {
            return report.fail(
                name,
                format_args!("{size}-byte buffer: device wrote {written} bytes, {distinct} distinct values"),
            );
        }
        total += written;
    }
    report.pass(
        name,
        format_args!(
            "{} buffers of {:?} bytes filled with random data ({total} bytes)",
            RNG_SIZES.len(),
            RNG_SIZES
        ),
    );
}

/// Frames of every size in [`FRAME_SIZES`] go from each NIC to the other and arrive intact.
pub fn check_net<HA: Hal, HB: Hal>(report: &mut Report, a: &mut Nic<HA>, b: &mut Nic<HB>) {
    const NAME: &str = "net.exchange";
    let (Some(frame), Some(received)) = (memory::leak_bytes(MAX_FRAME, 8), memory::leak_bytes(2048, 8))
    else {
        return report.fail(NAME, "no memory for buffers");
    };
    let (mac_a, mac_b) = (a.mac(), b.mac());
    let mut frames = 0;
    let mut bytes = 0;
    for (index, &size) in FRAME_SIZES.iter().enumerate() {
        for a_to_b in [true, false] {
            let (dst, src) = if a_to_b { (mac_b, mac_a) } else { (mac_a, mac_b) };
            let seed = (index as u64) << 1 | u64::from(a_to_b);
            let frame = &mut frame[..size];
            frame[0..6].copy_from_slice(&dst);
            frame[6..12].copy_from_slice(&src);
            frame[12..14].copy_from_slice(&ETHERTYPE);
            patterns::fill(&mut frame[14..], seed);
            let sent = if a_to_b { a.send(frame, NET_TIMEOUT) } else { b.send(frame, NET_TIMEOUT) };
            let direction = if a_to_b { "net-a -> net-b" } else { "net-b -> net-a" };
            if let Err(error) = sent {
                return report.fail(NAME, format_args!("{direction}, {size} bytes: send: {error}"));
            }
            let got =
                if a_to_b { b.receive(received, NET_TIMEOUT) } else { a.receive(received, NET_TIMEOUT) };
            match got {
                Ok(len) if len == size && patterns::first_difference(&received[..len], frame).is_none() => {
                    frames += 1;
                    bytes += size;
                }
                Ok(len) => {
                    return report.fail(
                        NAME,
                        format_args!(
                            "{direction}: sent {size} bytes, received {len}, first difference at {:?}",
                            patterns::first_difference(&received[..len.min(2048)], frame)
                        ),
                    )
                }
                Err(error) => {
                    return report.fail(NAME, format_args!("{direction}, {size} bytes: receive: {error}"))
                }
            }
        }
    }
    report.pass(
        NAME,
        format_args!(
            "{frames} frames of {:?} bytes, each way between {} and {}, arrived intact ({bytes} bytes)",
            FRAME_SIZES,
            Mac(mac_a),
            Mac(mac_b)
        ),
    );
}

pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

/// Times the same I/O (write then read [`BENCH_BYTES`] in [`BENCH_CHUNK`] requests) on the data
/// blk through ccdma and on the baseline blk that uses its buffers in place.
pub fn run_bench<HM: Hal, HB: Hal>(
    report: &mut Report,
    managed: &mut Blk<HM>,
    baseline: &mut Blk<HB>,
    path: &str,
) {
    const NAME: &str = "bench.blk";
    let (Some(buffer), Some(scratch)) =
        (memory::leak_bytes(BENCH_CHUNK, 4096), memory::leak_bytes(BENCH_CHUNK, 4096))
    else {
        return report.fail(NAME, "no memory for buffers");
    };
    let mut request = match BlkRequest::with_buffer(buffer) {
        Ok(request) => request,
        Err(error) => return report.fail(NAME, error),
    };
    // One untimed round each (the host allocates the sparse images' blocks on first write), then
    // the timed rounds alternate between the two devices so drifts in the host hit both alike.
    let mut managed_times = [Duration::ZERO; BENCH_ROUNDS];
    let mut baseline_times = [Duration::ZERO; BENCH_ROUNDS];
    for round in 0..=BENCH_ROUNDS {
        let (next, managed_time) = match time_io(managed, request, scratch) {
            Ok(result) => result,
            Err(error) => return report.fail(NAME, format_args!("through ccdma: {error}")),
        };
        let (next, baseline_time) = match time_io(baseline, next, scratch) {
            Ok(result) => result,
            Err(error) => return report.fail(NAME, format_args!("baseline: {error}")),
        };
        request = next;
        if round > 0 {
            managed_times[round - 1] = managed_time;
            baseline_times[round - 1] = baseline_time;
        }
    }
    managed_times.sort_unstable();
    baseline_times.sort_unstable();
    let mbps = |time: Duration| (2 * BENCH_BYTES) as f64 / 1e6 / time.as_secs_f64().max(1e-9);
    let median = BENCH_ROUNDS / 2;
    let (managed_mbps, baseline_mbps) = (mbps(managed_times[median]), mbps(baseline_times[median]));
    report.pass(
        NAME,
        format_args!(
            "{} MiB written + read in {} KiB requests, median of {BENCH_ROUNDS} rounds: {path} {:.0} MB/s ({:.0}..{:.0}), outside ccdma {:.0} MB/s ({:.0}..{:.0}), ratio {:.2}",
            BENCH_BYTES >> 20,
            BENCH_CHUNK >> 10,
            managed_mbps,
            mbps(managed_times[BENCH_ROUNDS - 1]),
            mbps(managed_times[0]),
            baseline_mbps,
            mbps(baseline_times[BENCH_ROUNDS - 1]),
            mbps(baseline_times[0]),
            managed_mbps / baseline_mbps
        ),
    );
}

/// Writes then reads [`BENCH_BYTES`]; checks the last chunk read back. Returns the elapsed time.
fn time_io<H: Hal>(
    blk: &mut Blk<H>,
    mut request: BlkRequest,
    scratch: &mut [u8],
) -> Result<(BlkRequest, Duration), BenchError> {
    let chunks = BENCH_BYTES / BENCH_CHUNK;
    let sectors = BENCH_CHUNK / SECTOR_SIZE;
    patterns::fill(request.select(0, BENCH_CHUNK).ok_or(BenchError::Buffer)?, 42);
    let start = time::now().ok_or(BenchError::NoClock)?;
    for chunk in 0..chunks {
        request = blk::write(blk, request, BENCH_FIRST_SECTOR + chunk * sectors, IO_TIMEOUT)?;
    }
    for chunk in 0..chunks {
        request = blk::read(blk, request, BENCH_FIRST_SECTOR + chunk * sectors, IO_TIMEOUT)?;
    }
    let elapsed = time::now().ok_or(BenchError::NoClock)? - start;
    if let Some(at) = patterns::check(request.data(), 42, scratch) {
        return Err(BenchError::Mismatch(at));
    }
    Ok((request, elapsed))
}

enum BenchError {
    Buffer,
    NoClock,
    Io(BlkIoError),
    Mismatch(usize),
}

impl From<BlkIoError> for BenchError {
    fn from(error: BlkIoError) -> Self {
        Self::Io(error)
    }
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::Buffer => write!(f, "buffer too small"),
            Self::NoClock => write!(f, "no clock"),
            Self::Io(error) => write!(f, "{error}"),
            Self::Mismatch(at) => write!(f, "data read back differs at byte {at}"),
        }
    }
}
