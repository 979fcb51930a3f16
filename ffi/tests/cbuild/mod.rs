//! Building C programs against the header and this crate's static library (the tests that run C).

use std::path::PathBuf;

/// `libccdma_ffi.a` of this build: cargo builds the library (all its crate types) before the tests,
/// into `deps/` beside this test. The copy in the profile directory above is refreshed only by
/// `cargo build`, so it can be stale: the newest of all candidates is taken.
pub fn staticlib() -> PathBuf {
    let exe = std::env::current_exe().expect("test path");
    let deps = exe.parent().expect("deps dir");
    let profile = deps.parent().expect("profile dir");
    let hashed =
        std::fs::read_dir(deps).expect("read deps").filter_map(Result::ok).map(|e| e.path()).filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("libccdma_ffi") && name.ends_with(".a")
        });
    std::iter::once(profile.join("libccdma_ffi.a"))
        .chain(hashed)
        .filter(|p| p.exists())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .expect("libccdma_ffi.a next to the test binary")
}
