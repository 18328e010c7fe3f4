//! `/metrics` is valid OpenMetrics text, as a real parser reads it (the
//! strict OpenMetrics parser of the Python `prometheus_client`, which
//! scripts/test.sh installs): after calls that fill the counters and
//! histograms, every family parses, has a help line, and each histogram's
//! buckets are cumulative up to `+Inf`, which equals its count. It is
//! served with the OpenMetrics content type.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{http_with_head, kv::kv_client, TestGateway, ADMIN_TOKEN};
use prism::{proto::keyvalue::v1 as kv, runtime::block_on_multi_thread};

const CHECK: &str = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families

families = list(text_string_to_metric_families(sys.stdin.read()))
assert families, "no metric families"
for f in families:
    assert f.documentation, f"{f.name} has no help line"
    if f.type != "histogram":
        continue
    series = {}
    for s in f.samples:
        key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
        series.setdefault(key, {"buckets": [], "count": None})
        if s.name.endswith("_bucket"):
            series[key]["buckets"].append((float(s.labels["le"]), s.value))
        elif s.name.endswith("_count"):
            series[key]["count"] = s.value
    for key, h in series.items():
        values = [v for _, v in sorted(h["buckets"])]
        assert values == sorted(values), f"{f.name}{key}: buckets not cumulative"
        assert sorted(h["buckets"])[-1][0] == float("inf"), f"{f.name}{key}: no +Inf bucket"
        assert values[-1] == h["count"], f"{f.name}{key}: +Inf bucket != count"
print(len(families), sum(len(f.samples) for f in families))
"#;

#[test]
fn the_exposition_parses_as_prometheus_text() {
    block_on_multi_thread(async {
        let gw = TestGateway::start().await;
        let token = gw.open("user-profiles").await.session_token;
        let mut client = kv_client(gw.channel.clone());
        let set = kv::SetRequest {
            session_token: token.clone(),
            key: "metrics".into(),
            value: b"v".to_vec(),
            ..Default::default()
        };
        client.set(set).await.expect("a Set");
        let empty_key = kv::GetRequest {
            session_token: token,
            key: String::new(),
        };
        client.get(empty_key).await.expect_err("a failed Get");

        let auth = format!("Bearer {ADMIN_TOKEN}");
        let (status, head, body) = http_with_head(
            gw.admin_addr,
            "GET",
            "/metrics",
            &[("Authorization", &auth)],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text; version=1.0.0"),
            "{head}"
        );
        assert!(
            body.contains("prism_request_duration_seconds_bucket{"),
            "{body}"
        );
        let checked = tokio::task::spawn_blocking(move || {
            let mut python = Command::new("python3")
                .args(["-c", CHECK])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("python3 runs");
            python
                .stdin
                .take()
                .unwrap()
                .write_all(body.as_bytes())
                .unwrap();
            python.wait_with_output().unwrap()
        })
        .await
        .unwrap();
        assert!(
            checked.status.success(),
            "the exposition does not parse (pip install prometheus_client; scripts/test.sh \
             does):\n{}",
            String::from_utf8_lossy(&checked.stderr)
        );
        println!(
            "parsed: {}",
            String::from_utf8_lossy(&checked.stdout).trim()
        );
        gw.stop().await;
    });
}
