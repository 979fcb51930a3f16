//! The C memory routines and the personality symbol that the host target's prebuilt `core`
//! expects from the platform.
//!
//! On `x86_64-unknown-linux-gnu` these normally come from libc, which this kernel does not link.
//! Each routine is string instructions in inline assembly: written as a Rust loop, LLVM would
//! recognise the idiom and compile the body of `memcpy` into a call to `memcpy`.

use core::arch::asm;

/// # Safety
///
/// `dest` and `src` must be valid for `n` bytes and must not overlap.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // Eight bytes per iteration, then the tail: under TCG every iteration of a string
    // instruction costs about the same whatever its width, and bounce copies are most of what
    // this kernel does with its CPU.
    // SAFETY: the caller guarantees both ranges are valid and disjoint; `rep movsq` copies
    // `n / 8` quadwords forwards and leaves RSI/RDI just past them, where `rep movsb` copies the
    // remaining `n % 8` bytes (DF is clear: the ABI requires it at every call).
    unsafe {
        asm!(
            "rep movsq",
            "mov rcx, {tail}",
            "rep movsb",
            tail = in(reg) n % 8,
            inout("rcx") n / 8 => _,
            inout("rdi") dest => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags)
        );
    }
    dest
}

/// # Safety
///
/// `dest` and `src` must be valid for `n` bytes; they may overlap.
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // No harmful overlap: `dest` is below `src` or past its end, so a forward copy is safe.
        // SAFETY: same contract as `memcpy` for a forward copy.
        unsafe { memcpy(dest, src, n) }
    } else {
        // `dest` overlaps the tail of `src`: copy backwards with the direction flag set, and
        // clear it again because the ABI requires DF = 0 everywhere else.
        // SAFETY: the caller guarantees both ranges are valid for `n` bytes; starting at the last
        // byte of each and stepping down covers exactly those ranges.
        unsafe {
            asm!(
                "std",
                "rep movsb",
                "cld",
                inout("rcx") n => _,
                inout("rdi") dest.add(n).wrapping_sub(1) => _,
                inout("rsi") src.add(n).wrapping_sub(1) => _,
                options(nostack)
            );
        }
        dest
    }
}

/// # Safety
///
/// `dest` must be valid for writes of `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, value: i32, n: usize) -> *mut u8 {
    // The byte replicated into all eight bytes of RAX, for `rep stosq` (see `memcpy` for why).
    let pattern = u64::from(value as u8) * 0x0101_0101_0101_0101;
    // SAFETY: the caller guarantees `dest` is valid for `n` bytes; `rep stosq` writes `n / 8`
    // quadwords of the replicated byte and `rep stosb` the remaining `n % 8` bytes, exactly the
    // bytes C's memset writes.
    unsafe {
        asm!(
            "rep stosq",
            "mov rcx, {tail}",
            "rep stosb",
            tail = in(reg) n % 8,
            inout("rcx") n / 8 => _,
            inout("rdi") dest => _,
            in("rax") pattern,
            options(nostack, preserves_flags)
        );
    }
    dest
}

/// # Safety
///
/// `a` and `b` must be valid for reads of `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // Volatile reads keep LLVM from turning this loop back into a call to `memcmp`.
        // SAFETY: the caller guarantees both ranges are valid for `n` bytes and `i < n`.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// # Safety
///
/// `a` and `b` must be valid for reads of `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as `memcmp`.
    unsafe { memcmp(a, b, n) }
}

/// Referenced by the prebuilt `core`/`alloc` of the host target, never called: the kernel is
/// built with `panic = "abort"` and never unwinds.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}
