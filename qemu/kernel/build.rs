//! Passes the kernel's linker script with an absolute path, so the build works from any checkout
//! and any working directory; compiles the C code that calls ccdma's C interface (`c/ffi_check.c`,
//! check `ffi.c_driver`) freestanding, with the kernel's own ABI constraints, into a static library.

use std::path::Path;
use std::process::Command;

fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg-bins=-T{manifest_dir}/linker.ld");
    println!("cargo:rerun-if-changed=linker.ld");
    build_c(Path::new(&manifest_dir));
}

fn build_c(dir: &Path) {
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let out = Path::new(&out);
    let source = dir.join("c/ffi_check.c");
    let include = dir.join("../../ffi/include");
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-changed={}", include.join("ccdma.h").display());
    let object = out.join("ffi_check.o");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    // As the Rust code: no libc, no PIC/PIE, no red zone (interrupt frames), no AVX (no XSAVE
    // state), no stack protector or CET (no runtime for either).
    let status = Command::new(&cc)
        .args(["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-ffreestanding", "-fno-builtin"])
        .args(["-fno-pic", "-fno-pie", "-mno-red-zone", "-mno-avx", "-mno-avx2"])
        .args(["-fno-stack-protector", "-fcf-protection=none", "-fno-asynchronous-unwind-tables"])
        .arg("-I")
        .arg(&include)
        .arg("-c")
        .arg(&source)
        .arg("-o")
        .arg(&object)
        .status()
        .expect("run the C compiler (cc) for c/ffi_check.c");
    assert!(status.success(), "compiling c/ffi_check.c failed");
    let status = Command::new("ar")
        .arg("crs")
        .arg(out.join("libccdma_kernel_c.a"))
        .arg(&object)
        .status()
        .expect("run ar");
    assert!(status.success(), "ar failed");
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static=ccdma_kernel_c");
}
