//! PVH entry: from QEMU's 32-bit hand-off to Rust's `kmain` in 64-bit long mode.
//!
//! QEMU's `-kernel` loads an ELF64 whose `XEN_ELFNOTE_PHYS32_ENTRY` note names a 32-bit entry
//! point. It is entered in flat protected mode with paging off and `EBX` = physical address of the
//! `hvm_start_info` structure. The trampoline below:
//!
//! 1. zeroes `.bss` (page tables, stack and every Rust static live there);
//! 2. builds identity-mapping page tables: 0..4 GiB with 2 MiB pages (the PCI hole from
//!    0xB000_0000 uncached), and RAM above 4 GiB with 1 GiB pages up to 512 GiB if CPUID reports
//!    `pdpe1gb`, otherwise 2 MiB pages up to 16 GiB;
//! 3. enables PAE, long mode, paging and SSE (`CR0.EM` clear, `CR0.MP`, `CR4.OSFXSR`,
//!    `CR4.OSXMMEXCPT`): the compiler emits SSE instructions for ordinary Rust code;
//! 4. loads a 64-bit GDT, jumps to 64-bit code, sets the stack and calls
//!    `kmain(start_info_phys)`.
//!
//! Because the map is an identity map, a physical address is also a valid pointer: see
//! [`identity_map_limit`].

use core::arch::global_asm;

global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                     /* name size: "Xen\0" */
    .long 8                     /* descriptor size */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_start32
    .balign 4

    .section .text.boot, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    movl %ebx, %esi             /* hvm_start_info: kept in ESI until kmain */

    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb

    movl $boot_stack_top, %esp

    movl $boot_pdpt, %eax       /* PML4[0] -> PDPT */
    orl $0x3, %eax
    movl %eax, boot_pml4

    xorl %ecx, %ecx             /* PDPT[0..4] -> PD[0..4] */
1:  movl %ecx, %eax
    shll $12, %eax
    addl $boot_pd, %eax
    orl $0x3, %eax
    movl %eax, boot_pdpt(,%ecx,8)
    incl %ecx
    cmpl $4, %ecx
    jb 1b

    xorl %ecx, %ecx             /* PD[0..2048]: 0..4 GiB in 2 MiB pages */
2:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax             /* present | writable | page size */
    cmpl $0x580, %ecx           /* 0xB000_0000 >> 21: PCI ECAM and BARs */
    jb 3f
    orl $0x18, %eax             /* write-through | cache disable */
3:  movl %eax, boot_pd(,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jb 2b

    movl $0x80000000, %eax      /* 1 GiB pages available? */
    cpuid
    cmpl $0x80000001, %eax
    jb 5f
    movl $0x80000001, %eax
    cpuid
    btl $26, %edx
    jnc 5f

    movl $4, %ecx               /* PDPT[4..512]: 4..512 GiB in 1 GiB pages */
4:  movl %ecx, %eax
    shll $30, %eax
    orl $0x83, %eax
    movl %eax, boot_pdpt(,%ecx,8)
    movl %ecx, %eax
    shrl $2, %eax
    movl %eax, boot_pdpt+4(,%ecx,8)
    incl %ecx
    cmpl $512, %ecx
    jb 4b
    movl $512, boot_identity_map_gib
    jmp 7f

5:  movl $4, %ecx               /* PDPT[4..16] -> PD[4..16] */
51: movl %ecx, %eax
    shll $12, %eax
    addl $boot_pd, %eax
    orl $0x3, %eax
    movl %eax, boot_pdpt(,%ecx,8)
    incl %ecx
    cmpl $16, %ecx
    jb 51b
    movl $2048, %ecx            /* PD[2048..8192]: 4..16 GiB in 2 MiB pages */
6:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, boot_pd(,%ecx,8)
    movl %ecx, %eax
    shrl $11, %eax
    movl %eax, boot_pd+4(,%ecx,8)
    incl %ecx
    cmpl $8192, %ecx
    jb 6b
    movl $16, boot_identity_map_gib

7:  movl $boot_pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x620, %eax            /* PAE (5) | OSFXSR (9) | OSXMMEXCPT (10) */
    movl %eax, %cr4
    movl $0xC0000080, %ecx      /* EFER */
    rdmsr
    orl $0x100, %eax            /* LME */
    wrmsr
    movl %cr0, %eax
    andl $0xFFFFFFFB, %eax      /* clear EM: no x87 emulation trap */
    orl $0x80000003, %eax       /* PG | MP | PE */
    movl %eax, %cr0
    lgdt boot_gdt_pointer
    ljmpl $0x08, $pvh_start64

    .code64
pvh_start64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movq $boot_stack_top, %rsp
    movl %esi, %edi             /* kmain(start_info_phys) */
    call kmain
8:  cli
    hlt
    jmp 8b

    .section .rodata.boot, "a"
    .balign 8
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF    /* 0x08: 64-bit code */
    .quad 0x00CF92000000FFFF    /* 0x10: data */
boot_gdt_end:
boot_gdt_pointer:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096 * 16
boot_stack:
    .skip 65536
boot_stack_top:
    .global boot_identity_map_gib
boot_identity_map_gib:
    .skip 4

    /* Back to .text: global_asm blocks may be emitted one after another into one assembly
       file, and the next must not land in this nobits section. */
    .text
    "#,
    options(att_syntax)
);

extern "C" {
    /// Written once by the trampoline before any Rust code runs: how many GiB from address 0
    /// the identity map covers.
    static boot_identity_map_gib: u32;
}

/// The first address not covered by the boot identity map. Physical addresses below it can be
/// used as pointers directly.
pub fn identity_map_limit() -> u64 {
    // SAFETY: the trampoline wrote this `u32` before calling `kmain` and nothing writes it
    // afterwards, so a plain read cannot race.
    let gib = unsafe { boot_identity_map_gib };
    u64::from(gib) << 30
}
