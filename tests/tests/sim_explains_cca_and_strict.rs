//! Issue 22: `ccdma-sim` explains its two terse answers. The Arm CCA refusal says that the alias bit
//! puts every shared bus address above a narrow mask and what to do; the strict policy's path line
//! says what strict is, what it costs and how to change it.

use std::process::{Command, Output};

const SIM: &str = env!("CARGO_BIN_EXE_ccdma-sim");

fn sim(args: &[&str]) -> Output {
    let all: Vec<&str> = ["--rounds", "1", "--sizes", "64"].iter().chain(args).copied().collect();
    Command::new(SIM).args(&all).output().expect("run ccdma-sim")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn cca_refusal_names_the_alias_bit_and_the_remedy() {
    let o = sim(&["--cca", "--device", "legacy:32", "--expect-refused", "legacy"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    let refusal: String =
        out.lines().skip_while(|l| !l.contains("REFUSED")).take(4).collect::<Vec<_>>().join("\n");
    println!("{refusal}");
    assert!(refusal.contains("alias"), "the refusal names the alias: {refusal}");
    assert!(refusal.contains("bit 47"), "the refusal names the bit: {refusal}");
    assert!(refusal.contains("48 bits"), "the refusal says how wide a mask must be: {refusal}");
}

#[test]
fn strict_reason_says_what_it_is_what_it_costs_and_how_to_change_it() {
    let o = sim(&["--iommu", "strict", "--device", "nic:64"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    let path: String =
        out.lines().skip_while(|l| !l.contains("  path ")).take(3).collect::<Vec<_>>().join("\n");
    println!("{path}");
    assert!(path.contains("every map") && path.contains("unmap"), "what strict is: {path}");
    assert!(path.contains("hypercall"), "what it costs: {path}");
    assert!(path.contains("--iommu premapped"), "how to change it: {path}");
}
