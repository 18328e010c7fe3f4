//! KeyValue through a session: run a gateway on its embedded default
//! (`cargo run --release -- serve`), then
//! `cargo run -p prism-client --example key_value [endpoint]`.

use std::time::Duration;

use futures::TryStreamExt;
use prism_client::{Client, Code};

#[tokio::main]
async fn main() -> prism_client::Result<()> {
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:8980".into());
    let client = Client::connect(endpoint).await?;
    let session = client
        .session()
        .api_key("prism-dev-key")
        .config("user-profiles")
        .open()
        .await?;
    let kv = session.kv();

    let version = kv.set("user/42", b"ada".to_vec()).await?;
    let got = kv.get("user/42").await?.expect("just set");
    println!(
        "user/42 = {:?} (version {})",
        String::from_utf8_lossy(&got.value),
        got.version
    );

    kv.set_with_ttl("user/42/login", b"now".to_vec(), Duration::from_secs(60))
        .await?;
    println!(
        "user/42/login expires in {:?}",
        kv.ttl("user/42/login").await?
    );

    // Optimistic concurrency: the write applies only at the version read.
    kv.compare_and_swap("user/42", version, b"ada lovelace".to_vec())
        .await?;
    match kv
        .compare_and_swap("user/42", version, b"stale".to_vec())
        .await
    {
        Err(e) if e.code() == Code::Aborted => {
            println!("stale write refused: {}", e.reason().unwrap_or("?"))
        }
        other => panic!("expected a refused write, got {other:?}"),
    }

    // All or nothing.
    kv.transaction()
        .put("user/43", b"grace".to_vec())
        .if_exists(false)
        .delete("user/42/login")
        .commit()
        .await?;

    let keys: Vec<String> = kv.scan_keys("user/").try_collect().await?;
    println!("keys under user/: {keys:?}");
    session.close().await
}
