//! Queue: publish, then consume as a consumer group and acknowledge. Run a
//! gateway on its embedded default (`cargo run --release -- serve`), then
//! `cargo run -p prism-client --example queue [endpoint]`.

use futures::TryStreamExt;
use prism_client::{
    queue::{Start, SubscribeOptions},
    Client,
};

#[tokio::main]
async fn main() -> prism_client::Result<()> {
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:8980".into());
    let session = Client::connect(endpoint)
        .await?
        .session()
        .api_key("prism-dev-key")
        .config("orders-queue")
        .open()
        .await?;
    let queue = session.queue();
    let topic = format!("orders.example.{}", std::process::id());
    for i in 0..3 {
        let receipt = queue
            .publish(&topic, format!("order {i}").into_bytes())
            .await?;
        println!(
            "published {} at offset {}",
            receipt.message_id, receipt.offset
        );
    }
    let options = SubscribeOptions {
        consumer_group: "example".into(),
        start: Some(Start::Earliest),
        max_messages: Some(3),
        ..Default::default()
    };
    let mut deliveries = Box::pin(queue.subscribe(&topic, options));
    while let Some(delivery) = deliveries.try_next().await? {
        println!(
            "received {:?}",
            String::from_utf8_lossy(&delivery.message.payload)
        );
        delivery.ack().await?;
    }
    session.close().await
}
