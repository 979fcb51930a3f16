//! CPU exception reporting.
//!
//! Without an IDT, any exception triple-faults and QEMU exits with status 0 and no clue. Each of
//! the 32 exception vectors gets a small assembly stub that calls [`exception_handler`], which
//! prints the vector, error code, faulting RIP and CR2, then exits with the panic status.
//! Interrupts stay disabled throughout, so no other vector is ever raised.

use core::arch::global_asm;
use spin::Mutex;
use x86_64::structures::DescriptorTablePointer;
use x86_64::VirtAddr;

use crate::exit::{exit_qemu, ExitCode};

/// Vectors that push an error code themselves; the others get a zero pushed by their stub.
macro_rules! exception_stubs {
    ($($vector:literal $kind:ident),* $(,)?) => {
        global_asm!(
            $(
                concat!(".global exception_stub_", $vector),
                concat!("exception_stub_", $vector, ":"),
                exception_stubs!(@push $kind),
                concat!("push ", $vector),
                "jmp exception_common",
            )*
            "exception_common:",
            "mov rdi, [rsp]",        // vector
            "mov rsi, [rsp + 8]",    // error code
            "mov rdx, [rsp + 16]",   // RIP of the faulting instruction
            "mov rcx, cr2",          // faulting address for page faults
            "and rsp, -16",          // the handler may use SSE: align the stack
            "call exception_handler",
            "ud2",
            ".section .rodata.exception_stub_table, \"a\"",
            ".balign 8",
            ".global exception_stub_table",
            "exception_stub_table:",
            $( concat!(".quad exception_stub_", $vector), )*
            ".text",
        );
    };
    (@push code) => { "" };
    (@push none) => { "push 0" };
}

exception_stubs!(
    0 none, 1 none, 2 none, 3 none, 4 none, 5 none, 6 none, 7 none,
    8 code, 9 none, 10 code, 11 code, 12 code, 13 code, 14 code, 15 none,
    16 none, 17 code, 18 none, 19 none, 20 none, 21 code, 22 none, 23 none,
    24 none, 25 none, 26 none, 27 none, 28 none, 29 code, 30 code, 31 none,
);

extern "C" {
    /// Addresses of the 32 stubs above, in vector order.
    static exception_stub_table: [u64; 32];
}

/// Kernel code segment selector set up by the boot trampoline's GDT.
const KERNEL_CODE_SELECTOR: u64 = 0x08;
/// Present, DPL 0, 64-bit interrupt gate (interrupts stay disabled in the handler).
const INTERRUPT_GATE: u64 = 0x8E;

/// The IDT: 32 16-byte gates. Lives in a static so the CPU can read it for the whole run.
static IDT: Mutex<[[u64; 2]; 32]> = Mutex::new([[0; 2]; 32]);

const EXCEPTION_NAMES: [&str; 32] = [
    "divide error",
    "debug",
    "NMI",
    "breakpoint",
    "overflow",
    "bound range",
    "invalid opcode",
    "device not available",
    "double fault",
    "coprocessor segment overrun",
    "invalid TSS",
    "segment not present",
    "stack fault",
    "general protection",
    "page fault",
    "reserved",
    "x87 floating point",
    "alignment check",
    "machine check",
    "SIMD floating point",
    "virtualization",
    "control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "hypervisor injection",
    "VMM communication",
    "security",
    "reserved",
];

/// Installs the IDT. Call once, early.
pub fn init() {
    // SAFETY: the table is initialised data in `.rodata`, written by the assembler and never
    // modified.
    let stubs = unsafe { &exception_stub_table };
    let mut idt = IDT.lock();
    for (gate, &handler) in idt.iter_mut().zip(stubs.iter()) {
        gate[0] = (handler & 0xffff)
            | KERNEL_CODE_SELECTOR << 16
            | INTERRUPT_GATE << 40
            | ((handler >> 16) & 0xffff) << 48;
        gate[1] = handler >> 32;
    }
    let pointer = DescriptorTablePointer {
        limit: (size_of::<[[u64; 2]; 32]>() - 1) as u16,
        base: VirtAddr::new(idt.as_ptr() as u64),
    };
    // SAFETY: the IDT is a static that outlives every use; its gates point at the stubs above,
    // which run on the current stack and never return to the faulting code.
    unsafe { x86_64::instructions::tables::lidt(&pointer) };
}

/// Called by the stubs. Reports the exception and stops the machine.
#[no_mangle]
extern "C" fn exception_handler(vector: u64, error_code: u64, rip: u64, cr2: u64) -> ! {
    let name = EXCEPTION_NAMES.get(vector as usize).copied().unwrap_or("unknown");
    crate::println!(
        "PANIC: CPU exception {vector} ({name}), error code {error_code:#x}, rip {rip:#x}, cr2 {cr2:#x}"
    );
    exit_qemu(ExitCode::Panic)
}
