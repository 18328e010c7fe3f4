//! Starting the gateway binary as a child process. Only tokio: the load
//! runner's tests (`loadtest/tests/`) include this file too.

use std::time::Duration;

/// `prism serve` from `binary` as a child process (killed on drop) on free
/// loopback ports, with `args` and `envs`, once it listens: the child and
/// its gRPC address.
pub async fn spawn_serve(
    binary: &std::path::Path,
    args: &[&std::ffi::OsStr],
    envs: &[(&str, &std::ffi::OsStr)],
) -> (tokio::process::Child, String) {
    let (child, addr, _log) = spawn_serve_logged(binary, args, envs).await;
    (child, addr)
}

/// [`spawn_serve`], with the child's log lines after "grpc listening"
/// (stdout), for a test that waits on one.
pub async fn spawn_serve_logged(
    binary: &std::path::Path,
    args: &[&std::ffi::OsStr],
    envs: &[(&str, &std::ffi::OsStr)],
) -> (
    tokio::process::Child,
    String,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use tokio::io::AsyncBufReadExt;
    let mut cmd = tokio::process::Command::new(binary);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ])
    .args(args)
    .env("NO_COLOR", "1")
    .env("RUST_LOG", "info")
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null())
    .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("prism serve starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(at) = line
                .find("127.0.0.1:")
                .filter(|_| line.contains("grpc listening"))
            {
                return line[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                    .collect::<String>();
            }
        }
        panic!("serve ended before listening");
    })
    .await
    .expect("serve listens in time");
    // Keep draining the log so the child never blocks on a full pipe; the
    // task ends with the child's stdout.
    let (log, logged) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = log.send(line);
        }
    });
    (child, addr, logged)
}
