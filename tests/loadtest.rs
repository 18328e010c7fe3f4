//! Smoke test of the load-testing kit against `prism serve` on the embedded
//! default: every scenario file in loadtest/scenarios runs briefly (a few
//! hundred requests) under the runner with no failed call and yields ghz's
//! JSON report; the `prism-loadtest` binary writes that report, prints the
//! baseline comparison, prepares a plain ghz config that works as it is,
//! and measures a gateway's footprint. Nothing here asserts a speed.

mod common;

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
};

use common::wait_until;
use prism::{
    loadtest::{
        self,
        report::{self, Report},
        scenario::Scenario,
        Overrides,
    },
    runtime::block_on_multi_thread,
};

fn scenarios() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("loadtest/scenarios");
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension() == Some(OsStr::new("json")))
        .collect();
    out.sort();
    out
}

fn check_ghz_report(json: &serde_json::Value, count: u64, what: &str) {
    for key in report::GHZ_REPORT_KEYS {
        assert!(json.get(key).is_some(), "{what}: `{key}` missing");
    }
    assert_eq!(json["count"], count, "{what}");
    assert_eq!(
        json["statusCodeDistribution"]["OK"], count,
        "{what}: {json:#}"
    );
    assert!(
        json["total"].is_u64() && json["slowest"].is_u64(),
        "{what}: ns"
    );
    assert_eq!(json["details"].as_array().unwrap().len() as u64, count);
    assert_eq!(json["latencyDistribution"].as_array().unwrap().len(), 7);
}

async fn serve(data: &Path) -> (tokio::process::Child, String) {
    common::spawn_serve(
        &[],
        &[
            ("PRISM_SQLITE_PATH", data.join("orders.db").as_os_str()),
            ("PRISM_ADMIN_TOKEN", OsStr::new("loadtest-admin")),
        ],
    )
    .await
}

#[test]
fn every_scenario_runs_briefly_against_the_embedded_default() {
    block_on_multi_thread(async {
        let data = tempfile_dir("scenarios");
        let (mut child, addr) = serve(&data).await;
        let files = scenarios();
        assert!(files.len() >= 10, "{files:?}");
        for path in files {
            let what = path.file_name().unwrap().to_string_lossy().to_string();
            let scenario = Scenario::load(&path).unwrap();
            let overrides = Overrides {
                host: Some(addr.clone()),
                total: Some(300),
                concurrency: Some(4),
                ..Default::default()
            };
            let has_subscribers = scenario
                .prism
                .as_ref()
                .is_some_and(|p| p.subscribers.is_some());
            let prepared = loadtest::prepare(scenario, &overrides)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let (report, _) = prepared.run().await;
            assert_eq!(
                report.failures(),
                0,
                "{what}: {:?}",
                report.error_distribution
            );
            check_ghz_report(&serde_json::to_value(&report).unwrap(), 300, &what);
            let back: Report =
                serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
            assert_eq!(back.count, 300);
            if has_subscribers {
                wait_until("the subscribers receive the published events", || async {
                    prepared
                        .delivered
                        .load(std::sync::atomic::Ordering::Relaxed)
                        > 0
                })
                .await;
            }
            prepared.finish().await;
        }
        child.kill().await.unwrap();
    });
}

#[test]
fn the_binary_reports_compares_prepares_and_measures() {
    block_on_multi_thread(async {
        let data = tempfile_dir("binary");
        let (mut child, addr) = serve(&data).await;
        let scenarios_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("loadtest/scenarios");

        // A run with the baselines: ghz's summary, the JSON report, the
        // comparison with the no-op server and with Redis directly.
        let report_path = data.join("kv.json");
        let compare_path = data.join("kv.compare.json");
        let kv = scenarios_dir.join("kv_get_hot.json");
        let stdout = prism_loadtest(
            &[
                "run".as_ref(),
                kv.as_os_str(),
                "--host".as_ref(),
                addr.as_ref(),
                "-n".as_ref(),
                "300".as_ref(),
                "-c".as_ref(),
                "4".as_ref(),
                "--baseline".as_ref(),
                "--redis-direct".as_ref(),
                "redis://127.0.0.1:6379".as_ref(),
                "-o".as_ref(),
                report_path.as_os_str(),
                "--compare-out".as_ref(),
                compare_path.as_os_str(),
            ],
            &[],
        )
        .await;
        for text in [
            "Summary:",
            "Count:\t300",
            "Requests/sec:",
            "Response time histogram:",
            "Latency distribution:",
            "Status code distribution:",
            "[OK]   300 responses",
            "no-op baseline",
            "redis direct",
            "ratio to no-op:",
            "added over redis:",
        ] {
            assert!(stdout.contains(text), "`{text}` in\n{stdout}");
        }
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
        check_ghz_report(&json, 300, "binary report");
        let table = prism_loadtest(&["table".as_ref(), compare_path.as_os_str()], &[]).await;
        assert!(
            table.contains("| KV Get 1 KiB, hot key (memory) |"),
            "{table}"
        );
        let row = table.lines().last().unwrap();
        assert_eq!(row.matches('|').count(), 8, "{row}");
        assert!(!row.contains('–'), "every column measured: {row}");

        // The plain ghz config: token filled, Prism's block gone, ghz's own
        // templates kept; it runs as it is (as ghz would run it).
        let ghz_path = data.join("heartbeat.ghz.json");
        let heartbeat = scenarios_dir.join("heartbeat.json");
        prism_loadtest(
            &[
                "prepare".as_ref(),
                heartbeat.as_os_str(),
                "--host".as_ref(),
                addr.as_ref(),
                "--out".as_ref(),
                ghz_path.as_os_str(),
            ],
            &[],
        )
        .await;
        let text = std::fs::read_to_string(&ghz_path).unwrap();
        assert!(
            !text.contains("x-prism") && !text.contains("SessionToken"),
            "{text}"
        );
        let plain = Scenario::parse(&text).unwrap();
        assert_eq!(plain.host.as_deref(), Some(addr.as_str()));
        assert!(plain.data["session_token"]
            .as_str()
            .unwrap()
            .starts_with("prism_"));
        let prepared = loadtest::prepare(
            plain,
            &Overrides {
                total: Some(200),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let (report, _) = prepared.run().await;
        assert_eq!(report.failures(), 0, "{:?}", report.error_distribution);
        prepared.finish().await;
        child.kill().await.unwrap();

        // Footprint of a fresh gateway with a few hundred idle sessions.
        let db = data.join("footprint.db");
        let stdout = prism_loadtest(
            &[
                "footprint".as_ref(),
                "--prism".as_ref(),
                env!("CARGO_BIN_EXE_prism").as_ref(),
                "--sessions".as_ref(),
                "300".as_ref(),
            ],
            &[("PRISM_SQLITE_PATH", db.as_os_str())],
        )
        .await;
        assert!(stdout.contains("start to serving:"), "{stdout}");
        assert!(
            stdout.contains("with 300 idle sessions (0 failed"),
            "{stdout}"
        );
    });
}

/// Runs the `prism-loadtest` binary, which must succeed; its stdout.
async fn prism_loadtest(args: &[&OsStr], envs: &[(&str, &OsStr)]) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_prism-loadtest"))
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {stdout}\n{stderr}");
    stdout
}

#[test]
fn only_loopback_is_loaded_unless_a_host_is_given() {
    let err = loadtest::target(Some("192.0.2.1:8980"), None).unwrap_err();
    assert!(err.contains("not a loopback address"), "{err}");
    assert!(loadtest::target(Some("127.0.0.1:8980"), None).is_ok());
    assert!(loadtest::target(Some("[::1]:8980"), None).is_ok());
    // Named on the command line: the user's explicit choice.
    assert!(loadtest::target(Some("127.0.0.1:1"), Some("192.0.2.1:8980")).is_ok());
    assert!(loadtest::target(None, None).is_err());
}

#[test]
fn a_tls_scenario_is_refused_rather_than_run_in_plaintext() {
    block_on_multi_thread(async {
        let tls = Scenario::parse(
            r#"{"call": "prism.session.v1.SessionService/Heartbeat", "host": "127.0.0.1:1"}"#,
        )
        .unwrap();
        let err = loadtest::prepare(tls, &Overrides::default())
            .await
            .err()
            .unwrap();
        assert!(err.contains("insecure"), "{err}");
    });
}

fn tempfile_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("prism-loadtest-{what}-{}", common::kv::run_id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
