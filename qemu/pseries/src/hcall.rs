//! PAPR hypercalls (`sc 1`): number in r3, arguments from r4, status back in r3, outputs from r4.

use core::arch::asm;

/// `H_PUT_TERM_CHAR`: write up to 16 bytes to a virtual terminal.
pub const H_PUT_TERM_CHAR: u64 = 0x58;
/// `KVMPPC_H_RTAS`: run the RTAS call whose argument buffer is at r4 (QEMU's RTAS entry).
pub const KVMPPC_H_RTAS: u64 = 0xf000;
/// `KVMPPC_H_VOF_CLIENT`: QEMU's Open Firmware client interface (what VOF's entry point calls).
pub const KVMPPC_H_VOF_CLIENT: u64 = 0xf005;

/// Makes hypercall `opcode` with up to six arguments; returns the status and the first three
/// outputs (r4..r6).
///
/// # Safety
///
/// Any argument the hypercall takes as a guest address must name memory that the call may read
/// and write for its duration (QEMU writes results there), owned by the caller.
pub unsafe fn hcall(opcode: u64, args: [u64; 6]) -> (i64, [u64; 3]) {
    let status: u64;
    let (out0, out1, out2): (u64, u64, u64);
    // SAFETY: `sc 1` enters the hypervisor (QEMU), which reads the registers given here, writes
    // r3..r12 and returns; the volatile registers are declared clobbered. Memory it touches is
    // the caller's (see the contract above).
    unsafe {
        asm!(
            "sc 1",
            inout("r3") opcode => status,
            inout("r4") args[0] => out0,
            inout("r5") args[1] => out1,
            inout("r6") args[2] => out2,
            inout("r7") args[3] => _,
            inout("r8") args[4] => _,
            inout("r9") args[5] => _,
            clobber_abi("C"),
        );
    }
    (status as i64, [out0, out1, out2])
}
