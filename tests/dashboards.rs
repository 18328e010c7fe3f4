//! The Prometheus alert rules (`deploy/prometheus/alerts.yaml`) and the
//! Grafana dashboard (`deploy/grafana/prism-dashboard.json`), checked
//! offline: `promtool check rules` accepts the rules and every dashboard
//! query (as recording rules, Grafana's variables filled in), and every
//! metric either names is one a running gateway's `/metrics` declares.
//! promtool comes from Debian's `prometheus` package (scripts/test.sh
//! installs it).

mod common;

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use common::{kv::kv_client, metrics_text, TestGateway};
use prism::{proto::keyvalue::v1 as kv, runtime::block_on_multi_thread};

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn promtool_check_rules(file: &std::path::Path) {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(file)
        .output()
        .expect("promtool is installed (Debian's prometheus package; scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "promtool check rules {}:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The queries of the alert rules and of the dashboard's panels.
fn queries() -> (Vec<String>, Vec<String>) {
    let rules: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(deploy("prometheus/alerts.yaml")).unwrap())
            .unwrap();
    let alerts: Vec<String> = rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().iter())
        .map(|r| r["expr"].as_str().expect("an expr").to_string())
        .collect();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/prism-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let panels: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().expect("targets").iter())
        .map(|t| t["expr"].as_str().expect("an expr").to_string())
        .collect();
    (alerts, panels)
}

/// `prism_…` names a query reads (histogram series by their family).
fn metric_names(query: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = query;
    while let Some(at) = rest.find("prism_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(family.to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_alert_rules_pass_promtool() {
    promtool_check_rules(&deploy("prometheus/alerts.yaml"));
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    let (_, panels) = queries();
    assert!(panels.len() >= 10, "the dashboard has its panels");
    // Grafana's variables, filled as Grafana would.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in panels.iter().enumerate() {
        let q = q
            .replace("$__rate_interval", "5m")
            .replace("$namespace", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {}\n",
            serde_json::to_string(&q).unwrap()
        ));
    }
    let file = std::env::temp_dir().join(format!("prism-dashboard-{}.yaml", std::process::id()));
    std::fs::write(&file, rules).unwrap();
    promtool_check_rules(&file);
    let _ = std::fs::remove_file(file);
}

#[test]
fn every_metric_the_rules_and_dashboard_read_is_exported() {
    block_on_multi_thread(async {
        let gw = TestGateway::start().await;
        // Call families appear once a call was counted.
        let token = gw.open("user-profiles").await.session_token;
        let get = kv::GetRequest {
            session_token: token,
            key: "dashboards".into(),
        };
        kv_client(gw.channel.clone()).get(get).await.expect("a Get");
        let body = metrics_text(gw.admin_addr).await;
        // OpenMetrics declares a counter by its family name; its samples,
        // which queries read, end in `_total`.
        let exported: BTreeSet<String> = body
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .flat_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
                [name, "counter"] => vec![name.to_string(), format!("{name}_total")],
                [name, ..] => vec![name.to_string()],
                [] => vec![],
            })
            .collect();
        let (alerts, panels) = queries();
        for query in alerts.iter().chain(&panels) {
            let names = metric_names(query);
            assert!(
                !names.is_empty(),
                "a query that reads no Prism metric: {query}"
            );
            for name in names {
                assert!(
                    exported.contains(&name),
                    "{name} (in `{query}`) is not exported; /metrics declares {exported:?}"
                );
            }
        }
        gw.stop().await;
    });
}
