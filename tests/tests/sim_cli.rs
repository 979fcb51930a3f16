//! The `ccdma-sim` command line as a script sees it: exit codes, parsing, config files, closed pipes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

const SIM: &str = env!("CARGO_BIN_EXE_ccdma-sim");

/// Small sizes and one round keep every run short.
const QUICK: [&str; 4] = ["--rounds", "1", "--sizes", "64,4K"];

fn sim(args: &[&str]) -> Output {
    Command::new(SIM).args(args).output().expect("run ccdma-sim")
}

fn quick(args: &[&str]) -> Output {
    let all: Vec<&str> = QUICK.iter().chain(args).copied().collect();
    sim(&all)
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exit code")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn last_line(o: &Output) -> String {
    stdout(o).lines().last().unwrap_or_default().to_string()
}

/// A config file in the target directory, unique per test.
fn config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sim_cli");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_default_run_passes() {
    let o = sim(&["--rounds", "1"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(last_line(&o).starts_with("summary: 4 devices attached, 0 refused"), "{}", last_line(&o));
    assert!(last_line(&o).ends_with("; OK"));
}

#[test]
fn an_unexpected_refusal_fails() {
    // A mask outside 13..=64 is an argument error (exit 2, tests/tests/sim_cli_usage.rs); a mask the
    // layer has no path for is a reported refusal, and exit 1.
    let o = quick(&["--device", "nic:64", "--device", "tiny:20"]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    assert!(stdout(&o).contains("REFUSED"), "{}", stdout(&o));
    assert!(last_line(&o).contains("FAILED"), "{}", last_line(&o));
    // A misaligned pool: the pool is refused, then every device.
    let o = quick(&["--pool", "0x800001:4M"]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    assert!(stdout(&o).contains("NOT ADDED"));
    assert!(last_line(&o).contains("0 devices attached, 4 refused"), "{}", last_line(&o));
}

#[test]
fn expected_refusals_are_declared_by_name() {
    let devices = ["--device", "tiny:20", "--device", "nic:64"];
    let o = quick(&[&devices[..], &["--expect-refused", "tiny"]].concat());
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert!(stdout(&o).contains("refused, as expected"));
    // Without the declaration the same run fails.
    assert_eq!(code(&quick(&devices)), 1);
    // A device expected refused that attaches fails the run.
    let o = quick(&[&devices[..], &["--expect-refused", "tiny", "--expect-refused", "nic"]].concat());
    assert_eq!(code(&o), 1);
    assert!(stdout(&o).contains("attached, but expected refused"), "{}", stdout(&o));
    // A name that is no device is an argument error.
    let o = quick(&["--expect-refused", "nope"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("no such device"), "{}", stderr(&o));
}

#[test]
fn zero_rounds_is_an_error_not_ok() {
    let o = sim(&["--rounds", "0"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("--rounds"), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
}

#[test]
fn hex_sizes_keep_their_digits() {
    let o = sim(&["--rounds", "1", "--sizes", "0x1b,0xb"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("workload: sizes 27 B, 11 B x 3 directions"), "{}", stdout(&o));
    for bad in ["12Q", "0", "1.5K", "0x", ""] {
        let o = sim(&["--sizes", bad]);
        assert_eq!(code(&o), 2, "--sizes {bad:?}");
    }
}

#[test]
fn argument_errors_are_short() {
    for args in [&["--bogus"][..], &["--ram", "6Q"], &["--pool"], &["--iommu", "strict", "--tdx"]] {
        let o = sim(args);
        assert_eq!(code(&o), 2, "{args:?}");
        let err = stderr(&o);
        assert!(err.lines().count() <= 8, "{args:?}: usage too long:\n{err}");
        assert!(err.contains("Usage: ccdma-sim"), "{args:?}: {err}");
        assert!(stdout(&o).is_empty());
    }
    let o = sim(&["--help"]);
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains("--expect-refused"));
}

#[test]
fn config_files_keep_their_keys_and_name_the_line() {
    let good = config(
        "good.txt",
        "# a 64 GiB TDX guest\nram 64G\ntdx\ntdx-pages-per-call 64\npool 0x800000:4M   # low\n\
         pool 0x800000000:64M\ndevice tiny:20\ndevice nic:64\nexpect-refused tiny\nsizes 64, 4K\nrounds 1\n",
    );
    let o = sim(&["--config", good.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).starts_with("ccdma-sim: TDX guest (confidential, MapGPA sharing), 64 GiB RAM"));
    assert!(last_line(&o).contains("1 device attached, 1 refused (1 expected)"), "{}", last_line(&o));
    // The command line wins over the file.
    let o = sim(&["--config", good.to_str().unwrap(), "--pseries", "--ram", "8G"]);
    assert!(stdout(&o).starts_with("ccdma-sim: pseries Secure VM (confidential, ultravisor sharing), 8 GiB"));

    for (name, text, expect) in [
        ("unknown.txt", "ram 6G\n\nfoo 3\n", ":3: unknown key `foo`"),
        ("value.txt", "# c\nram 6Q\n", ":2: invalid value '6Q'"),
        ("flag.txt", "tdx yes\n", ":1: `tdx` takes no value"),
        ("dash.txt", "--ram 6G\n", ":1: `--ram`: write keys without dashes"),
        ("nest.txt", "config other.txt\n", ":1: config files do not nest"),
        ("help.txt", "ram 6G\nhelp\n", ":2: unknown key `help`"),
        ("rounds.txt", "rounds 0\n", "--rounds must be at least 1"),
    ] {
        let path = config(name, text);
        let o = sim(&["--config", path.to_str().unwrap()]);
        assert_eq!(code(&o), 2, "{name}");
        let want =
            if expect.starts_with(':') { format!("{}{expect}", path.display()) } else { expect.to_string() };
        assert!(stderr(&o).contains(&want), "{name}: want {want:?} in {}", stderr(&o));
    }
    let o = sim(&["--config", "/nonexistent/ccdma-sim.txt"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("cannot read config file /nonexistent/ccdma-sim.txt"));
}

#[test]
fn overlaps_name_the_pool() {
    let o = quick(&["--pool", "0x800000:4M", "--pool", "0x900000:4M"]);
    assert_eq!(code(&o), 1, "a refused pool fails the run");
    assert!(
        stdout(&o).contains("pool 1       phys 0x900000, 4 MiB: NOT ADDED: the range overlaps pool 0 (layer pool #0 is pool 0, phys 0x800000..0xc00000)"),
        "{}",
        stdout(&o)
    );
    // A pool on the model's workload buffers cannot run at all: the device is named.
    let o = quick(&["--pool", "0x140000000:4M"]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("pool 0 (0x140000000:4 MiB) overlaps the guest buffer of device old"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_closed_pipe_is_not_a_panic() {
    let mut child = Command::new(SIM)
        .args(["--rounds", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ccdma-sim");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    // The reader is dropped here: the pipe is closed after one line, as by `| head -1`.
    assert!(first.starts_with("ccdma-sim: "));
    let o = child.wait_with_output().unwrap();
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    assert_eq!(code(&o), 0, "the run's verdict, not a pipe error");
}

#[test]
fn ranges_are_listed_per_window() {
    let o = quick(&["--iommu", "premapped", "--device", "nic:64"]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    let out = stdout(&o);
    let window = out.find("  window    LIOBN").expect("default window");
    let ddw = out.find("  DDW       LIOBN").expect("DDW");
    assert!(window < ddw, "{out}");
    let ddw_lines: Vec<&str> =
        out[ddw..].lines().skip(1).take_while(|l| l.starts_with("            ")).collect();
    assert_eq!(ddw_lines.len(), 2, "two premapped pools in the DDW: {out}");
    assert!(
        ddw_lines[0].contains("0x800000000000000..0x800000000400000") && ddw_lines[0].contains("pool #0")
    );
    // No span across both windows.
    assert!(!out.contains("0x0..0x800000002000000"), "{out}");
}

#[test]
fn faults_are_summarised_by_kind() {
    let o = quick(&["--iommu", "strict"]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert!(
        stdout(&o).contains("expected: Read Permission x2 (device reads of write-only from-device mappings)")
    );
}

#[test]
fn svg_draws_every_device_with_its_windows() {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sim_cli").join("map.svg");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let o = quick(&["--iommu", "premapped", "--svg", path.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    assert_eq!(svg.matches("class=\"device\"").count(), 4);
    // Four default windows, one DDW (the 64-bit nic), pools premapped, page 0 reserved.
    assert_eq!(svg.matches("data-kind=\"window\"").count(), 4);
    assert_eq!(svg.matches("data-kind=\"ddw\"").count(), 1);
    assert!(svg.contains("data-start=\"0x800000000000000\""), "the DDW at 2^59");
    assert!(svg.contains("page 0 (reserved): 0x0000_0000..0x0000_1000"), "grouped hex (issue 22)");
    // Unwritable file: an error exit, not a panic.
    let o = quick(&["--svg", "/nonexistent/dir/map.svg"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("cannot write /nonexistent/dir/map.svg"));
}

#[test]
fn snp_and_cca_guests_run_and_name_themselves() {
    let o = quick(&["--snp", "--snp-entries-per-call", "50"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).starts_with("ccdma-sim: SEV-SNP guest (confidential, PVALIDATE + Page State Change"),
        "{}",
        stdout(&o)
    );
    assert!(last_line(&o).starts_with("summary: 4 devices attached, 0 refused"), "{}", last_line(&o));
    // A realm's devices reach shared memory through the alias at IPA bit 47: masks below 48 bits reach
    // no pool and are refused, as declared.
    let devices = ["--device", "old:32", "--device", "nic:64", "--expect-refused", "old"];
    let o = quick(&[&["--platform", "cca", "--cca-granules-per-call", "100"][..], &devices].concat());
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).starts_with("ccdma-sim: Arm CCA realm (confidential, RSI_IPA_STATE_SET"),
        "{}",
        stdout(&o)
    );
    assert!(
        last_line(&o).starts_with("summary: 1 device attached, 1 refused (1 expected)"),
        "{}",
        last_line(&o)
    );
    assert!(last_line(&o).ends_with("; OK"), "{}", last_line(&o));
}

#[test]
fn accepted_devices_are_reported_on_the_trusted_path() {
    // Without IOMMU: the accepted device bounces nothing, the other still bounces everything.
    let o = quick(&["--tdx", "--device", "gpu:64", "--device", "nic:64", "--accept", "gpu"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    let gpu = out.split("device nic").next().unwrap();
    assert!(gpu.contains("path      trusted-direct: accepted by the platform"), "{out}");
    assert!(gpu.contains("bounced   0 of 6 maps"), "{out}");
    assert!(gpu.contains("0 outside its own buffer"), "{out}");
    assert!(out.contains("path      bounce-always"), "{out}");
    // Behind the IOMMU.
    let o = quick(&["--iommu", "strict", "--device", "gpu:64", "--accept", "gpu"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("path      trusted-iommu: accepted by the platform"), "{}", stdout(&o));
    assert!(stdout(&o).contains("gpu     64-bit  trusted-iommu"), "{}", stdout(&o));
    // Needs a confidential guest, and a device of that name.
    assert_eq!(code(&quick(&["--plain", "--accept", "nic"])), 2);
    assert_eq!(code(&quick(&["--accept", "nope"])), 2);
}
