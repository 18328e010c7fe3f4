//! PubSub: subscribe to a pattern, publish, receive. Run a gateway on its
//! embedded default (`cargo run --release -- serve`), then
//! `cargo run -p prism-client --example pubsub [endpoint]`.

use futures::StreamExt;
use prism_client::Client;

#[tokio::main]
async fn main() -> prism_client::Result<()> {
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:8980".into());
    let session = Client::connect(endpoint)
        .await?
        .session()
        .api_key("prism-dev-key")
        .config("events")
        .open()
        .await?;
    let pubsub = session.pubsub();
    let mut events = Box::pin(pubsub.subscribe("example.users.*"));
    // The subscription starts when first polled; PubSub is at-most-once,
    // so publish once a subscriber is counted.
    let next = tokio::spawn(async move { events.next().await });
    loop {
        let published = pubsub
            .publish("example.users.created", b"ada".to_vec())
            .await?;
        if published.subscriber_count > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    if let Ok(Some(event)) = next.await {
        let event = event?;
        println!(
            "{}: {:?}",
            event.topic,
            String::from_utf8_lossy(&event.payload)
        );
    }
    session.close().await
}
