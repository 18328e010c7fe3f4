//! The connection to a gateway: one HTTP/2 channel (plain, TLS or mTLS)
//! that every session of the client shares, with keepalive, a per-call
//! deadline and the retry policy its sessions use.

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::{
    error::{Error, Result},
    retry::RetryPolicy,
    session::SessionBuilder,
};

/// A connection to a Prism gateway (or to a load balancer in front of
/// several). Cheap to clone; clones share the connection.
///
/// ```no_run
/// # async fn demo() -> prism_client::Result<()> {
/// let client = prism_client::Client::connect("http://127.0.0.1:8980").await?;
/// let session = client.session().api_key("prism-dev-key").config("user-profiles").open().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) channel: Channel,
    pub(crate) settings: Settings,
}

/// What every call of a client's sessions follows.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) retry: RetryPolicy,
    /// The deadline of each unary attempt, sent as `grpc-timeout` so the
    /// gateway stops working on an attempt the client gave up on.
    pub(crate) call_timeout: Duration,
    /// The client certificate (PEM) of an mTLS connection, which
    /// [`SessionBuilder::mtls`] presents when opening a session.
    pub(crate) client_cert: Option<Vec<u8>>,
}

/// TLS settings: the CA that signs the gateway's certificate and, for
/// mTLS, the client's own certificate and key.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    ca_pem: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain: Option<String>,
}

impl Tls {
    /// TLS trusting the Mozilla root CAs (webpki-roots) and, with
    /// [`Tls::ca`], a CA of your own.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trust this CA (PEM) for the gateway's certificate.
    pub fn ca(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Present this certificate and key (PEM) to the gateway (mTLS).
    pub fn identity(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// The name the gateway's certificate must carry, when it is not the
    /// endpoint's host.
    pub fn domain(mut self, name: impl Into<String>) -> Self {
        self.domain = Some(name.into());
        self
    }
}

/// Builds a [`Client`]: endpoint, TLS, timeouts and retry policy.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    endpoint: String,
    tls: Option<Tls>,
    connect_timeout: Duration,
    call_timeout: Duration,
    retry: RetryPolicy,
}

impl Client {
    /// Connects to `endpoint` (`http://host:port`, `https://host:port`, or
    /// `host:port` for plain HTTP/2) with the default settings.
    pub async fn connect(endpoint: impl Into<String>) -> Result<Client> {
        Self::builder(endpoint).connect().await
    }

    /// Settings for a connection to `endpoint`.
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            endpoint: endpoint.into(),
            tls: None,
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
        }
    }

    /// Starts opening a session: choose its credentials and configuration,
    /// then [`SessionBuilder::open`].
    pub fn session(&self) -> SessionBuilder {
        SessionBuilder::new(self.clone())
    }
}

impl ClientBuilder {
    /// Connect over TLS (mTLS when the settings carry an identity).
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// How long establishing the connection may take (default 5 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// The deadline of each attempt of a unary call (default 30 s).
    pub fn call_timeout(mut self, d: Duration) -> Self {
        self.call_timeout = d;
        self
    }

    /// How calls are retried (default: [`RetryPolicy::default`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Connects, failing fast when the gateway cannot be reached. Later,
    /// the channel reconnects on its own (a restarted gateway, a replica
    /// swapped behind a balancer); calls in between are retried.
    pub async fn connect(self) -> Result<Client> {
        let uri = if self.endpoint.contains("://") {
            self.endpoint.clone()
        } else if self.tls.is_some() {
            format!("https://{}", self.endpoint)
        } else {
            format!("http://{}", self.endpoint)
        };
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(|e| Error::InvalidInput(format!("endpoint {:?}: {e}", self.endpoint)))?
            .connect_timeout(self.connect_timeout)
            // Finds a dead connection (a gateway host gone without a FIN)
            // within 40 s even when no call is running.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        let mut client_cert = None;
        if let Some(tls) = &self.tls {
            let mut config = ClientTlsConfig::new().with_enabled_roots();
            if let Some(ca) = &tls.ca_pem {
                config = config.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(cert, key));
                client_cert = Some(cert.clone());
            }
            if let Some(domain) = &tls.domain {
                config = config.domain_name(domain);
            }
            endpoint = endpoint.tls_config(config)?;
        }
        let channel = endpoint.connect().await?;
        Ok(Client {
            channel,
            settings: Settings {
                retry: self.retry,
                call_timeout: self.call_timeout,
                client_cert,
            },
        })
    }
}
