//! Transact: a row and its outbox message committed together (retried
//! safely), then two rows in one transaction over the stream. Run a
//! gateway on its embedded default (`cargo run --release -- serve`), then
//! `cargo run -p prism-client --example transact [endpoint]`.

use prism_client::{transact::Change, Client};

#[tokio::main]
async fn main() -> prism_client::Result<()> {
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:8980".into());
    let session = Client::connect(endpoint)
        .await?
        .session()
        .api_key("prism-dev-key")
        .config("orders-db")
        .open()
        .await?;
    let transact = session.transact();
    let id = f64::from(std::process::id()) * 10.0;
    let order = |id: f64, customer: &str| {
        Change::insert("orders")
            .field("id", id)
            .field("customer", customer.to_string())
            .field("status", "paid")
            .field("amount", 12.5)
            .field("created_at", "2026-12-01T00:00:00Z")
    };
    let written = transact
        .write(
            order(id, "carol").message("order-events", format!("order {id} placed").into_bytes()),
        )
        .await?;
    println!(
        "committed: {}, message sequence {:?}",
        written.committed,
        written.mailbox_result.map(|m| m.sequence)
    );

    let mut tx = transact.begin().await?;
    tx.write(order(id + 1.0, "dave")).await?;
    tx.write(order(id + 2.0, "erin")).await?;
    let tx_id = tx.id().to_string();
    let writes = tx.commit().await?;
    println!("transaction {tx_id} committed {writes} writes");
    session.close().await
}
