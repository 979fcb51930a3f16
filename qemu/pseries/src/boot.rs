//! Entry code: from the firmware's state (32-bit, big-endian, real mode) to Rust.
//!
//! QEMU's firmware (VOF) jumps to the first byte of the image in 32-bit big-endian mode with the
//! MMU off. The code below, in order:
//! 1. little-endian build only: flips `MSR[LE]` through `rfid` with instructions stored
//!    byte-swapped, so that they decode right while the CPU is still big-endian (and are skipped
//!    by a CPU that is already little-endian: the first word decodes as a no-op trap in LE and as
//!    `b .+8` in BE);
//! 2. sets `MSR[SF]` (64-bit) and `MSR[FP|VEC|VSX]`: LLVM's ppc64 code uses FP and vector
//!    registers even in prologues;
//! 3. sets the stack, zeroes `.bss`, loads the TOC pointer and calls [`crate::kmain`].
//!
//! The kernel never turns translation on: effective addresses are physical ones (QEMU ignores
//! the top four bits in real mode), so every pointer is also a physical address.

/// Bytes of the boot stack.
pub const STACK_SIZE: usize = 256 << 10;

#[repr(C, align(4096))]
struct Stack([u8; STACK_SIZE]);

/// The boot stack (in `.bss`; the entry code sets r1 to its top before `.bss` is zeroed and never
/// touches the stack before that).
#[no_mangle]
static mut BOOT_STACK: Stack = Stack([0; STACK_SIZE]);

// MSR bits: SF = 1 << 63, VEC = 1 << 25, VSX = 1 << 23, FP = 1 << 13.
#[cfg(target_endian = "little")]
core::arch::global_asm!(
    r#"
    .section .text.entry, "ax"
    .globl _start
_start:
    tdi 0, 0, 0x48          # BE: b .+8 (into the trampoline); LE: never traps
    b 1f                    # already little-endian
    # Big-endian encodings, stored byte-swapped so a big-endian CPU reads them right.
    .long 0xa600607d        # mfmsr r11
    .long 0x01006b69        # xori r11, r11, 1       (MSR_LE)
    .long 0x00004039        # li r10, 0
    .long 0x6401417d        # mtmsrd r10, 1          (EE = RI = 0 across the switch)
    .long 0x05009f42        # bcl 20, 31, .+4
    .long 0xa602487d        # mflr r10
    .long 0x14004a39        # addi r10, r10, 20      (the instruction after rfid)
    .long 0xa6035a7d        # mtsrr0 r10
    .long 0xa6037b7d        # mtsrr1 r11
    .long 0x2400004c        # rfid
1:
    mfmsr 11
    li 12, 1
    rldicr 12, 12, 63, 0
    or 11, 11, 12
    lis 12, 0x0280
    ori 12, 12, 0x2000
    or 11, 11, 12
    mtmsrd 11
    isync
    lis 1, (BOOT_STACK + {stack_size} - 256)@ha
    addi 1, 1, (BOOT_STACK + {stack_size} - 256)@l
    li 0, 0
    std 0, 0(1)
    lis 3, __bss_start@ha
    addi 3, 3, __bss_start@l
    lis 4, __bss_end@ha
    addi 4, 4, __bss_end@l
2:
    cmpld 3, 4
    bge 3f
    std 0, 0(3)
    addi 3, 3, 8
    b 2b
3:
    # The stack is in .bss: zeroing it cleared the back chain, which is what we want.
    lis 2, .TOC.@ha
    addi 2, 2, .TOC.@l
    lis 12, kmain@ha
    addi 12, 12, kmain@l
    mtctr 12
    bctrl
4:
    b 4b
    "#,
    stack_size = const STACK_SIZE,
);

#[cfg(target_endian = "big")]
core::arch::global_asm!(
    r#"
    .section .text.entry, "ax"
    .globl _start
_start:
    mfmsr 11
    li 12, 1
    rldicr 12, 12, 63, 0
    or 11, 11, 12
    lis 12, 0x0280
    ori 12, 12, 0x2000
    or 11, 11, 12
    mtmsrd 11
    isync
    lis 1, (BOOT_STACK + {stack_size} - 256)@ha
    addi 1, 1, (BOOT_STACK + {stack_size} - 256)@l
    li 0, 0
    lis 3, __bss_start@ha
    addi 3, 3, __bss_start@l
    lis 4, __bss_end@ha
    addi 4, 4, __bss_end@l
2:
    cmpld 3, 4
    bge 3f
    std 0, 0(3)
    addi 3, 3, 8
    b 2b
3:
    # ELFv1: `kmain` names a function descriptor (entry address, TOC pointer, environment).
    lis 11, kmain@ha
    addi 11, 11, kmain@l
    ld 12, 0(11)
    ld 2, 8(11)
    mtctr 12
    bctrl
4:
    b 4b
    "#,
    stack_size = const STACK_SIZE,
);
