//! Fuzz target `gate`: arbitrary bytes as the request message of any RPC,
//! sent over gRPC to a gateway running the embedded default config, with a
//! valid session token (or API key) laid over them half of the time so the
//! input reaches past authentication into the gate and the services.
//!
//! Input: byte 0 picks the method, bit 0 of byte 1 whether a credential is
//! laid over the message, the rest is the message. The gateway must answer
//! every input with a status other than UNKNOWN or INTERNAL (tonic's own
//! "failed to decode" aside), within a bound, and never panic.

use std::{net::SocketAddr, time::Duration};

use bytes::{Buf, BufMut};
use prism::proto::session::v1::{
    create_session_request::{Auth, Config},
    session_service_client::SessionServiceClient,
    CloseSessionRequest, CreateSessionRequest, CreateSessionResponse, GetSessionRequest,
};
use prost::Message as _;
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    transport::{Channel, Endpoint},
    Code, Status,
};

/// The embedded default config's development key.
const DEV_KEY: &str = "prism-dev-key";
/// Longest a unary call may take before it counts as a hang.
const UNARY_BOUND: Duration = Duration::from_secs(10);
/// How long a stream is read (per message) before the client drops it.
const STREAM_READ: Duration = Duration::from_millis(50);
/// Most messages read from one stream.
const STREAM_MESSAGES: usize = 8;

#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Unary,
    ServerStream,
    Bidi,
}

/// Which credential is laid over field 1 (`session_token` in every data
/// request, `api_key` in CreateSession).
#[derive(Clone, Copy)]
enum Credential {
    /// ConfigService takes no session.
    None,
    KeyValue,
    Queue,
    PubSub,
    Db,
    /// A session of its own, which the call may close.
    Spare,
    ApiKey,
}

use Credential as C;
use Shape::{Bidi, ServerStream as Stream, Unary};

#[rustfmt::skip]
const METHODS: &[(&str, Shape, Credential)] = &[
    ("/prism.session.v1.SessionService/CreateSession", Unary, C::ApiKey),
    ("/prism.session.v1.SessionService/CloseSession", Unary, C::Spare),
    ("/prism.session.v1.SessionService/Heartbeat", Unary, C::Spare),
    ("/prism.session.v1.SessionService/GetSession", Unary, C::Spare),
    ("/prism.session.v1.SessionService/RefreshSession", Unary, C::Spare),
    ("/prism.config.v1.ConfigService/GetConfig", Unary, C::None),
    ("/prism.config.v1.ConfigService/ListConfigs", Unary, C::None),
    ("/prism.keyvalue.v1.KeyValueService/Set", Unary, C::KeyValue),
    ("/prism.keyvalue.v1.KeyValueService/Get", Unary, C::KeyValue),
    ("/prism.keyvalue.v1.KeyValueService/Delete", Unary, C::KeyValue),
    ("/prism.keyvalue.v1.KeyValueService/Exists", Unary, C::KeyValue),
    ("/prism.keyvalue.v1.KeyValueService/Scan", Stream, C::KeyValue),
    ("/prism.keyvalue.v1.KeyValueService/ScanKeys", Stream, C::KeyValue),
    ("/prism.keyvalue.v1.KeyValueService/Count", Unary, C::KeyValue),
    ("/prism.keyvalue.v1.KeyValueService/Expire", Unary, C::KeyValue),
    ("/prism.keyvalue.v1.KeyValueService/GetTTL", Unary, C::KeyValue),
    ("/prism.keyvalue.v1.KeyValueService/Persist", Unary, C::KeyValue),
    ("/prism.keyvalue.v1.KeyValueService/BatchGet", Unary, C::KeyValue),
    ("/prism.keyvalue.v1.KeyValueService/BatchSet", Unary, C::KeyValue),
    ("/prism.keyvalue.v1.KeyValueService/BatchDelete", Unary, C::KeyValue),
    ("/prism.keyvalue.v1.KeyValueService/CompareAndSwap", Unary, C::KeyValue),
    ("/prism.keyvalue.v1.KeyValueService/Transaction", Unary, C::KeyValue),
    ("/prism.queue.v1.QueueService/Publish", Unary, C::Queue),
    ("/prism.queue.v1.QueueService/PublishBatch", Unary, C::Queue),
    ("/prism.queue.v1.QueueService/Subscribe", Stream, C::Queue),
    ("/prism.queue.v1.QueueService/Acknowledge", Unary, C::Queue),
    ("/prism.queue.v1.QueueService/Commit", Unary, C::Queue),
    ("/prism.queue.v1.QueueService/Seek", Unary, C::Queue),
    ("/prism.queue.v1.QueueService/GetTopicInfo", Unary, C::Queue),
    ("/prism.pubsub.v1.PubSubService/Publish", Unary, C::PubSub),
    ("/prism.pubsub.v1.PubSubService/Subscribe", Stream, C::PubSub),
    ("/prism.pubsub.v1.PubSubService/Unsubscribe", Unary, C::PubSub),
    ("/prism.pubsub.v1.PubSubService/ListSubscriptions", Unary, C::PubSub),
    ("/prism.reader.v1.ReaderService/Read", Stream, C::Db),
    ("/prism.reader.v1.ReaderService/Query", Stream, C::Db),
    ("/prism.reader.v1.ReaderService/Count", Unary, C::Db),
    ("/prism.reader.v1.ReaderService/Get", Unary, C::Db),
    ("/prism.transact.v1.TransactService/Write", Unary, C::Db),
    ("/prism.transact.v1.TransactService/Transaction", Bidi, C::Db),
    ("/prism.transact.v1.TransactService/ReadMailbox", Stream, C::Db),
    ("/prism.transact.v1.TransactService/ProcessMailbox", Unary, C::Db),
];

/// Messages as bytes, untouched both ways.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

/// How the gateway answered an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer, or a stream that ended or was read for a while.
    Answered,
    /// A status other than the two that mean a bug.
    Refused(Code),
    /// tonic could not decode the message (INTERNAL, as gRPC specifies).
    Undecodable,
}

/// A gateway on the embedded default (SQLite in a temporary file), on its
/// own thread, and a client connection with a session per pattern.
pub struct Harness {
    client: tokio::runtime::Runtime,
    channel: Channel,
    kv: String,
    queue: String,
    pubsub: String,
    db: String,
    spare: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    gateway: Option<std::thread::JoinHandle<()>>,
    /// Holds the SQLite file; removed at stop.
    dir: std::path::PathBuf,
}

impl Harness {
    pub fn start() -> Harness {
        let dir = std::env::temp_dir().join(format!(
            "prism-fuzz-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let sqlite = dir.join("orders.db").display().to_string();
        let env = [
            ("PRISM_SQLITE_PATH", sqlite.as_str()),
            ("PRISM_ADMIN_TOKEN", "fuzz-admin"),
        ];
        let config = prism::config::GatewayConfig::from_yaml(
            prism::config::EMBEDDED_DEFAULT,
            &prism::config::Source::Embedded,
            &env,
        )
        .expect("the embedded default parses");
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let gateway = std::thread::spawn(move || {
            prism::runtime::block_on_multi_thread(async move {
                let gateway = std::sync::Arc::new(
                    prism::server::Gateway::start(config).expect("the gateway starts"),
                );
                let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind loopback");
                addr_tx.send(grpc.local_addr().unwrap()).unwrap();
                let listeners = prism::server::Listeners { grpc, admin: None };
                prism::server::run(gateway, listeners, async move {
                    let _ = stopped.await;
                })
                .await
                .expect("the gateway serves");
            })
        });
        let addr = addr_rx.recv().expect("the gateway listens");
        let client = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a client runtime");
        let channel = client.block_on(async {
            Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .expect("connect to the gateway")
        });
        let open = |config: &str| client.block_on(open_session(&channel, config));
        Harness {
            kv: open("user-profiles"),
            queue: open("orders-queue"),
            pubsub: open("events"),
            db: open("orders-db"),
            spare: open("user-profiles"),
            client,
            channel,
            stop: Some(stop),
            gateway: Some(gateway),
            dir,
        }
    }

    /// Sends one input; panics on a finding.
    pub fn run(&mut self, data: &[u8]) -> Outcome {
        let [pick, flags, message @ ..] = data else {
            return Outcome::Refused(Code::InvalidArgument);
        };
        let (path, shape, credential) = METHODS[usize::from(*pick) % METHODS.len()];
        let mut messages = vec![message.to_vec()];
        let overlay = flags & 1 == 1 && !matches!(credential, C::None);
        if overlay {
            let value = match credential {
                C::None => String::new(),
                C::KeyValue => self.kv.clone(),
                C::Queue => self.queue.clone(),
                C::PubSub => self.pubsub.clone(),
                C::Db => self.db.clone(),
                C::Spare => self.spare.clone(),
                C::ApiKey => DEV_KEY.to_string(),
            };
            if shape == Bidi {
                // The stream's first message begins, the input follows.
                messages.insert(0, begin(&value));
            } else {
                // A repeated field 1 overrides the input's own.
                field_one(&mut messages[0], &value);
            }
        }
        let channel = self.channel.clone();
        let (outcome, reply) = self.client.block_on(async move {
            match shape {
                Bidi => bidi(channel, path, messages).await,
                _ => {
                    let message = messages.pop().unwrap_or_default();
                    if shape == Unary {
                        unary(channel, path, message).await
                    } else {
                        server_stream(channel, path, message).await
                    }
                }
            }
        });
        if overlay {
            self.tidy(credential, outcome, reply);
        }
        outcome
    }

    /// Closes sessions the input created and replaces one the gateway no
    /// longer knows (closed by the input, or expired), so that a long run
    /// neither fills the namespace nor loses its sessions.
    fn tidy(&mut self, credential: Credential, outcome: Outcome, reply: Option<Vec<u8>>) {
        let channel = self.channel.clone();
        if outcome == Outcome::Refused(Code::Unauthenticated) {
            let (slot, config) = match credential {
                C::KeyValue => (&mut self.kv, "user-profiles"),
                C::Queue => (&mut self.queue, "orders-queue"),
                C::PubSub => (&mut self.pubsub, "events"),
                C::Db => (&mut self.db, "orders-db"),
                C::Spare => (&mut self.spare, "user-profiles"),
                C::None | C::ApiKey => return,
            };
            *slot = self.client.block_on(open_session(&channel, config));
            return;
        }
        match credential {
            C::ApiKey => {
                let created = reply.and_then(|r| CreateSessionResponse::decode(&r[..]).ok());
                if let Some(created) = created {
                    self.client
                        .block_on(close_session(&channel, created.session_token));
                }
            }
            C::Spare => {
                let spare = self.spare.clone();
                let alive = self.client.block_on(async move {
                    SessionServiceClient::new(channel)
                        .get_session(GetSessionRequest {
                            session_token: spare,
                        })
                        .await
                        .is_ok()
                });
                if !alive {
                    self.spare = self
                        .client
                        .block_on(open_session(&self.channel, "user-profiles"));
                }
            }
            _ => {}
        }
    }

    /// Stops the gateway and waits for its thread.
    pub fn stop(mut self) {
        drop(self.stop.take());
        if let Some(gateway) = self.gateway.take() {
            gateway.join().expect("the gateway thread ends cleanly");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn open_session(channel: &Channel, config: &str) -> String {
    SessionServiceClient::new(channel.clone())
        .create_session(CreateSessionRequest {
            auth: Some(Auth::ApiKey(DEV_KEY.into())),
            config: Some(Config::ConfigName(config.into())),
            ..Default::default()
        })
        .await
        .expect("a session on the embedded default")
        .into_inner()
        .session_token
}

async fn close_session(channel: &Channel, token: String) {
    let _ = SessionServiceClient::new(channel.clone())
        .close_session(CloseSessionRequest {
            session_token: token,
            ..Default::default()
        })
        .await;
}

/// Appends field 1 (length-delimited) holding `value` to `message`.
fn field_one(message: &mut Vec<u8>, value: &str) {
    message.push(0x0a);
    prost::encoding::encode_varint(value.len() as u64, message);
    message.extend_from_slice(value.as_bytes());
}

/// A TransactRequest beginning a transaction in the session.
fn begin(token: &str) -> Vec<u8> {
    use prism::proto::transact::v1::{
        transact_request::Request, BeginTransaction, TransactRequest,
    };
    TransactRequest {
        request: Some(Request::Begin(BeginTransaction {
            session_token: token.into(),
            options: None,
        })),
    }
    .encode_to_vec()
}

/// Every status a client input may get, but a bug's.
fn check(path: &str, status: &Status) -> Outcome {
    let decode_failure = status
        .message()
        .starts_with("failed to decode Protobuf message");
    match status.code() {
        Code::Unknown => panic!("{path}: UNKNOWN: {status:?}"),
        Code::Internal if decode_failure => Outcome::Undecodable,
        Code::Internal => panic!("{path}: INTERNAL: {status:?}"),
        code => Outcome::Refused(code),
    }
}

fn grpc(channel: Channel) -> tonic::client::Grpc<Channel> {
    tonic::client::Grpc::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

/// An answer (and its bytes, for a unary call), or the status.
type Reply = (Outcome, Option<Vec<u8>>);

async fn unary(channel: Channel, path: &'static str, message: Vec<u8>) -> Reply {
    let mut grpc = grpc(channel);
    grpc.ready().await.expect("the connection is up");
    let call = grpc.unary(
        tonic::Request::new(message),
        PathAndQuery::from_static(path),
        Raw,
    );
    match tokio::time::timeout(UNARY_BOUND, call).await {
        Err(_) => panic!("{path}: no answer within {UNARY_BOUND:?}"),
        Ok(Ok(reply)) => (Outcome::Answered, Some(reply.into_inner())),
        Ok(Err(status)) => (check(path, &status), None),
    }
}

/// Reads a stream for a while: a few messages, or until it is quiet.
async fn read(path: &str, mut stream: tonic::Streaming<Vec<u8>>) -> Outcome {
    for _ in 0..STREAM_MESSAGES {
        match tokio::time::timeout(STREAM_READ, stream.message()).await {
            Err(_) | Ok(Ok(None)) => break,
            Ok(Ok(Some(_))) => {}
            Ok(Err(status)) => return check(path, &status),
        }
    }
    Outcome::Answered
}

async fn server_stream(channel: Channel, path: &'static str, message: Vec<u8>) -> Reply {
    let mut grpc = grpc(channel);
    grpc.ready().await.expect("the connection is up");
    let call = grpc.server_streaming(
        tonic::Request::new(message),
        PathAndQuery::from_static(path),
        Raw,
    );
    streamed(path, call).await
}

async fn bidi(channel: Channel, path: &'static str, messages: Vec<Vec<u8>>) -> Reply {
    let mut grpc = grpc(channel);
    grpc.ready().await.expect("the connection is up");
    let requests = futures::stream::iter(messages);
    let call = grpc.streaming(
        tonic::Request::new(requests),
        PathAndQuery::from_static(path),
        Raw,
    );
    streamed(path, call).await
}

/// A streaming call's answer: its stream, read for a while, or its status.
async fn streamed(
    path: &str,
    call: impl std::future::Future<Output = Result<tonic::Response<tonic::Streaming<Vec<u8>>>, Status>>,
) -> Reply {
    let outcome = match tokio::time::timeout(UNARY_BOUND, call).await {
        Err(_) => panic!("{path}: no answer within {UNARY_BOUND:?}"),
        Ok(Ok(stream)) => read(path, stream.into_inner()).await,
        Ok(Err(status)) => check(path, &status),
    };
    (outcome, None)
}
