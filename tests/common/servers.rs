//! Private backend servers for outage and fault tests: a Postgres cluster (initdb), a
//! redis-server, a nats-server with JetStream and a nisshi Kafka broker,
//! each on a free loopback port with its data in a directory of its own.
//! A test kills one with SIGKILL (by the PID it started, never by name) and
//! starts it again on the same port and data. The machine's shared services
//! on the standard ports are never touched.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::process::{Child, Command};

/// Which server, and how it keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    /// Redis with every write fsynced to its append-only file.
    RedisDurable,
    /// Redis keeping nothing: a restart loses every key.
    RedisVolatile,
    Nats,
    Nisshi,
}

/// A private server process.
pub struct Server {
    pub kind: Kind,
    pub port: u16,
    pub dir: PathBuf,
    /// nisshi: where it keeps its log (a Postgres URL).
    store: Option<String>,
    child: Option<Child>,
}

/// The uid and gid of the `postgres` account (Postgres refuses to run as
/// root; its Debian package creates the account).
fn postgres_account() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres")).then(|| (f[2].parse().unwrap(), f[3].parse().unwrap()))
        })
        .expect("a postgres account (the postgresql package creates it)")
}

/// The directory holding Postgres's server programs.
fn postgres_bin() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
        .expect("postgresql is installed")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop().expect("a postgres server binary")
}

impl Server {
    /// A nisshi broker keeping its log in the Postgres database at `store`
    /// (so a killed broker restarts with it).
    pub async fn start_nisshi(store: &str) -> Server {
        Self::start_with(Kind::Nisshi, Some(store.to_string())).await
    }

    /// Starts a server of `kind` on a free port, its data under a new
    /// directory; returns once it accepts connections.
    pub async fn start(kind: Kind) -> Server {
        assert!(kind != Kind::Nisshi, "nisshi needs a store: start_nisshi");
        Self::start_with(kind, None).await
    }

    async fn start_with(kind: Kind, store: Option<String>) -> Server {
        let mut server = Self::prepare_with(kind, store).await;
        server.restart().await;
        server
    }

    /// A server of `kind` with its port and data chosen, not running yet
    /// (a test that needs its backend down first); [`Server::restart`]
    /// starts it.
    pub async fn prepare(kind: Kind) -> Server {
        assert!(kind != Kind::Nisshi, "nisshi needs a store: start_nisshi");
        Self::prepare_with(kind, None).await
    }

    async fn prepare_with(kind: Kind, store: Option<String>) -> Server {
        let name = format!("{kind:?}").to_lowercase();
        let dir = std::env::temp_dir().join(format!("prism-fault-{name}-{}", super::kv::run_id()));
        std::fs::create_dir_all(&dir).unwrap();
        if kind == Kind::Postgres {
            init_postgres(&dir).await;
        }
        Server {
            kind,
            port: super::free_port(),
            dir,
            store,
            child: None,
        }
    }

    /// Its URL as the gateway's config takes it.
    pub fn url(&self) -> String {
        match self.kind {
            Kind::Postgres => format!("postgres://postgres@127.0.0.1:{}/postgres", self.port),
            Kind::RedisDurable | Kind::RedisVolatile => format!("redis://127.0.0.1:{}", self.port),
            Kind::Nats => format!("nats://127.0.0.1:{}", self.port),
            Kind::Nisshi => format!("127.0.0.1:{}", self.port),
        }
    }

    fn command(&self) -> Command {
        let port = self.port.to_string();
        let mut c = match self.kind {
            Kind::Postgres => {
                let (uid, gid) = postgres_account();
                let mut c = Command::new(postgres_bin().join("postgres"));
                c.arg("-D")
                    .arg(self.dir.join("data"))
                    .args(["-p", &port, "-h", "127.0.0.1", "-k"])
                    .arg(&self.dir)
                    .args(["-c", "fsync=on", "-c", "max_connections=100"])
                    .uid(uid)
                    .gid(gid);
                c
            }
            Kind::RedisDurable | Kind::RedisVolatile => {
                let mut c = Command::new("redis-server");
                c.args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
                    .arg("--dir")
                    .arg(&self.dir);
                if self.kind == Kind::RedisDurable {
                    c.args(["--appendonly", "yes", "--appendfsync", "always"]);
                } else {
                    c.args(["--appendonly", "no"]);
                }
                c
            }
            Kind::Nats => {
                let bin = if Path::new("/usr/sbin/nats-server").exists() {
                    "/usr/sbin/nats-server"
                } else {
                    "nats-server"
                };
                let mut c = Command::new(bin);
                c.args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
                    .arg(self.dir.join("js"));
                c
            }
            Kind::Nisshi => {
                let listen = format!("tcp://127.0.0.1:{port}");
                let store = self.store.as_deref().unwrap_or("memory://nisshi/");
                let mut c = Command::new("nisshi");
                c.args(["broker", "--listener-url", &listen])
                    .args(["--advertised-listener-url", &listen])
                    .args(["--storage-engine", store]);
                c
            }
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        c.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true);
        c
    }

    /// Starts the server again on its port and data (after [`Server::kill9`]);
    /// returns once it accepts connections.
    pub async fn restart(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?} did not start; see {}",
                self.kind,
                self.dir.join("server.log").display()
            );
            let mut child = self
                .command()
                .spawn()
                .unwrap_or_else(|e| panic!("{:?} starts: {e}", self.kind));
            // Up once it accepts connections; a start that exits (a killed
            // predecessor's port or shared memory not yet released) is tried
            // again.
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                    .await
                    .is_ok()
                {
                    self.child = Some(child);
                    return self.settle().await;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{:?} did not start; see {}",
                    self.kind,
                    self.dir.join("server.log").display()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the server answers requests, not just connections.
    async fn settle(&self) {
        if self.kind == Kind::Postgres {
            sqlx::any::install_default_drivers();
            super::wait_until("the private postgres answers queries", || async {
                sqlx::AnyPool::connect(&self.url()).await.is_ok()
            })
            .await;
        }
    }

    /// SIGKILL, by the PID this test started; waits for it to exit.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().unwrap();
            child.wait().await.unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        // A Postgres's backends exit once their postmaster is gone.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A new Postgres cluster in `dir/data`, owned by the postgres account,
/// trusting local connections.
async fn init_postgres(dir: &Path) {
    let (uid, gid) = postgres_account();
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).unwrap();
    let status = Command::new(postgres_bin().join("initdb"))
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
        .uid(uid)
        .gid(gid)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .expect("initdb runs");
    assert!(status.success(), "initdb failed");
}
