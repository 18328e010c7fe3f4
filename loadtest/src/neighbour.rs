//! The noisy-neighbour measurement: one session's calls (a scenario, e.g.
//! `kv_get_hot.json`) timed alone, then again beside another session of the
//! same namespace running the heaviest calls of one API back to back, for
//! each API in turn:
//!
//! - KeyValue: a Count and a full Scan over a large namespace, and
//!   BatchGets of 1,000 keys;
//! - Queue: a replay of a long log from its earliest message, to the end;
//! - PubSub: publishes fanned out to many subscriptions of one pattern;
//! - Reader: a Count with a filter and a Query deep into an OFFSET;
//! - Transact: Writes (a row and an outbox message) from several clients.
//!
//! The gateway should keep the first session's latency where it was: no
//! call holds an async worker or a lock long enough to delay the others.
//! (On a small machine the neighbour's work takes CPU from the measured
//! session, so throughput drops; what must not appear is a stall.)
//!
//! Bounded like every run: the KeyValue, Queue and Reader neighbours write
//! what they walk once, before their run; every loop ends when its
//! measured run does, and each neighbour's session is closed after it.

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
    pubsub::v1::{
        pub_sub_service_client::PubSubServiceClient, PublishRequest as EventRequest,
        SubscribeRequest as EventSubscribe,
    },
    queue::v1::{
        queue_service_client::QueueServiceClient, subscribe_request::StartPosition, BatchMessage,
        PublishBatchRequest, StartPosition as Position, SubscribeRequest,
    },
    reader::v1::{
        field_filter::Operator, filter, reader_service_client::ReaderServiceClient,
        CountRequest as RowCount, FieldFilter, Filter, QueryRequest,
    },
    session::v1::{session_service_client::SessionServiceClient, CloseSessionRequest},
    transact::v1::{
        data_write::WriteMode, transact_service_client::TransactServiceClient, DataWrite,
        MailboxWrite, WriteRequest,
    },
};
use tonic::transport::Channel;

use crate::{session_request, Prepared, Summary};

/// Most keys (and a tenth as many messages and rows) the neighbours may
/// write (bounded, like every load).
pub const MAX_KEYS: u64 = 1_000_000;
/// Keys per BatchSet while seeding, and per BatchGet in the loop.
const BATCH: u64 = 1000;
/// PubSub subscriptions of the neighbour's pattern.
const SUBSCRIBERS: usize = 32;
/// Clients writing Transact Writes at once.
const WRITERS: usize = 4;
/// Largest message the neighbours send or take.
const MESSAGE_LIMIT: usize = 64 * 1024 * 1024;

/// Who the neighbour is: its key, and the named config of each API (the
/// `neighbour` command's options).
#[derive(Debug, Clone, clap::Args)]
#[group(id = "neighbour-options")]
pub struct Neighbour {
    #[arg(long, default_value = "prism-dev-key")]
    pub api_key: String,
    #[arg(long, default_value = "user-profiles")]
    pub key_value_config: String,
    #[arg(long, default_value = "orders-queue")]
    pub queue_config: String,
    #[arg(long, default_value = "events")]
    pub pubsub_config: String,
    /// A config with the Reader and Transact patterns on one SQL backend.
    #[arg(long, default_value = "orders-db")]
    pub database_config: String,
    /// Its collection and table (columns as the embedded default's).
    #[arg(long, default_value = "orders")]
    pub table: String,
    #[arg(long, default_value = "order-events")]
    pub mailbox: String,
    /// Keys the KeyValue neighbour writes first (at most 1,000,000); the
    /// Queue neighbour's log and the Reader's table get a tenth as many
    /// messages and rows.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
}

/// The APIs, in the order they are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    KeyValue,
    Queue,
    PubSub,
    Reader,
    Transact,
}

impl Api {
    pub const ALL: [Api; 5] = [
        Api::KeyValue,
        Api::Queue,
        Api::PubSub,
        Api::Reader,
        Api::Transact,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Api::KeyValue => "KeyValue",
            Api::Queue => "Queue",
            Api::PubSub => "PubSub",
            Api::Reader => "Reader",
            Api::Transact => "Transact",
        }
    }
}

/// One measured run: alone, or beside a neighbour of `api` doing `work`.
#[derive(Debug)]
pub struct Run {
    pub beside: Option<Api>,
    pub summary: Summary,
    /// What the neighbour did meanwhile.
    pub work: String,
}

/// Calls the neighbour made during a measured run, by kind.
#[derive(Default)]
struct Tally {
    kinds: Vec<(&'static str, AtomicU64)>,
    errors: AtomicU64,
}

impl Tally {
    fn new(kinds: &[&'static str]) -> Arc<Self> {
        Arc::new(Tally {
            kinds: kinds.iter().map(|k| (*k, AtomicU64::new(0))).collect(),
            errors: AtomicU64::new(0),
        })
    }

    fn add(&self, kind: usize, ok: bool) {
        if ok {
            self.kinds[kind].1.fetch_add(1, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn render(&self) -> String {
        let mut parts: Vec<String> = self
            .kinds
            .iter()
            .map(|(what, n)| format!("{} {what}", n.load(Ordering::Relaxed)))
            .collect();
        parts.push(format!("{} errors", self.errors.load(Ordering::Relaxed)));
        parts.join(", ")
    }
}

/// A neighbour session of one API, its data written.
#[derive(Clone)]
struct Ready {
    channel: Channel,
    token: String,
    neighbour: Neighbour,
}

/// The measured session alone, then beside each API's neighbour.
pub async fn measure(prepared: &Prepared, neighbour: &Neighbour) -> Result<Vec<Run>, String> {
    if neighbour.keys < 10 || neighbour.keys > MAX_KEYS {
        return Err(format!("--keys must be from 10 to {MAX_KEYS}"));
    }
    let channel = prepared
        .channels
        .first()
        .cloned()
        .ok_or("the scenario has no connection")?;
    let (alone, _) = prepared.run().await;
    let mut runs = vec![Run {
        beside: None,
        summary: Summary::from(&alone),
        work: String::new(),
    }];
    for api in Api::ALL {
        let ready = open(&channel, neighbour, api).await?;
        seed(&ready, api).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tally, mut tasks) = heavy(&ready, api, &stop);
        let (beside, _) = prepared.run().await;
        stop.store(true, Ordering::Relaxed);
        // Each loop ends after its current call; one stuck longer is
        // stopped.
        if tokio::time::timeout(Duration::from_secs(60), async {
            while tasks.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tasks.abort_all();
        }
        runs.push(Run {
            beside: Some(api),
            summary: Summary::from(&beside),
            work: tally.render(),
        });
        let _ = SessionServiceClient::new(channel.clone())
            .close_session(CloseSessionRequest {
                session_token: ready.token,
                ..Default::default()
            })
            .await;
    }
    Ok(runs)
}

async fn open(channel: &Channel, neighbour: &Neighbour, api: Api) -> Result<Ready, String> {
    let config = match api {
        Api::KeyValue => &neighbour.key_value_config,
        Api::Queue => &neighbour.queue_config,
        Api::PubSub => &neighbour.pubsub_config,
        Api::Reader | Api::Transact => &neighbour.database_config,
    };
    let token = SessionServiceClient::new(channel.clone())
        .create_session(session_request(
            &neighbour.api_key,
            config,
            "prism-loadtest-neighbour",
        ))
        .await
        .map_err(|e| format!("cannot open the {} neighbour's session: {e}", api.name()))?
        .into_inner()
        .session_token;
    Ok(Ready {
        channel: channel.clone(),
        token,
        neighbour: neighbour.clone(),
    })
}

fn key(i: u64) -> String {
    format!("neighbour/{i:08}")
}

impl Ready {
    fn kv(&self) -> KeyValueServiceClient<Channel> {
        KeyValueServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MESSAGE_LIMIT)
            .max_encoding_message_size(MESSAGE_LIMIT)
    }

    fn queue(&self) -> QueueServiceClient<Channel> {
        QueueServiceClient::new(self.channel.clone()).max_decoding_message_size(MESSAGE_LIMIT)
    }

    fn reader(&self) -> ReaderServiceClient<Channel> {
        ReaderServiceClient::new(self.channel.clone()).max_decoding_message_size(MESSAGE_LIMIT)
    }

    fn transact(&self) -> TransactServiceClient<Channel> {
        TransactServiceClient::new(self.channel.clone())
    }

    /// Messages in the neighbour's queue, rows in its table.
    fn tenth(&self) -> u64 {
        self.neighbour.keys / 10
    }

    /// One Transact Write: an order row, and an outbox message with it.
    fn write(&self, i: u64) -> WriteRequest {
        use prost_types::{value::Kind, Value};
        let text = |s: String| Value {
            kind: Some(Kind::StringValue(s)),
        };
        let record = [
            ("customer", text(format!("neighbour-{}", i % 100))),
            ("status", text("pending".into())),
            (
                "amount",
                Value {
                    kind: Some(Kind::NumberValue((i % 1000) as f64)),
                },
            ),
            ("created_at", text("2026-01-01T00:00:00Z".into())),
        ];
        WriteRequest {
            session_token: self.token.clone(),
            data: Some(DataWrite {
                table: self.neighbour.table.clone(),
                record: record
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                mode: WriteMode::Insert as i32,
                id_field: None,
            }),
            mailbox: Some(MailboxWrite {
                mailbox_id: self.neighbour.mailbox.clone(),
                message: format!("order {i}").into_bytes(),
                ..Default::default()
            }),
            options: None,
        }
    }
}

/// Writes what the neighbour's heavy calls walk: keys, a long queue log, or
/// table rows. PubSub and Transact need nothing first.
async fn seed(ready: &Ready, api: Api) -> Result<(), String> {
    let failed = |e: tonic::Status| format!("cannot seed the {} neighbour: {e}", api.name());
    match api {
        Api::KeyValue => {
            let keys = ready.neighbour.keys;
            for start in (0..keys).step_by(BATCH as usize) {
                let end = (start + BATCH).min(keys);
                ready
                    .kv()
                    .batch_set(BatchSetRequest {
                        session_token: ready.token.clone(),
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
                    .map_err(failed)?;
            }
        }
        Api::Queue => {
            let messages = ready.tenth();
            for start in (0..messages).step_by(BATCH as usize) {
                let end = (start + BATCH).min(messages);
                ready
                    .queue()
                    .publish_batch(PublishBatchRequest {
                        session_token: ready.token.clone(),
                        topic: "neighbour-log".into(),
                        messages: (start..end)
                            .map(|_| BatchMessage {
                                payload: vec![b'q'; 100],
                                ..Default::default()
                            })
                            .collect(),
                    })
                    .await
                    .map_err(failed)?;
            }
        }
        Api::Reader => {
            // Rows through Transact Writes, a few clients at once.
            let rows = ready.tenth();
            let mut writers = tokio::task::JoinSet::new();
            for w in 0..WRITERS as u64 {
                let (mut client, requests) = (
                    ready.transact(),
                    (w..rows)
                        .step_by(WRITERS)
                        .map(|i| ready.write(i))
                        .collect::<Vec<_>>(),
                );
                writers.spawn(async move {
                    for request in requests {
                        client.write(request).await?;
                    }
                    Ok::<_, tonic::Status>(())
                });
            }
            while let Some(done) = writers.join_next().await {
                done.map_err(|e| format!("a seeding writer failed: {e}"))?
                    .map_err(failed)?;
            }
        }
        Api::PubSub | Api::Transact => {}
    }
    Ok(())
}

/// Starts the neighbour's loops; they run until `stop`.
fn heavy(
    ready: &Ready,
    api: Api,
    stop: &Arc<AtomicBool>,
) -> (Arc<Tally>, tokio::task::JoinSet<()>) {
    let mut tasks = tokio::task::JoinSet::new();
    let tally = match api {
        Api::KeyValue => {
            let tally = Tally::new(&["Counts", "full Scans", "BatchGets (1,000 keys)"]);
            tasks.spawn(kv_loop(
                ready.kv(),
                ready.token.clone(),
                ready.neighbour.keys,
                tally.clone(),
                stop.clone(),
            ));
            tally
        }
        Api::Queue => {
            let tally = Tally::new(&["whole replays", "messages replayed"]);
            tasks.spawn(replay_loop(
                ready.queue(),
                ready.token.clone(),
                ready.tenth(),
                tally.clone(),
                stop.clone(),
            ));
            tally
        }
        Api::PubSub => {
            let tally = Tally::new(&["events published", "events delivered"]);
            for _ in 0..SUBSCRIBERS {
                let client = PubSubServiceClient::new(ready.channel.clone());
                tasks.spawn(subscriber(
                    client,
                    ready.token.clone(),
                    tally.clone(),
                    stop.clone(),
                ));
            }
            let client = PubSubServiceClient::new(ready.channel.clone());
            tasks.spawn(publisher(
                client,
                ready.token.clone(),
                tally.clone(),
                stop.clone(),
            ));
            tally
        }
        Api::Reader => {
            let tally = Tally::new(&["filtered Counts", "Queries at a deep OFFSET"]);
            tasks.spawn(reader_loop(
                ready.reader(),
                ready.token.clone(),
                ready.neighbour.table.clone(),
                ready.tenth(),
                tally.clone(),
                stop.clone(),
            ));
            tally
        }
        Api::Transact => {
            let tally = Tally::new(&["Writes"]);
            let next = Arc::new(AtomicU64::new(ready.tenth()));
            for _ in 0..WRITERS {
                let requests = Writes {
                    ready: ready.clone(),
                    next: next.clone(),
                };
                tasks.spawn(write_loop(requests, tally.clone(), stop.clone()));
            }
            tally
        }
    };
    (tally, tasks)
}

/// Count, full Scan and a BatchGet, over and over.
async fn kv_loop(
    kv: KeyValueServiceClient<Channel>,
    token: String,
    keys: u64,
    tally: Arc<Tally>,
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
        tally.add(0, counted.is_ok());
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // A Scan cut short by the end of the run is not counted.
        match scan_all(&kv, &token, &stop).await {
            Ok(true) => tally.add(1, true),
            Ok(false) => {}
            Err(_) => tally.add(1, false),
        }
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
        tally.add(2, got.is_ok());
        round += 1;
    }
}

/// Every key of the namespace, a page of 10,000 at a time; whether it got
/// to the end before `stop`.
async fn scan_all(
    kv: &KeyValueServiceClient<Channel>,
    token: &str,
    stop: &AtomicBool,
) -> Result<bool, tonic::Status> {
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
        if stop.load(Ordering::Relaxed) {
            return Ok(false);
        }
        match last {
            Some(next) if items == 10_000 => cursor = next,
            _ => return Ok(true),
        }
    }
}

/// A private subscription reads the whole log from its earliest message,
/// over and over (its group is forgotten when its stream ends).
async fn replay_loop(
    queue: QueueServiceClient<Channel>,
    token: String,
    messages: u64,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) {
    let max = i32::try_from(messages).unwrap_or(i32::MAX);
    while !stop.load(Ordering::Relaxed) {
        let subscribed = queue
            .clone()
            .subscribe(SubscribeRequest {
                session_token: token.clone(),
                topic: "neighbour-log".into(),
                consumer_group: String::new(),
                start_position: Some(StartPosition::Position(Position::Earliest as i32)),
                max_messages: Some(max),
                timeout: None,
            })
            .await;
        let Ok(stream) = subscribed else {
            tally.add(0, false);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut stream = stream.into_inner();
        while !stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
                Ok(Ok(Some(_))) => tally.add(1, true),
                // The whole log, to its end.
                Ok(Ok(None)) => {
                    tally.add(0, true);
                    break;
                }
                Ok(Err(_)) => {
                    tally.add(0, false);
                    break;
                }
                Err(_) => {}
            }
        }
    }
}

/// One of the pattern's subscribers, taking every event.
async fn subscriber(
    mut client: PubSubServiceClient<Channel>,
    token: String,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) {
    let subscribed = client
        .subscribe(EventSubscribe {
            session_token: token,
            topic_pattern: "neighbour.>".into(),
            ..Default::default()
        })
        .await;
    let Ok(stream) = subscribed else {
        return tally.add(1, false);
    };
    let mut stream = stream.into_inner();
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
            Ok(Ok(Some(_))) => tally.add(1, true),
            Ok(Ok(None)) | Ok(Err(_)) => return tally.add(1, false),
            Err(_) => {}
        }
    }
}

/// 1 KiB events to the subscribers' pattern, back to back.
async fn publisher(
    mut client: PubSubServiceClient<Channel>,
    token: String,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let published = client
            .publish(EventRequest {
                session_token: token.clone(),
                topic: format!("neighbour.events.{}", i % 8),
                payload: vec![b'e'; 1024],
                ..Default::default()
            })
            .await;
        tally.add(0, published.is_ok());
    }
}

/// A filtered Count over the table and a Query near its end by OFFSET.
async fn reader_loop(
    reader: ReaderServiceClient<Channel>,
    token: String,
    table: String,
    rows: u64,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) {
    let pending = || Filter {
        filter: Some(filter::Filter::Field(FieldFilter {
            field: "status".into(),
            op: Operator::Equals as i32,
            value: Some(prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue("pending".into())),
            }),
        })),
    };
    // The last ten matching rows, however many earlier runs left.
    let matching = reader
        .clone()
        .count(RowCount {
            session_token: token.clone(),
            collection: table.clone(),
            filter: Some(pending()),
        })
        .await
        .map_or(rows, |c| {
            u64::try_from(c.into_inner().count).unwrap_or(rows)
        });
    let deep = i32::try_from(matching.saturating_sub(10)).unwrap_or(i32::MAX);
    while !stop.load(Ordering::Relaxed) {
        let counted = reader
            .clone()
            .count(RowCount {
                session_token: token.clone(),
                collection: table.clone(),
                filter: Some(pending()),
            })
            .await;
        tally.add(0, counted.is_ok());
        let queried = async {
            let mut rows = reader
                .clone()
                .query(QueryRequest {
                    session_token: token.clone(),
                    collection: table.clone(),
                    filter: Some(pending()),
                    sort: Vec::new(),
                    limit: Some(10),
                    offset: Some(deep),
                    fields: Vec::new(),
                })
                .await?
                .into_inner();
            while rows.message().await?.is_some() {}
            Ok::<_, tonic::Status>(())
        };
        tally.add(1, queried.await.is_ok());
    }
}

/// A Transact writer's requests, numbered across the writers.
struct Writes {
    ready: Ready,
    next: Arc<AtomicU64>,
}

async fn write_loop(writes: Writes, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut client = writes.ready.transact();
    while !stop.load(Ordering::Relaxed) {
        let i = writes.next.fetch_add(1, Ordering::Relaxed);
        let written = client.write(writes.ready.write(i)).await;
        tally.add(0, written.is_ok());
    }
}
