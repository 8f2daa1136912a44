//! Bulk downloads through a real relay's tls front finish: one leg past the HTTP/2 stream window
//! (6 MiB), and 16 KiB legs, each opened and retired while the download runs at full speed.
//! `pigeon bench tls` does the work; its figures are only checked to exist here (speed belongs
//! to BENCHMARKS.md, not to a test).

use std::process::Command;

#[test]
fn bulk_downloads_over_tls_finish_on_one_leg_and_on_16_kib_legs() {
    let out = Command::new(env!("CARGO_BIN_EXE_pigeon"))
        .args([
            "bench",
            "tls",
            "--mib",
            "8",
            "--runs",
            "1",
            "--handshakes",
            "2",
            "--skip-idle",
            "--json",
        ])
        .env("PIGEON_LOG", "warn")
        .output()
        .expect("pigeon bench tls runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pigeon bench tls failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let figures: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    for key in ["bulk_tcp_mib_s", "bulk_tls_mib_s", "bulk_tls_16k_mib_s"] {
        let rate = figures[key].as_f64().unwrap_or(0.0);
        assert!(rate > 0.0, "{key} = {rate}: {stdout}");
    }
}
