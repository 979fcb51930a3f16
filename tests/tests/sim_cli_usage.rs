//! `ccdma-sim` as a new user meets it (issue 22): bad arguments exit 2 before any work and say what
//! to give instead; a config value that starts with `-` is a value; ambiguous size suffixes are
//! refused; an unwritable `--svg` path is found before the workload runs.

use std::process::{Command, Output};

const SIM: &str = env!("CARGO_BIN_EXE_ccdma-sim");

fn sim(args: &[&str]) -> Output {
    let all: Vec<&str> = ["--rounds", "1", "--sizes", "64"].iter().chain(args).copied().collect();
    Command::new(SIM).args(&all).output().expect("run ccdma-sim")
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

/// Exit 2, nothing run (no device lines on stdout), and the message holds `needle`.
fn usage_error(args: &[&str], needle: &str) {
    let o = sim(args);
    assert_eq!(code(&o), 2, "{args:?}: {}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).is_empty(), "{args:?} ran the workload:\n{}", stdout(&o));
    assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    println!("$ ccdma-sim {}\n{}", args.join(" "), stderr(&o));
}

#[test]
fn an_empty_pool_is_an_argument_error() {
    usage_error(&["--pool", "0x800000:0"], "--pool 0x800000:0: a pool needs at least one page");
}

#[test]
fn masks_outside_13_to_64_bits_are_argument_errors_naming_the_range() {
    for mask in ["nic:0", "nic:12", "nic:65", "nic:70"] {
        usage_error(&["--device", mask], "13 to 64");
    }
}

#[test]
fn a_negative_config_value_is_a_bad_value_not_a_missing_one() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sim_cli_usage");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("negative.conf");
    std::fs::write(&path, "rounds -3\n").unwrap();
    let o = sim(&["--config", path.to_str().unwrap()]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(!stderr(&o).contains("takes no value"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("negative.conf:1") && stderr(&o).contains("`-3` is not a number"),
        "{}",
        stderr(&o)
    );
    println!("{}", stderr(&o));
    // A flag given a value is still "takes no value".
    std::fs::write(&path, "tdx yes\n").unwrap();
    let o = sim(&["--config", path.to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("`tdx` takes no value (`yes`)"), "{}", stderr(&o));
}

#[test]
fn decimal_size_suffixes_are_refused_not_read_as_binary() {
    for ram in ["6GB", "6gb", "4096MB", "64KB"] {
        usage_error(&["--ram", ram], "ambiguous");
    }
    let o = sim(&["--ram", "6GiB"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn an_unwritable_svg_path_is_found_before_the_workload() {
    usage_error(&["--svg", "/nonexistent/dir/x.svg"], "cannot write /nonexistent/dir/x.svg");
}
