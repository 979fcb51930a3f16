//! Console output on the hypervisor's virtual terminal 0 (`H_PUT_TERM_CHAR`).

use spin::Mutex;

use crate::hcall::{hcall, H_PUT_TERM_CHAR};

/// Busy answers tolerated per chunk before a chunk is dropped (the console must never hang).
const BUSY_RETRIES: u32 = 1000;

struct Terminal;

impl Terminal {
    fn put(&self, bytes: &[u8]) {
        for chunk in bytes.chunks(16) {
            let mut packed = [0u8; 16];
            packed[..chunk.len()].copy_from_slice(chunk);
            // The bytes go in r6/r7 in memory order, i.e. as big-endian register values.
            let hi = u64::from_be_bytes(packed[..8].try_into().unwrap_or([0; 8]));
            let lo = u64::from_be_bytes(packed[8..].try_into().unwrap_or([0; 8]));
            for _ in 0..BUSY_RETRIES {
                // SAFETY: H_PUT_TERM_CHAR takes no guest addresses.
                let (status, _) = unsafe { hcall(H_PUT_TERM_CHAR, [0, chunk.len() as u64, hi, lo, 0, 0]) };
                if status != ccdma::iommu::hcall::H_BUSY {
                    break;
                }
            }
        }
    }
}

static CONSOLE: Mutex<Terminal> = Mutex::new(Terminal);

/// Writes `s` to the console (the common crate's console hook).
pub fn write_str(s: &str) {
    CONSOLE.lock().put(s.as_bytes());
}
