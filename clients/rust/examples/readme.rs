// The README's Rust example, verbatim: tests/readme.rs checks that and runs it
// (a plain comment, so the test can include! this file).

use prism_client::Client;

#[tokio::main]
async fn main() -> prism_client::Result<()> {
    let endpoint = std::env::var("PRISM_ENDPOINT").unwrap_or("http://127.0.0.1:8980".into());
    let client = Client::connect(endpoint).await?;
    let session = client
        .session()
        .api_key("prism-dev-key")
        .config("user-profiles")
        .open()
        .await?;
    let kv = session.kv();
    kv.set("user/42", b"ada".to_vec()).await?;
    let got = kv.get("user/42").await?.expect("just set");
    println!("user/42 = {}", String::from_utf8_lossy(&got.value));
    session.close().await
}
