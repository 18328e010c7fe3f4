//! The admin page in a real browser: headless Chromium (Debian's package;
//! scripts/test.sh installs it) loads `/admin/` from a running gateway with
//! a session and a subscription open, renders the tree (checked in the DOM
//! after its scripts ran), logs nothing to the console, and a screenshot is
//! written (`target/admin-page.png`).

mod common;

use std::{path::PathBuf, process::Stdio, time::Duration};

use common::{TestGateway, ADMIN_TOKEN};
use prism::runtime::block_on_multi_thread;

fn chromium() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("Debian's chromium is installed (scripts/test.sh installs it)")
}

/// Runs headless Chromium on `url` with `args`; its stdout and stderr.
async fn run_chromium(url: &str, args: &[&str]) -> (String, String) {
    let profile = std::env::temp_dir().join(format!("prism-chromium-{}", common::kv::run_id()));
    let mut cmd = tokio::process::Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",
        "--window-size=1280,900",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("chromium finishes in time")
        .expect("chromium runs");
    let _ = std::fs::remove_dir_all(&profile);
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_admin_page_renders_the_tree_in_headless_chromium() {
    block_on_multi_thread(async {
        let gw = TestGateway::start().await;
        let session = gw
            .open_inline(prism::proto::config::v1::AccessPattern::Pubsub, "memory")
            .await;
        let _stream = gw.subscribe(&session.session_token, "page.>").await;
        // The token in the fragment: the page sends it as a header.
        let url = format!("http://{}/admin/#token={ADMIN_TOKEN}", gw.admin_addr);

        // The DOM after the page's scripts ran: the tree is rendered.
        let (dom, log) = run_chromium(&url, &["--dump-dom"]).await;
        assert!(
            dom.contains("data-state=\"ready\""),
            "not rendered:\n{dom}\n{log}"
        );
        assert!(dom.contains(&session.session_id), "no session in:\n{dom}");
        assert!(
            dom.contains("pub_sub_subscription"),
            "no subscription in:\n{dom}"
        );
        assert!(dom.contains("namespace/default"), "{dom}");
        // No console output at all: errors, warnings or stray logs.
        let console: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
            .collect();
        assert!(console.is_empty(), "console messages: {console:#?}");

        // A screenshot of the rendered page.
        let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("admin-page.png");
        let _ = std::fs::remove_file(&shot);
        let (_, log) = run_chromium(&url, &[&format!("--screenshot={}", shot.display())]).await;
        let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot ({e}):\n{log}"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        assert!(png.len() > 10_000, "a blank page? {} bytes", png.len());

        // Without a token the page asks for one and shows nothing.
        let bare = format!("http://{}/admin/", gw.admin_addr);
        let (dom, log) = run_chromium(&bare, &["--dump-dom"]).await;
        assert!(dom.contains("data-state=\"login\""), "{dom}\n{log}");
        assert!(!dom.contains(&session.session_id), "{dom}");
        // A token in the query string is not read.
        let (status, _) = common::http(
            gw.admin_addr,
            "GET",
            &format!("/admin/actors?token={ADMIN_TOKEN}"),
            &[],
        )
        .await;
        assert_eq!(status, 401);
        gw.stop().await;
    });
}
