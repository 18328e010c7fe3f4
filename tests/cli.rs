//! The `prism` binary as a user runs it: validate, registry, and serve on the
//! embedded default with a SIGTERM at the end.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use prism::{
    proto::session::v1::{
        create_session_request::{Auth, Config},
        session_service_client::SessionServiceClient,
        CreateSessionRequest, HeartbeatRequest,
    },
    runtime::block_on_multi_thread,
};

const PRISM: &str = env!("CARGO_BIN_EXE_prism");

fn repo(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn validate_accepts_the_full_example() {
    let out = Command::new(PRISM)
        .args(["validate", &repo("config/full.yaml")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok   config orders-db"), "{stdout}");
    assert!(stdout.contains("configuration is valid"), "{stdout}");
}

fn validate_yaml(yaml: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("prism-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{}.yaml", yaml.len()));
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(PRISM)
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn validate_rejects_unknown_backend_type_and_missing_interface() {
    let (ok, text) = validate_yaml("backends:\n  docs: { type: mongodb }\nnamespaces: {}\n");
    assert!(!ok);
    assert!(
        text.contains("unknown variant `mongodb`") && text.contains("postgres"),
        "{text}"
    );

    let (ok, text) = validate_yaml(
        "backends:\n  bus: { type: nats, url: \"nats://127.0.0.1:4222\" }\n\
         namespaces:\n  ns: { allowed_backends: [bus], allowed_patterns: [key_value] }\n\
         configs:\n  kv: { namespace: ns, pattern: key_value, backend: bus, required_interfaces: [keyvalue_cas] }\n",
    );
    assert!(!ok);
    assert!(
        text.contains("FAIL config kv")
            && text.contains("`bus` (nats) does not implement keyvalue_cas"),
        "{text}"
    );
}

#[test]
fn validate_rejects_a_bad_option_naming_the_field_and_its_range() {
    let config = |options: &str| {
        format!(
            "backends:\n  mem: {{ type: memory }}\n\
             namespaces:\n  ns: {{ allowed_backends: [mem], allowed_patterns: [queue] }}\n\
             configs:\n  jobs: {{ namespace: ns, pattern: queue, backend: mem, options: {{ {options} }} }}\n"
        )
    };
    let (ok, text) = validate_yaml(&config("partitions: \"3\", visibility_timeout: 400ms"));
    assert!(ok, "{text}");
    for (options, field, allowed) in [
        ("partitions: \"0\"", "partitions", "from 1 to 1024"),
        (
            "visibility_timeout: forever",
            "visibility_timeout",
            "from 100ms to 12h",
        ),
        ("max_attempts: \"-2\"", "max_attempts", "from 1 to 1000"),
        (
            "partitons: \"3\"",
            "partitons",
            "the options are partitions",
        ),
    ] {
        let (ok, text) = validate_yaml(&config(options));
        assert!(!ok, "{options}: {text}");
        assert!(
            text.contains("FAIL config jobs")
                && text.contains(&format!("configs.jobs.options.{field}"))
                && text.contains(allowed),
            "{options}: {text}"
        );
    }
}

#[test]
fn registry_prints_the_matrix() {
    let out = Command::new(PRISM)
        .args(["registry", "backends"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("interface")
            && stdout.contains("keyvalue_ttl")
            && stdout.contains("kafka"),
        "{stdout}"
    );
    // The real matrix: the four KeyValue backends implement all six
    // KeyValue interfaces; kafka and nats none yet.
    let header: Vec<&str> = stdout.lines().next().unwrap().split_whitespace().collect();
    for line in stdout.lines().filter(|l| l.starts_with("keyvalue_")) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        for (kind, cell) in header.iter().zip(&cells).skip(1) {
            let expected = if matches!(*kind, "kafka" | "nats") {
                "-"
            } else {
                "yes"
            };
            assert_eq!(*cell, expected, "{kind} in {line}");
        }
    }
}

#[test]
// Waiting on a child process from a plain (non-async) test: std time is right here.
#[allow(clippy::disallowed_methods)]
fn serve_runs_on_the_embedded_default_and_stops_on_sigterm() {
    let workdir = std::env::temp_dir().join(format!("prism-serve-{}", std::process::id()));
    std::fs::create_dir_all(&workdir).unwrap();
    let mut child = Command::new(PRISM)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .current_dir(&workdir)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("serve prints its address").unwrap();
        if line.contains("grpc listening") {
            let at = line.find("127.0.0.1:").expect("address in the log line");
            let addr: String = line[at..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            break addr;
        }
    };
    // Keep draining the log so the child never blocks on a full pipe.
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());

    block_on_multi_thread(async move {
        let mut client = SessionServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let created = client
            .create_session(CreateSessionRequest {
                auth: Some(Auth::ApiKey("prism-dev-key".into())),
                config: Some(Config::ConfigName("user-profiles".into())),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        client
            .heartbeat(HeartbeatRequest {
                session_token: created.session_token,
            })
            .await
            .unwrap();
    });

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "serve did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    let log = drain.join().unwrap().join("\n");
    assert!(log.contains("closed_sessions=1"), "{log}");
}
