//! `examples/demo.c`, built with the system `cc` against the header and this crate's static library,
//! runs a confidential guest whose platform (and, in its second half, IOMMU) is written in C (see the
//! file). It must exit 0, and its output must report each part of the interface as it should.
//! `cargo test -p ccdma-ffi --release --test c_demo -- --nocapture` shows its output.

mod cbuild;

use std::path::Path;
use std::process::Command;

use cbuild::staticlib;

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
    let stdout = String::from_utf8_lossy(&run.stdout);
    if cfg!(feature = "small-layer") {
        // One pool: the demo's second add_pool fails and it stops there, cleanly (it used to run on
        // with handles never made and die of SIGSEGV).
        assert_eq!(run.status.code(), Some(1), "the C demo must stop with status 1: {}", run.status);
        assert!(stdout.contains("FAIL") && stdout.contains("add_pool: "), "{stdout}");
        assert!(
            stdout.lines().last().is_some_and(|l| l.starts_with("STOPPED: a set-up step failed")),
            "{stdout}"
        );
        return;
    }
    assert!(run.status.success(), "the C demo failed: {}", run.status);
    check_output(&stdout);
}

/// The demo checks every byte itself (and exits non-zero on a mismatch); this also pins down that
/// each part of the interface ran and said what it must, so a part cannot drop out silently.
fn check_output(out: &str) {
    let has = |needle: &str| out.lines().any(|l| l.contains(needle));
    let count = |needle: &str| out.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(count("bytes exact"), 9 + 1, "every device and direction, and the list, exact");
    assert!(has("coherent: ") && has("shared while allocated: yes, private after free: yes"));
    assert!(has("buffer untouched until sync: yes, after sync_for_cpu: yes, unmap copied nothing: yes"));
    assert!(has("PRESERVE_UNWRITTEN keeps unwritten bytes: yes; sync_for_device pushes a CPU change: yes; unknown attribute: -3"));
    assert!(has("sync: sg list visible to the CPU while mapped: yes"));
    assert!(has("teardown: fini with a live mapping: -9") && has("pools private again: yes"));
    assert_eq!(
        count("wrong-way access blocked: yes, blocked after unmap: yes"),
        4,
        "strict IOMMU entries by direction"
    );
    assert!(has("0 entries live at the end; disable with devices attached: -9"));
    assert!(has(
        "trusted: path bounce-always; accept with a live mapping: -9 (device busy: live mappings or buffers); \
         device 31 refused by the platform: -11"
    ));
    assert!(has("; accepted: trusted-direct"));
    assert!(has("the buffer's own address: yes, share calls: 0, bytes both ways: yes"));
    let bounces = out.lines().find(|l| l.starts_with("trusted: CC_SHARED bounced through shared bus"));
    let bounces = bounces.expect("the CC_SHARED line");
    assert!(bounces.contains("; untrusted device bounced through"), "{bounces}");
    assert!(bounces.split(';').all(|part| part.ends_with(": yes")), "both bounced: {bounces}");
    assert!(has(
        "trusted: coherent private in place, no share call: yes; coherent CC_SHARED shared while allocated: yes"
    ));
    assert!(has(
        "trusted: revoke with a live mapping: -9 (device busy: live mappings or buffers); revoke: 0, \
         platform told: yes, path bounce-always, bounced again: yes"
    ));
    assert!(
        has("trusted: 2 accept and 1 revoke calls"),
        "refusals for busy devices never reach the platform"
    );
    assert!(has(", 0 violations"));
    assert_eq!(out.lines().last(), Some("OK"));
}
