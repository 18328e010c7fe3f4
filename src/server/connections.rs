//! The gRPC listener's connections: accepted only while fewer than
//! `server.connections.max_connections` are open (further clients wait in
//! the listen backlog until one closes). Each gets Nagle off (small HTTP/2
//! frames go out at once) and TCP keepalive (a vanished peer is noticed
//! even before HTTP/2 pings start), and must send its first bytes within
//! `handshake_timeout`, so sockets that never speak cannot hold the
//! places. A connection gives its place back when it closes, however it
//! ends.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::Stream;
use tokio::time::Sleep;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::config::ConnectionLimits;

/// How long the listener rests after a failed accept (out of file
/// descriptors, say) before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// An accepted connection holding one of the listener's places.
pub struct Counted {
    io: TcpStream,
    _place: OwnedSemaphorePermit,
    /// Until the first bytes arrive: when the connection is given up.
    first_bytes: Option<Pin<Box<Sleep>>>,
}

/// The listener's connections, at most `limits.max_connections` open at
/// once.
pub fn incoming(
    listener: TcpListener,
    limits: &ConnectionLimits,
) -> impl Stream<Item = io::Result<Counted>> {
    let places = Arc::new(Semaphore::new(limits.max_connections));
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(limits.keepalive_interval)
        .with_interval(limits.keepalive_interval);
    let handshake = limits.handshake_timeout;
    let state = (listener, places, keepalive, false);
    futures::stream::unfold(
        state,
        move |(listener, places, keepalive, mut failing)| async move {
            // The semaphore is never closed: this only waits for a place.
            let place = places.clone().acquire_owned().await.ok()?;
            loop {
                match listener.accept().await {
                    Ok((io, _)) => {
                        let _ = io.set_nodelay(true);
                        let _ = socket2::SockRef::from(&io).set_tcp_keepalive(&keepalive);
                        let conn = Counted {
                            io,
                            _place: place,
                            first_bytes: Some(Box::pin(tokio::time::sleep(handshake))),
                        };
                        return Some((Ok(conn), (listener, places, keepalive, false)));
                    }
                    Err(e) => {
                        // Once per run of failures (out of file descriptors,
                        // say), not once per retry.
                        if !failing {
                            tracing::warn!(error = %e, "accepting connections fails; retrying");
                        }
                        failing = true;
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                }
            }
        },
    )
}

impl Connected for Counted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(deadline) = self.first_bytes.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no bytes within server.connections.handshake_timeout",
                )));
            }
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.first_bytes = None;
        }
        read
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
