//! C programs against the header: `tests/c/handles.c` (the handle rules and the shared-bus hook,
//! built as C99 with `-pedantic`, linked with this crate's static library, run), and the header alone
//! compiled freestanding, as firmware builds it (`-ffreestanding -nostdinc` plus the compiler's own
//! include directory).

mod cbuild;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn cc() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".into())
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ccdma-{}-{name}", std::process::id()))
}

#[test]
fn handles_c_keeps_the_handle_rules_and_uses_every_bus_encoding() {
    let out = temp("handles");
    let status = Command::new(cc())
        .args(["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-O1", "-I"])
        .arg(dir().join("include"))
        .arg(dir().join("tests/c/handles.c"))
        .arg(cbuild::staticlib())
        .args(["-lpthread", "-ldl", "-lm", "-lrt", "-lutil", "-lgcc_s", "-o"])
        .arg(&out)
        .status()
        .expect("run the system C compiler");
    assert!(status.success(), "compiling tests/c/handles.c failed");
    let run = Command::new(&out).output().expect("run tests/c/handles.c");
    let _ = std::fs::remove_file(&out);
    let stdout = String::from_utf8_lossy(&run.stdout);
    print!("{stdout}");
    assert!(run.status.success(), "tests/c/handles.c failed: {}", run.status);
    let line = |prefix: &str| stdout.lines().find(|l| l.starts_with(prefix)).unwrap_or("").to_string();
    let cca = line("cca: first bus 0x8000");
    assert!(
        cca.ends_with("bytes exact, 0 device refusals, 0 pages shared after"),
        "CCA through the alias: {stdout}"
    );
    for name in ["sev: first bus 0x", "identity: first bus 0x"] {
        assert!(
            line(name).ends_with("bytes exact, 0 device refusals, 0 pages shared after"),
            "{name}: {stdout}"
        );
    }
    let misuse = line("misuse: every case CCDMA_ERR_MISUSE");
    assert!(
        misuse.contains("ring shared and readable: yes") && misuse.contains("leaked nothing: yes"),
        "{misuse}"
    );
    assert!(misuse.ends_with("no platform call for a refused handle: yes"), "{misuse}");
    assert!(line("raw claims on the direct path:").ends_with("mapping kept: yes"), "raw claims: {stdout}");
    assert_eq!(stdout.lines().last(), Some("OK"));
}

/// Compiles `source` as freestanding C (`std`) against the header only; the compiler's output.
fn freestanding(std: &str, source: &str) -> Output {
    let include = Command::new(cc()).arg("-print-file-name=include").output().expect("cc -print-file-name");
    let include = String::from_utf8_lossy(&include.stdout).trim().to_string();
    // A distinct name per source (the tests run in parallel), ending in `.c` (or cc takes it for an
    // object file and -fsyntax-only checks nothing).
    let file = temp(&format!("freestanding-{std}-{:x}.c", source.len()));
    std::fs::write(&file, source).expect("write the C source");
    let out = Command::new(cc())
        .args([&format!("-std={std}"), "-pedantic", "-Wall", "-Wextra", "-Werror"])
        .args(["-ffreestanding", "-nostdinc", "-isystem", &include, "-fsyntax-only", "-I"])
        .arg(dir().join("include"))
        .arg(&file)
        .output()
        .expect("run the system C compiler");
    let _ = std::fs::remove_file(&file);
    out
}

const FIRMWARE: &str = r#"#include "ccdma.h"
CCDMA_ALIGNED(CCDMA_LAYER_ALIGN) static uint8_t layer_mem[CCDMA_LAYER_SIZE];
CCDMA_ALIGNED(CCDMA_SLOT_META_ALIGN) static uint8_t meta[CCDMA_POOL_META_SIZE(64 * 1024)];
CCDMA_ALIGNED(CCDMA_SG_ENTRY_ALIGN) static uint8_t list[CCDMA_SG_LIST_SIZE(4)];
static const struct ccdma_platform sev = { .confidential = 1, .shared_bus = CCDMA_BUS_ENCODING_SEV(51) };
static const struct ccdma_platform cca = { .confidential = 1, .shared_bus = CCDMA_BUS_ENCODING_CCA(48) };
int firmware_init(void);
int firmware_init(void) {
    int rc = ccdma_layer_init(layer_mem, sizeof layer_mem, &sev);
    struct ccdma_layer *layer = (struct ccdma_layer *)layer_mem;
    (void)cca; (void)list;
    return rc != CCDMA_OK ? rc : ccdma_add_pool(layer, 0x100000, 64 * 1024, meta, sizeof meta);
}
"#;

#[test]
fn the_header_compiles_freestanding_with_only_the_compiler_s_own_headers() {
    let header = std::fs::read_to_string(dir().join("include/ccdma.h")).expect("read the header");
    let includes: Vec<&str> = header.lines().filter(|l| l.starts_with("#include")).collect();
    assert_eq!(includes, ["#include <stddef.h>", "#include <stdint.h>", "#include <stdbool.h>"]);
    for std in ["c99", "c11"] {
        let out = freestanding(std, FIRMWARE);
        assert!(out.status.success(), "{std}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // The check can fail: a libc header is not there.
    let hosted = freestanding("c99", &format!("#include <stdlib.h>\n{FIRMWARE}"));
    assert!(!hosted.status.success(), "-nostdinc let <stdlib.h> through");
}
