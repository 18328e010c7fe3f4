//! TLS on the gRPC listener, with material that can be replaced while the
//! gateway runs: the server certificate, its key and the client CA are read
//! into a rustls config held in a [`TlsMaterial`] cell. Each new connection
//! is handshaken with the config current when it arrives; connections
//! already open keep theirs, so rotating a certificate drops nobody.
//!
//! The files are reread when their content changes (checked every
//! `server.tls.watch_interval`, which also catches Kubernetes' symlink
//! swaps of mounted secrets) and on every config reload. A set of files
//! that does not load (a key that does not match its certificate, a file
//! half written) is refused and logged; the running material stays.

use std::{io, pin::Pin, sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use tokio::{sync::watch, task::JoinSet};
use tokio_rustls::{rustls::ServerConfig, server::TlsStream, TlsAcceptor};

use crate::config::{
    tls::{server_config, TlsFiles},
    TlsSpec,
};

/// The listener's current TLS material, and what it was read from.
pub struct TlsMaterial {
    /// The spec last loaded and its files' bytes; held across a reload,
    /// so reloads (the watch, SIGHUP, the admin endpoint) take turns.
    loaded: tokio::sync::Mutex<(TlsSpec, TlsFiles)>,
    current: watch::Sender<Arc<ServerConfig>>,
}

/// What a reload of the TLS files did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsReload {
    /// The files were as last loaded.
    Unchanged,
    /// New material is in use for new connections.
    Replaced,
}

impl TlsMaterial {
    /// Reads the files (where it is called: at start); an error names the
    /// file that did not load.
    pub fn load(spec: &TlsSpec) -> Result<TlsMaterial, String> {
        let files = TlsFiles::read(spec)?;
        let config = server_config(&files)?;
        Ok(TlsMaterial {
            loaded: tokio::sync::Mutex::new((spec.clone(), files)),
            current: watch::channel(config).0,
        })
    }

    /// Rereads the files (those `spec` names, when given: a reloaded
    /// config may name others) and, when their content changed and loads,
    /// uses them for new connections. On error the running material and
    /// spec stay.
    pub async fn reload(&self, spec: Option<&TlsSpec>) -> Result<TlsReload, String> {
        let mut loaded = self.loaded.lock().await;
        let spec = spec.unwrap_or(&loaded.0).clone();
        let files = TlsFiles::read_off_worker(&spec).await?;
        if loaded.0 == spec && loaded.1 == files {
            return Ok(TlsReload::Unchanged);
        }
        let config = server_config(&files)?;
        *loaded = (spec, files);
        self.current.send_replace(config);
        tracing::info!(cert_file = %loaded.0.cert_file.display(), "tls material replaced");
        Ok(TlsReload::Replaced)
    }

    /// Changes each time new material is put in use.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ServerConfig>> {
        self.current.subscribe()
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.borrow().clone())
    }

    /// Rereads the files every `every` until dropped (the caller owns the
    /// future). A failure is logged once per distinct error, not once per
    /// look.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        let mut last_error = None;
        loop {
            ticks.tick().await;
            match self.reload(None).await {
                Ok(_) => last_error = None,
                Err(e) => {
                    if last_error.as_ref() != Some(&e) {
                        tracing::warn!(error = %e, "tls files changed but do not load; keeping the running material");
                    }
                    last_error = Some(e);
                }
            }
        }
    }
}

/// TLS connections over `plain`: each is handshaken in its own task (a
/// slow client holds up nobody else), within `timeout`, with the material
/// current when it arrived. A failed handshake is logged at debug and the
/// connection closed; the stream yields only connections that completed
/// one. The handshakes in flight end with the stream.
pub fn incoming<S, C>(
    plain: S,
    material: Arc<TlsMaterial>,
    timeout: Duration,
) -> impl Stream<Item = io::Result<TlsStream<C>>>
where
    S: Stream<Item = io::Result<C>> + Send + 'static,
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let plain: Pin<Box<S>> = Box::pin(plain);
    let state = (plain, JoinSet::new(), material, false);
    futures::stream::unfold(
        state,
        move |(mut plain, mut handshakes, material, mut ended)| async move {
            loop {
                tokio::select! {
                    accepted = plain.next(), if !ended => match accepted {
                        Some(Ok(conn)) => {
                            let accept = material.acceptor().accept(conn);
                            handshakes.spawn(tokio::time::timeout(timeout, accept));
                        }
                        Some(Err(e)) => {
                            return Some((Err(e), (plain, handshakes, material, ended)));
                        }
                        None => ended = true,
                    },
                    done = handshakes.join_next(), if !handshakes.is_empty() => match done {
                        Some(Ok(Ok(Ok(tls)))) => {
                            return Some((Ok(tls), (plain, handshakes, material, ended)));
                        }
                        Some(Ok(Ok(Err(e)))) => tracing::debug!(error = %e, "tls handshake failed"),
                        Some(Ok(Err(_))) => tracing::debug!("tls handshake timed out"),
                        Some(Err(e)) => tracing::warn!(error = %e, "a tls handshake task failed"),
                        None => {}
                    },
                    else => return None,
                }
            }
        },
    )
}
