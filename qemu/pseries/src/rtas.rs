//! RTAS through QEMU's `KVMPPC_H_RTAS` hypercall, with tokens read from `/rtas`.
//!
//! The kernel never instantiates RTAS: QEMU runs every RTAS call itself when the guest makes the
//! hypercall with the address of the argument buffer (token, nargs, nret, args, rets: big-endian
//! 32-bit cells).

use spin::Once;

use crate::hcall::{hcall, KVMPPC_H_RTAS};
use crate::of;

/// The RTAS functions the kernel uses, by token.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tokens {
    /// `power-off`.
    pub power_off: Option<u32>,
    /// `ibm,read-pci-config`.
    pub read_pci_config: Option<u32>,
    /// `ibm,write-pci-config`.
    pub write_pci_config: Option<u32>,
}

static TOKENS: Once<Tokens> = Once::new();

/// Reads the tokens from `/rtas`; returns them (also kept for [`tokens`]).
pub fn init() -> Tokens {
    *TOKENS.call_once(|| match of::find(b"/rtas\0") {
        Some(rtas) => Tokens {
            power_off: of::u32_prop(rtas, b"power-off\0"),
            read_pci_config: of::u32_prop(rtas, b"ibm,read-pci-config\0"),
            write_pci_config: of::u32_prop(rtas, b"ibm,write-pci-config\0"),
        },
        None => Tokens::default(),
    })
}

/// The tokens read by [`init`].
pub fn tokens() -> Tokens {
    TOKENS.get().copied().unwrap_or_default()
}

/// RTAS busy status: call again.
pub const BUSY: i32 = -2;
/// Retries of a busy RTAS call before giving up.
const BUSY_RETRIES: u32 = 1000;

/// Calls RTAS function `token` with `args`; returns the `N` return cells (the first is the status)
/// or `None` if the hypercall itself failed. Busy statuses (-2 and 9900..9905) are retried.
pub fn call<const N: usize>(token: u32, args: &[u32]) -> Option<[u32; N]> {
    assert!(args.len() + N <= 16 && N >= 1);
    for _ in 0..BUSY_RETRIES {
        let mut block = [0u32; 19];
        block[0] = token.to_be();
        block[1] = (args.len() as u32).to_be();
        block[2] = (N as u32).to_be();
        for (cell, arg) in block[3..].iter_mut().zip(args) {
            *cell = arg.to_be();
        }
        // SAFETY: the block lives on this stack frame for the call; RTAS writes only its return
        // cells, inside the block (nret = N, bounded above).
        let (status, _) = unsafe { hcall(KVMPPC_H_RTAS, [block.as_mut_ptr() as u64, 0, 0, 0, 0, 0]) };
        if status != 0 {
            return None;
        }
        let mut out = [0u32; N];
        for (value, cell) in out.iter_mut().zip(&block[3 + args.len()..]) {
            *value = u32::from_be(*cell);
        }
        let rtas_status = out[0] as i32;
        if rtas_status != BUSY && !(9900..=9905).contains(&rtas_status) {
            return Some(out);
        }
    }
    None
}

/// Powers the machine off (QEMU exits with status 0).
pub fn power_off() -> ! {
    if let Some(token) = tokens().power_off {
        let _ = call::<1>(token, &[u32::MAX, u32::MAX]);
    }
    loop {
        core::hint::spin_loop();
    }
}
