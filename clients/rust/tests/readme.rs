//! The README's Rust example is `examples/readme.rs`, verbatim, and runs
//! as written against a gateway on the embedded default config.

mod common;

/// The example itself, compiled into this test.
mod example {
    include!("../examples/readme.rs");

    pub fn run() -> prism_client::Result<()> {
        main()
    }
}

use common::*;

#[test]
fn the_readme_example_is_examples_readme_and_runs() {
    let readme = include_str!("../../../README.md");
    let source = include_str!("../examples/readme.rs");
    let (_, body) = source
        .split_once("\n\n")
        .expect("a doc line, then the program");
    assert!(
        readme.contains(&format!("```rust\n{body}```")),
        "README.md's Rust example differs from clients/rust/examples/readme.rs"
    );
    run(async {
        let (gw, addr) = Served::embedded_on_free_port().await;
        // The only test in this binary: nothing else reads the variable.
        std::env::set_var("PRISM_ENDPOINT", format!("http://{addr}"));
        // Its own runtime (#[tokio::main]), so on a thread of its own.
        let (done, ran) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = done.send(example::run().map_err(|e| e.to_string()));
        });
        ran.await
            .expect("the example ran")
            .expect("the example succeeds");
        let session = client(addr)
            .await
            .session()
            .api_key("prism-dev-key")
            .config("user-profiles")
            .open()
            .await
            .unwrap();
        let stored = session.kv().get("user/42").await.unwrap().map(|v| v.value);
        assert_eq!(stored, Some(b"ada".to_vec()));
        gw.stop().await;
    });
}
