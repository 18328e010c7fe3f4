//! What the gateway is measured against. A no-op gRPC server with the same
//! message shapes: it answers every method of Prism's API by decoding the
//! request as that method's input type and replaying the gateway's own
//! reply (captured during the gateway run), so only Prism's work differs.
//! And the backend itself: Redis GETs of a value of the same size, at the
//! same rate and concurrency.

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use futures::future::BoxFuture;
use prost_reflect::{DescriptorPool, DynamicMessage};
use tokio::{net::TcpListener, sync::oneshot};
use tonic::{Code, Request, Response, Status};

use super::{
    call::{find_method, BytesCodec},
    runner::{drive, Outcome, Worker},
    scenario::Bounds,
};

/// The replies the no-op server gives, by method path.
#[derive(Clone)]
struct Replies {
    pool: DescriptorPool,
    by_path: Arc<std::collections::HashMap<String, Vec<Bytes>>>,
}

impl Replies {
    /// Decodes the request as the method's input (the work any server
    /// does) and returns the canned reply.
    fn answer(&self, path: &str, request: &Bytes) -> Result<Vec<Bytes>, Status> {
        let call = path.trim_start_matches('/');
        let method = find_method(&self.pool, call).map_err(Status::unimplemented)?;
        DynamicMessage::decode(method.input(), request.as_ref())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(self.by_path.get(path).cloned().unwrap_or_else(|| {
            // No captured reply: the output type's empty message.
            vec![Bytes::new()]
        }))
    }
}

struct Unary(Replies, String);

impl tonic::server::UnaryService<Bytes> for Unary {
    type Response = Bytes;
    type Future = std::future::Ready<Result<Response<Bytes>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let answer = self
            .0
            .answer(&self.1, request.get_ref())
            .map(|mut v| Response::new(v.swap_remove(0)));
        std::future::ready(answer)
    }
}

struct Streaming(Replies, String);

type ReplyStream = futures::stream::Iter<std::vec::IntoIter<Result<Bytes, Status>>>;

impl tonic::server::ServerStreamingService<Bytes> for Streaming {
    type Response = Bytes;
    type ResponseStream = ReplyStream;
    type Future = std::future::Ready<Result<Response<ReplyStream>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let answer = self.0.answer(&self.1, request.get_ref()).map(|v| {
            let items: Vec<Result<Bytes, Status>> = v.into_iter().map(Ok).collect();
            Response::new(futures::stream::iter(items))
        });
        std::future::ready(answer)
    }
}

/// A baseline server running on threads of its own (a runtime with as
/// many workers as the gateway's), not on the load generator's runtime, so
/// it competes for the CPU the way the gateway process does. Stops when
/// dropped.
pub struct BaselineServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    /// Ends by itself once `stop` is sent (or dropped).
    _thread: std::thread::JoinHandle<()>,
}

impl Drop for BaselineServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl BaselineServer {
    /// Binds loopback port `port` (0: an ephemeral one) and runs
    /// `serve(listener, stopped)` on the server's own runtime until stopped.
    pub(crate) async fn start<F, Fut>(
        name: &str,
        port: u16,
        serve: F,
    ) -> std::io::Result<BaselineServer>
    where
        F: FnOnce(TcpListener, oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let (started, ready) = oneshot::channel::<std::io::Result<()>>();
        let thread_name = name.to_string();
        let thread = std::thread::Builder::new()
            .name(thread_name.clone())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
                    .thread_name(thread_name)
                    .enable_all()
                    .build();
                let runtime = match runtime {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = started.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            let _ = started.send(Ok(()));
                            serve(listener, stopped).await;
                        }
                        Err(e) => {
                            let _ = started.send(Err(e));
                        }
                    }
                });
            })?;
        ready
            .await
            .map_err(|_| std::io::Error::other("the baseline server thread ended"))??;
        Ok(BaselineServer {
            addr,
            stop: Some(stop),
            _thread: thread,
        })
    }
}

/// Accepted connections, without Nagle's delay (as the gateway's).
pub(crate) fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |stream| {
            stream.inspect(|s| {
                let _ = s.set_nodelay(true);
            })
        },
    )
}

/// Starts the no-op server, which answers every method of Prism's API, on
/// an ephemeral loopback port; `replies` maps method paths
/// (`/pkg.Service/Method`) to the messages to answer with.
pub async fn start_noop(
    pool: DescriptorPool,
    replies: std::collections::HashMap<String, Vec<Bytes>>,
) -> std::io::Result<BaselineServer> {
    let replies = Replies {
        pool,
        by_path: Arc::new(replies),
    };
    BaselineServer::start("prism-noop", 0, move |listener, stopped| {
        serve(listener, replies, stopped)
    })
    .await
}

async fn serve(listener: TcpListener, replies: Replies, stopped: oneshot::Receiver<()>) {
    let router = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let replies = replies.clone();
        async move {
            let path = req.uri().path().to_string();
            let streaming = find_method(&replies.pool, path.trim_start_matches('/'))
                .map(|m| m.is_server_streaming())
                .unwrap_or(false);
            let mut grpc = tonic::server::Grpc::new(BytesCodec);
            let response = if streaming {
                grpc.server_streaming(Streaming(replies, path), req).await
            } else {
                grpc.unary(Unary(replies, path), req).await
            };
            response.map(axum::body::Body::new)
        }
    });
    let served = tonic::transport::Server::builder()
        .add_routes(tonic::service::Routes::from(router))
        .serve_with_incoming_shutdown(incoming(listener), async {
            let _ = stopped.await;
        })
        .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "no-op baseline server failed");
    }
}

/// A worker making Redis GETs of one key.
struct RedisWorker {
    conn: redis::aio::MultiplexedConnection,
    key: Arc<str>,
}

impl Worker for RedisWorker {
    fn call(&mut self, _: u64) -> BoxFuture<'_, (Code, Option<String>)> {
        Box::pin(async move {
            let got = redis::cmd("GET")
                .arg(&*self.key)
                .query_async::<Option<Vec<u8>>>(&mut self.conn)
                .await;
            match got {
                Ok(Some(_)) => (Code::Ok, None),
                Ok(None) => (Code::NotFound, Some("key not found".into())),
                Err(e) => (Code::Unavailable, Some(e.to_string())),
            }
        })
    }
}

/// Redis GETs of `key` (set to `value` first) within the same bounds as
/// the gateway run: the backend's own latency at that rate.
pub async fn redis_direct(
    url: &str,
    key: &str,
    value: &[u8],
    bounds: &Bounds,
) -> Result<Outcome, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let mut connections = Vec::new();
    for _ in 0..bounds.connections {
        connections.push(
            client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| format!("cannot connect to {url}: {e}"))?,
        );
    }
    let mut first = connections[0].clone();
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async::<()>(&mut first)
        .await
        .map_err(|e| e.to_string())?;
    let key: Arc<str> = key.into();
    Ok(drive(bounds, |index| RedisWorker {
        conn: connections[index % connections.len()].clone(),
        key: key.clone(),
    })
    .await)
}
