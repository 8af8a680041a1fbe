//! Keeps the benchmark harness working: `bench/run.sh --smoke` (about 40 s,
//! 127.0.0.1 only) must see every contender (direct, nginx, portico in each
//! mode) answer without errors. It measures nothing; see bench/README.md.

mod common;
use std::process::Command;

#[test]
fn benchmark_harness_smoke() {
    let have = |tool: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .is_ok_and(|o| o.status.success())
    };
    assert!(
        have("nginx") && have("wrk"),
        "nginx and wrk are needed (./dev test installs them)"
    );
    let out = Command::new("bash")
        .arg("bench/run.sh")
        .arg("--smoke")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PORTICO_BIN", common::portico_bin())
        .env("BENCH_NO_BUILD", "1")
        .env("BENCH_PORT_BASE", "28100")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
}
