//! Smoke test of the load-testing kit against `prism serve` on the embedded
//! default: every scenario file in loadtest/scenarios runs briefly (a few
//! hundred requests) under the runner with no failed call and yields ghz's
//! JSON report; the `prism-loadtest` binary writes that report, prints the
//! baseline comparison, prepares a plain ghz config that works as it is,
//! and measures a gateway's footprint. Nothing here asserts a speed.
//!
//! The gateway is the workspace's `prism` binary, which `cargo test
//! --workspace` builds beside this crate's (or the one `PRISM_BIN` names).

#[path = "../../tests/common/serve.rs"]
mod serve;

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use prism_loadtest::{
    self as loadtest,
    report::{self, Report},
    scenario::Scenario,
    Overrides,
};

fn scenarios() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
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

/// The gateway binary: `PRISM_BIN`, or `prism` in this build's target
/// directory (tests run from `target/<profile>/deps`), which must not be
/// older than the gateway's sources.
fn prism_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PRISM_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let path = profile_dir.join(format!("prism{}", std::env::consts::EXE_SUFFIX));
    let built = std::fs::metadata(&path).and_then(|m| m.modified());
    let newest = newest_change(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../src"));
    assert!(
        built.as_ref().is_ok_and(|b| *b >= newest),
        "no up-to-date gateway binary at {}: run `cargo test --workspace` (which builds it) or set PRISM_BIN",
        path.display()
    );
    path
}

/// When a file under `dir` last changed.
fn newest_change(dir: &Path) -> SystemTime {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            if path.is_dir() {
                newest_change(&path)
            } else {
                std::fs::metadata(&path).and_then(|m| m.modified()).unwrap()
            }
        })
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// `prism serve` on the embedded default, on free loopback ports; its
/// gRPC address once it listens.
async fn serve(data: &Path) -> (tokio::process::Child, String) {
    let db = data.join("orders.db");
    serve::spawn_serve(
        &prism_binary(),
        &[],
        &[
            ("PRISM_SQLITE_PATH", db.as_os_str()),
            ("PRISM_ADMIN_TOKEN", OsStr::new("loadtest-admin")),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_scenario_runs_briefly_against_the_embedded_default() {
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
        let back: Report = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        assert_eq!(back.count, 300);
        if has_subscribers {
            let delivered = || {
                prepared
                    .delivered
                    .load(std::sync::atomic::Ordering::Relaxed)
            };
            let waited = tokio::time::timeout(Duration::from_secs(60), async {
                while delivered() == 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await;
            assert!(waited.is_ok(), "{what}: the subscribers received nothing");
        }
        prepared.finish().await;
    }
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_reports_compares_prepares_and_measures() {
    let data = tempfile_dir("binary");
    let (mut child, addr) = serve(&data).await;
    let scenarios_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");

    // A run with the baselines: ghz's summary, the JSON report, the
    // comparison with the no-op server, the minimal KeyValue service and
    // Redis directly, each side run twice in turn.
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
            "--minimal-kv".as_ref(),
            "--rounds".as_ref(),
            "2".as_ref(),
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
        "minimal tonic KV",
        "ratio to minimal tonic KV:",
        "(medians of 2 rounds taken in turn)",
    ] {
        assert!(stdout.contains(text), "`{text}` in\n{stdout}");
    }
    let comparison: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&compare_path).unwrap()).unwrap();
    assert_eq!(comparison["rounds"], 2, "{comparison}");
    for side in ["gateway", "noop", "minimal"] {
        assert_eq!(comparison[side]["count"], 600, "{side}: {comparison}");
        assert_eq!(comparison[side]["failures"], 0, "{side}: {comparison}");
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

    // Gets alone and beside each API's neighbour (a few thousand keys).
    let stdout = prism_loadtest(
        &[
            "neighbour".as_ref(),
            kv.as_os_str(),
            "--host".as_ref(),
            addr.as_ref(),
            "-n".as_ref(),
            "300".as_ref(),
            "--keys".as_ref(),
            "3000".as_ref(),
        ],
        &[],
    )
    .await;
    for text in [
        "alone",
        "beside KeyValue",
        "beside Queue",
        "beside PubSub",
        "beside Reader",
        "beside Transact",
    ] {
        assert!(stdout.contains(text), "`{text}` in\n{stdout}");
    }
    let meanwhile: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("meanwhile:"))
        .collect();
    assert_eq!(meanwhile.len(), 5, "{stdout}");
    assert!(
        meanwhile.iter().all(|l| l.ends_with(" 0 errors")),
        "{stdout}"
    );
    child.kill().await.unwrap();

    // Footprint of a fresh gateway with a few hundred idle sessions.
    let db = data.join("footprint.db");
    let stdout = prism_loadtest(
        &[
            "footprint".as_ref(),
            "--prism".as_ref(),
            prism_binary().as_os_str(),
            "--sessions".as_ref(),
            "300".as_ref(),
            "--idle-window".as_ref(),
            "1s".as_ref(),
        ],
        &[("PRISM_SQLITE_PATH", db.as_os_str())],
    )
    .await;
    assert!(stdout.contains("start to serving:"), "{stdout}");
    assert!(
        stdout.contains("with 300 idle sessions (0 failed"),
        "{stdout}"
    );
    assert!(stdout.contains("CPU while they sit idle:"), "{stdout}");
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

#[tokio::test(flavor = "multi_thread")]
async fn the_minimal_keyvalue_baseline_gets_what_was_set_and_serves_nothing_else() {
    use prism_proto::keyvalue::v1::{self as kv, key_value_service_client::KeyValueServiceClient};
    let server = loadtest::minimal_kv::start().await.unwrap();
    let mut client = KeyValueServiceClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    let get = |key: &str| kv::GetRequest {
        key: key.into(),
        ..Default::default()
    };
    let missing = client.get(get("k")).await.unwrap().into_inner();
    assert!(!missing.found);
    for (value, version) in [(b"one".to_vec(), 1), (b"two".to_vec(), 2)] {
        let set = kv::SetRequest {
            key: "k".into(),
            value: value.clone(),
            ..Default::default()
        };
        assert_eq!(client.set(set).await.unwrap().into_inner().version, version);
        let got = client.get(get("k")).await.unwrap().into_inner();
        assert!(got.found);
        assert_eq!((got.value, got.version), (value, version));
    }
    let delete = kv::DeleteRequest {
        key: "k".into(),
        ..Default::default()
    };
    let refused = client.delete(delete).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented);
}

#[test]
fn medians_take_the_middle_run_and_add_up_the_counts() {
    let run = |rps: f64, p50_ms: f64| loadtest::Summary {
        count: 10,
        failures: 1,
        rps,
        p50_ms,
        p99_ms: p50_ms * 2.0,
    };
    let m = loadtest::Summary::median(&[run(300.0, 3.0), run(100.0, 1.0), run(200.0, 9.0)]);
    assert_eq!((m.count, m.failures), (30, 3));
    assert_eq!((m.rps, m.p50_ms, m.p99_ms), (200.0, 3.0, 6.0));
    let even = loadtest::Summary::median(&[run(300.0, 3.0), run(100.0, 1.0)]);
    assert_eq!(
        (even.rps, even.p50_ms),
        (200.0, 2.0),
        "the middle two's mean"
    );
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

#[tokio::test]
async fn a_tls_scenario_is_refused_rather_than_run_in_plaintext() {
    let tls = Scenario::parse(
        r#"{"call": "prism.session.v1.SessionService/Heartbeat", "host": "127.0.0.1:1"}"#,
    )
    .unwrap();
    let err = loadtest::prepare(tls, &Overrides::default())
        .await
        .err()
        .unwrap();
    assert!(err.contains("insecure"), "{err}");
}

fn tempfile_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "prism-loadtest-{what}-{:016x}",
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
