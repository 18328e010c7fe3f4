//! The README's Rust example is `examples/readme.rs`, verbatim, and runs
//! as written against a gateway on the embedded default config.

mod common;

use common::*;

#[test]
fn the_readme_example_is_examples_readme_and_runs() {
    let readme = include_str!("../../../README.md");
    let example = include_str!("../examples/readme.rs");
    let (_, body) = example
        .split_once("\n\n")
        .expect("a doc line, then the program");
    assert!(
        readme.contains(&format!("```rust\n{body}```")),
        "README.md's Rust example differs from clients/rust/examples/readme.rs"
    );
    let binary = std::env::current_exe()
        .expect("the test's path")
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps")
        .join("examples")
        .join("readme");
    assert!(
        binary.exists(),
        "{} is missing: cargo test builds examples (or: cargo build -p prism-client --examples)",
        binary.display()
    );
    run(async {
        let (gw, addr) = Served::embedded_on_free_port().await;
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(binary)
                .env("PRISM_ENDPOINT", format!("http://{addr}"))
                .output()
                .expect("the example runs")
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(stdout.trim(), "user/42 = ada");
        gw.stop().await;
    });
}
