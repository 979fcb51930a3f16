//! `examples/demo.c`, built with the system `cc` against the header and this crate's static library,
//! runs a confidential guest whose platform is written in C (see the file). It must exit 0.
//! `cargo test -p ccdma-ffi --release --test c_demo -- --nocapture` shows its output.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `libccdma_ffi.a` of this build: cargo builds the library (all its crate types) before the tests,
/// into the profile directory above this test's `deps/`.
fn staticlib() -> PathBuf {
    let exe = std::env::current_exe().expect("test path");
    let deps = exe.parent().expect("deps dir");
    let profile = deps.parent().expect("profile dir");
    let lib = profile.join("libccdma_ffi.a");
    if lib.exists() {
        return lib;
    }
    // Otherwise the newest hashed copy in deps/.
    std::fs::read_dir(deps)
        .expect("read deps")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("libccdma_ffi") && name.ends_with(".a")
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .expect("libccdma_ffi.a next to the test binary")
}

#[test]
fn c_demo_runs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("ccdma-c-demo-{}", std::process::id()));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-I"])
        .arg(dir.join("include"))
        .arg(dir.join("examples/demo.c"))
        .arg(staticlib())
        .args(["-lpthread", "-ldl", "-lm", "-lrt", "-lutil", "-lgcc_s", "-o"])
        .arg(&out)
        .status()
        .expect("run the system C compiler");
    assert!(status.success(), "compiling examples/demo.c failed");
    let run = Command::new(&out).output().expect("run the C demo");
    let _ = std::fs::remove_file(&out);
    print!("{}", String::from_utf8_lossy(&run.stdout));
    eprint!("{}", String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "the C demo failed: {}", run.status);
}
