//! What the outbox tests share (`tests/relay.rs`, `tests/balanced.rs`): a
//! Postgres pool, a customers table, NATS streams that capture relayed
//! messages, a Transact Write of one row and one mailbox message, and the
//! clean-up of a namespace's outbox rows.

use prism::proto::transact::v1::{self as pb, data_write::WriteMode};
use prost_types::{value::Kind as V, Value};
use sqlx::AnyPool;

pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

pub async fn pg() -> AnyPool {
    sqlx::any::install_default_drivers();
    AnyPool::connect(&super::kv::database_url()).await.unwrap()
}

/// A table of customers for Transact writes.
pub async fn create_table(pool: &AnyPool, table: &str) {
    sqlx::query(&format!(
        "CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, customer TEXT NOT NULL)"
    ))
    .execute(pool)
    .await
    .unwrap();
}

/// Drops the table and the namespace's outbox rows.
pub async fn cleanup(pool: &AnyPool, table: &str, ns: &str) {
    let _ = sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
        .execute(pool)
        .await;
    for t in [
        "prism_mailbox",
        "prism_mailbox_sequence",
        "prism_relay_cursor",
        "prism_mailbox_dead_letter",
    ] {
        let _ = sqlx::query(&format!("DELETE FROM {t} WHERE namespace = $1"))
            .bind(ns)
            .execute(pool)
            .await;
    }
}

/// A JetStream stream that keeps what is published on `subject`.
pub async fn capture(js: &async_nats::jetstream::Context, name: &str, subject: &str) {
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: name.to_string(),
        subjects: vec![subject.to_string()],
        ..Default::default()
    })
    .await
    .unwrap();
}

/// A Write of one customer row and one message to `mailbox`.
pub fn customer_write(
    token: &str,
    table: &str,
    customer: &str,
    mailbox: &str,
    message: Vec<u8>,
) -> pb::WriteRequest {
    pb::WriteRequest {
        session_token: token.to_string(),
        data: Some(pb::DataWrite {
            table: table.to_string(),
            record: [(
                "customer".to_string(),
                Value {
                    kind: Some(V::StringValue(customer.to_string())),
                },
            )]
            .into(),
            mode: WriteMode::Insert as i32,
            id_field: None,
        }),
        mailbox: Some(pb::MailboxWrite {
            mailbox_id: mailbox.into(),
            message,
            ..Default::default()
        }),
        options: None,
    }
}
