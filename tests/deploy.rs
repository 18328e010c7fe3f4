//! The Kubernetes manifests under `deploy/kubernetes/`: valid against the
//! Kubernetes schema (offline, `kubernetes-validate` from PyPI, which
//! scripts/test.sh installs), their gateway config passes `prism validate`,
//! and the Deployment's probes, ports and drain fit that config.

use std::{path::PathBuf, process::Command};

use prism::config::{validate, GatewayConfig, Source};

fn manifests() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn manifest(name: &str) -> yaml_serde::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes")
        .join(name);
    yaml_serde::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_manifests_are_valid_kubernetes() {
    let files = manifests();
    assert!(
        files.len() >= 5,
        "deploy/kubernetes holds the manifests: {files:?}"
    );
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--no-warn"])
        .args(&files)
        .output()
        .expect("kubernetes-validate is installed (pip install kubernetes-validate; scripts/test.sh does)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert_eq!(
        text.matches(" passed for resource ").count(),
        files.len(),
        "{text}"
    );
    assert!(!text.contains("ERROR"), "{text}");
}

#[test]
fn the_configmap_config_passes_validation_and_fits_the_deployment() {
    let configmap = manifest("configmap.yaml");
    let yaml = configmap["data"]["prism.yaml"].as_str().unwrap();
    let secret = manifest("secret.example.yaml");
    let value = |key: &str| secret["stringData"][key].as_str().unwrap().to_string();
    let env = [
        ("PRISM_ADMIN_TOKEN", value("admin-token")),
        ("PRISM_DATABASE_URL", value("database-url")),
        ("PRISM_NATS_URL", value("nats-url")),
        ("PRISM_ORDERS_KEY_SHA256", value("orders-key-sha256")),
    ];
    let vars: [(&str, &str); 4] = std::array::from_fn(|i| (env[i].0, env[i].1.as_str()));
    let config = GatewayConfig::from_yaml(yaml, &Source::Inline, &vars).expect("config parses");
    let report = validate::validate(&config);
    assert!(!report.has_failures(), "{}", report.text());
    assert!(config.sessions.is_shared(), "replicas share sessions");

    let deployment = manifest("deployment.yaml");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    // Every variable the config names comes from the Secret.
    let from_secret: Vec<&str> = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for (k, _) in &env {
        assert!(from_secret.contains(k), "{k} set from the Secret");
    }
    // Probes on the admin port, on the paths open without the token.
    let admin_port = config.server.admin_listen.port();
    let port_of = |name: &str| {
        container["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap()
    };
    assert_eq!(port_of("admin"), u64::from(admin_port));
    assert_eq!(port_of("grpc"), u64::from(config.server.listen.port()));
    assert!(
        config.server.admin_listen.ip().is_unspecified(),
        "probes reach the admin port"
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    // The pod's grace covers the preStop pause and the gateway's drain.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let pause: u64 = container["lifecycle"]["preStop"]["exec"]["command"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        pause + config.server.shutdown_grace.as_secs() < grace,
        "preStop {pause}s + shutdown_grace {:?} within terminationGracePeriodSeconds {grace}",
        config.server.shutdown_grace
    );
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);
    let pdb = manifest("pdb.yaml");
    assert!(
        pdb["spec"]["minAvailable"].as_u64().unwrap()
            < deployment["spec"]["replicas"].as_u64().unwrap()
    );
}
