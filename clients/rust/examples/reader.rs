//! Reader: pages that follow cursors, filters, counts and one row by id,
//! over the embedded default's demo `orders` table. Run a gateway on its
//! embedded default (`cargo run --release -- serve`), then
//! `cargo run -p prism-client --example reader [endpoint]`.

use futures::TryStreamExt;
use prism_client::{Client, Filter};

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
    let reader = session.reader();
    let pages: Vec<_> = reader
        .read("orders")
        .sort_desc("amount")
        .page_size(2)
        .pages()
        .try_collect()
        .await?;
    for page in &pages {
        let amounts: Vec<_> = page
            .rows
            .iter()
            .map(|r| r.fields["amount"].clone())
            .collect();
        println!(
            "page of {} rows, more: {}: {amounts:?}",
            page.rows.len(),
            page.has_more
        );
    }
    let alice = reader
        .count("orders", Some(Filter::eq("customer", "alice")))
        .await?;
    println!("alice has {alice} orders");
    println!(
        "order 1: {:?}",
        reader.get("orders", "1").await?.map(|r| r.fields)
    );
    session.close().await
}
