//! The load loop: `concurrency` workers spread over `connections` HTTP/2
//! connections take request numbers from one counter until the total is
//! reached or the duration is over; with `rps`, request `n` is not sent
//! before `start + n / rps`. Each call is bounded by the timeout, so the
//! run is bounded too.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use futures::future::BoxFuture;
use tokio::time::Instant;
use tonic::{transport::Channel, Code};

use super::{call::Call, scenario::Bounds};

/// One call's outcome.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: SystemTime,
    pub latency: Duration,
    pub code: Code,
    pub error: Option<String>,
}

/// Why a run ended (ghz's `endReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Normal,
    Timeout,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Normal => "normal",
            EndReason::Timeout => "timeout",
        }
    }
}

pub struct Outcome {
    pub samples: Vec<Sample>,
    pub total: Duration,
    pub end_reason: EndReason,
    /// The first successful response, for the no-op baseline to replay.
    pub first_reply: Option<Vec<bytes::Bytes>>,
}

/// `connections` HTTP/2 connections to `addr` (each tonic channel is one).
pub async fn connect(addr: SocketAddr, connections: usize) -> Result<Vec<Channel>, String> {
    let mut out = Vec::with_capacity(connections);
    for _ in 0..connections {
        let endpoint = Channel::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true);
        out.push(
            endpoint
                .connect()
                .await
                .map_err(|e| format!("cannot connect to {addr}: {e}"))?,
        );
    }
    Ok(out)
}

/// One worker's way of making request `n`; the latency is measured
/// around it. Returns the status and, for a failure, its message.
pub trait Worker: Send + 'static {
    fn call(&mut self, n: u64) -> BoxFuture<'_, (Code, Option<String>)>;
}

/// Drives `bounds.concurrency` workers (made by `make(worker_index)`) over
/// one shared schedule until the total or the duration is reached.
pub async fn drive<W: Worker>(bounds: &Bounds, mut make: impl FnMut(usize) -> W) -> Outcome {
    let start = Instant::now();
    let started_at = SystemTime::now();
    let deadline = bounds.duration.map(|d| start + d);
    let issued = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for index in 0..bounds.concurrency {
        let mut worker = make(index);
        let (issued, bounds) = (issued.clone(), *bounds);
        workers.spawn(async move {
            let mut samples = Vec::new();
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if bounds.total.is_some_and(|t| n >= t) {
                    break;
                }
                if let Some(rps) = bounds.rps {
                    let due = start + Duration::from_secs_f64(n as f64 / rps as f64);
                    if deadline.is_some_and(|d| due >= d) {
                        break;
                    }
                    tokio::time::sleep_until(due).await;
                }
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    break;
                }
                let (code, error) = match tokio::time::timeout(bounds.timeout, worker.call(n)).await
                {
                    Ok(answer) => answer,
                    Err(_) => (
                        Code::DeadlineExceeded,
                        Some("context deadline exceeded".into()),
                    ),
                };
                samples.push(Sample {
                    at: started_at + now.duration_since(start),
                    latency: now.elapsed(),
                    code,
                    error,
                });
            }
            samples
        });
    }
    let mut samples = Vec::new();
    while let Some(done) = workers.join_next().await {
        samples.extend(done.unwrap_or_default());
    }
    Outcome {
        samples,
        total: start.elapsed(),
        end_reason: if bounds.total.is_none() {
            EndReason::Timeout
        } else {
            EndReason::Normal
        },
        first_reply: None,
    }
}

/// A worker making the scenario's gRPC call on one connection.
struct GrpcWorker {
    call: Arc<Call>,
    grpc: tonic::client::Grpc<Channel>,
    index: usize,
    /// Set once; later replies only check it (no lock on the load loop).
    first_reply: Arc<std::sync::OnceLock<Vec<bytes::Bytes>>>,
}

impl Worker for GrpcWorker {
    fn call(&mut self, n: u64) -> BoxFuture<'_, (Code, Option<String>)> {
        Box::pin(async move {
            let body = match self.call.request(n, self.index) {
                Ok(body) => body,
                Err(e) => return (Code::InvalidArgument, Some(e)),
            };
            match self.call.invoke(&mut self.grpc, body).await {
                Ok(reply) => {
                    if self.first_reply.get().is_none() {
                        let _ = self.first_reply.set(reply);
                    }
                    (Code::Ok, None)
                }
                Err(status) => (status.code(), Some(status.message().to_string())),
            }
        })
    }
}

/// Runs the call within `bounds` over `channels` (workers round robin).
pub async fn run(call: Arc<Call>, channels: &[Channel], bounds: &Bounds) -> Outcome {
    let first_reply = Arc::new(std::sync::OnceLock::new());
    let mut outcome = drive(bounds, |index| GrpcWorker {
        call: call.clone(),
        grpc: tonic::client::Grpc::new(channels[index % channels.len()].clone()),
        index,
        first_reply: first_reply.clone(),
    })
    .await;
    outcome.first_reply = first_reply.get().cloned();
    outcome
}
