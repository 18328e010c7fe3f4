//! The noisy-neighbour measurement: one session's calls (a scenario, e.g.
//! `kv_get_hot.json`) timed alone, then again while another session of the
//! same namespace runs the heaviest KeyValue calls back to back — a Count
//! and a full Scan over a large namespace, and BatchGets of many keys. The
//! gateway should keep the first session's latency where it was: no call
//! holds an async worker or a lock long enough to delay the others.
//!
//! Bounded like every run: the neighbour writes `keys` keys once, and its
//! loop ends when the measured run does.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use prism_proto::{
    keyvalue::v1::{
        key_value_service_client::KeyValueServiceClient, BatchGetRequest, BatchSetRequest,
        CountRequest, Entry, ScanRequest,
    },
    session::v1::session_service_client::SessionServiceClient,
};
use tonic::transport::Channel;

use crate::{session_request, Comparison, Prepared, Summary};

/// Most keys the neighbour may write (bounded, like every load).
pub const MAX_KEYS: u64 = 1_000_000;
/// Keys per BatchSet while seeding, and per BatchGet in the loop.
const BATCH: u64 = 1000;

/// Who the neighbour is and how big its namespace gets.
#[derive(Debug, Clone)]
pub struct Neighbour {
    pub api_key: String,
    pub config_name: String,
    pub keys: u64,
}

/// The calls the neighbour made during the measured run.
#[derive(Debug, Default)]
pub struct Heavy {
    pub counts: AtomicU64,
    pub scans: AtomicU64,
    pub batch_gets: AtomicU64,
    pub errors: AtomicU64,
}

/// The measured session alone and beside the neighbour, as a comparison
/// (`noop` holds the run alone) and the neighbour's calls.
pub async fn measure(
    prepared: &Prepared,
    neighbour: &Neighbour,
) -> Result<(Comparison, Arc<Heavy>), String> {
    if neighbour.keys == 0 || neighbour.keys > MAX_KEYS {
        return Err(format!("--keys must be from 1 to {MAX_KEYS}"));
    }
    let channel = prepared
        .channels
        .first()
        .cloned()
        .ok_or("the scenario has no connection")?;
    let token = SessionServiceClient::new(channel.clone())
        .create_session(session_request(
            &neighbour.api_key,
            &neighbour.config_name,
            "prism-loadtest-neighbour",
        ))
        .await
        .map_err(|e| format!("cannot open the neighbour's session: {e}"))?
        .into_inner()
        .session_token;
    let kv = KeyValueServiceClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    seed(&kv, &token, neighbour.keys).await?;

    let (alone, _) = prepared.run().await;
    let heavy = Arc::new(Heavy::default());
    let stop = Arc::new(AtomicBool::new(false));
    let looping = tokio::spawn(heavy_loop(
        kv,
        token,
        neighbour.keys,
        heavy.clone(),
        stop.clone(),
    ));
    let (beside, _) = prepared.run().await;
    stop.store(true, Ordering::Relaxed);
    // The loop ends after its current call; one stuck longer is stopped.
    let abort = looping.abort_handle();
    if tokio::time::timeout(Duration::from_secs(60), looping)
        .await
        .is_err()
    {
        abort.abort();
    }
    Ok((
        Comparison {
            scenario: format!(
                "{}, beside a neighbour walking {} keys",
                prepared.scenario.title(),
                neighbour.keys
            ),
            gateway: Summary::from(&beside),
            noop: Some(Summary::from(&alone)),
            direct: None,
        },
        heavy,
    ))
}

fn key(i: u64) -> String {
    format!("neighbour/{i:08}")
}

/// Writes the neighbour's keys (100-byte values), `BATCH` at a time.
async fn seed(kv: &KeyValueServiceClient<Channel>, token: &str, keys: u64) -> Result<(), String> {
    let mut start = 0;
    while start < keys {
        let end = (start + BATCH).min(keys);
        kv.clone()
            .batch_set(BatchSetRequest {
                session_token: token.to_string(),
                entries: (start..end)
                    .map(|i| Entry {
                        key: key(i),
                        value: vec![b'n'; 100],
                        ttl: None,
                    })
                    .collect(),
                idempotency_token: None,
            })
            .await
            .map_err(|e| format!("cannot seed the neighbour's keys: {e}"))?;
        start = end;
    }
    Ok(())
}

/// Count, full Scan and a BatchGet, over and over, until `stop`.
async fn heavy_loop(
    kv: KeyValueServiceClient<Channel>,
    token: String,
    keys: u64,
    heavy: Arc<Heavy>,
    stop: Arc<AtomicBool>,
) {
    let mut round: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let counted = kv
            .clone()
            .count(CountRequest {
                session_token: token.clone(),
                prefix: "neighbour/".into(),
            })
            .await;
        tally(&heavy.counts, &heavy.errors, counted.is_ok());
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let scanned = scan_all(&kv, &token, &stop).await;
        tally(&heavy.scans, &heavy.errors, scanned.is_ok());
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let first = (round * BATCH) % keys;
        let got = kv
            .clone()
            .batch_get(BatchGetRequest {
                session_token: token.clone(),
                keys: (first..(first + BATCH).min(keys)).map(key).collect(),
            })
            .await;
        tally(&heavy.batch_gets, &heavy.errors, got.is_ok());
        round += 1;
    }
}

fn tally(done: &AtomicU64, errors: &AtomicU64, ok: bool) {
    if ok {
        done.fetch_add(1, Ordering::Relaxed);
    } else {
        errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every key of the namespace, a page of 10,000 at a time.
async fn scan_all(
    kv: &KeyValueServiceClient<Channel>,
    token: &str,
    stop: &AtomicBool,
) -> Result<(), tonic::Status> {
    let mut cursor = String::new();
    loop {
        let mut stream = kv
            .clone()
            .scan(ScanRequest {
                session_token: token.to_string(),
                prefix: "neighbour/".into(),
                cursor: cursor.clone(),
                limit: 10_000,
            })
            .await?
            .into_inner();
        let (mut items, mut last) = (0, None);
        while let Some(item) = stream.message().await? {
            items += 1;
            last = Some(item.cursor);
        }
        // Fewer than asked for: the end of the namespace.
        match last {
            Some(next) if items == 10_000 && !stop.load(Ordering::Relaxed) => cursor = next,
            _ => return Ok(()),
        }
    }
}
