//! The live dashboard: the page and its summary over real HTTP, and the page rendered by a real
//! browser (headless Chromium) against a hub with two app servers, so its script is checked to
//! fetch, total and draw what the API says.
//!
//! Without Chromium the browser tests skip with a message, except under `CI=true`, where they
//! fail: `scripts/test.sh` installs it.

use std::path::{Path, PathBuf};

use acms_tests::browser;
use acms_tests::http::TestAdmin;
use acms_tests::{PATIENCE, TestHub, TestServer, user};
use tokio::process::Command;

/// A hub with its admin API, server 1 (alice) and server 2 (bob, carol), and one message relayed.
async fn cluster() -> (TestHub, TestAdmin, TestServer, TestServer) {
    let hub = TestHub::start().await;
    let admin = TestAdmin::start(&hub.hub, PATIENCE).await;
    let one = TestServer::start(1, hub.addr).await;
    let mut two = TestServer::start(2, hub.addr).await;
    one.login(&["alice"]).await;
    two.login(&["bob", "carol"]).await;
    hub.wait_for(2, 3).await;
    one.cluster.send_to_user(&user("alice"), &user("bob"), "hi".into()).await.expect("send");
    two.next_event().await;
    (hub, admin, one, two)
}

#[tokio::test]
async fn the_page_is_served_whole_from_the_binary() {
    let hub = TestHub::start().await;
    let admin = TestAdmin::start(&hub.hub, PATIENCE).await;
    let page = admin.get("/").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(page.body.contains("<title>ACMS cluster</title>"));
    // Nothing is fetched from elsewhere: no CDN, no web fonts, no absolute URLs at all.
    for outside in ["http://", "https://", "//cdn", "@import", "<link"] {
        assert!(!page.body.contains(outside), "the page refers to {outside}");
    }
}

#[tokio::test]
async fn the_summary_totals_the_cluster() {
    let (hub, admin, _one, _two) = cluster().await;
    let summary = admin.get("/api/summary").await;
    assert_eq!(summary.status, 200, "{}", summary.body);
    let summary = summary.json();
    assert_eq!(summary["servers"], 2);
    assert_eq!(summary["connected"], 2);
    assert_eq!(summary["users"], 3);
    assert_eq!(summary["relayed_frames"], 1);
    assert!(summary["relayed_bytes"].as_u64().unwrap() > 2);
    assert_eq!(summary["undeliverable"], 0);
    assert!(summary["time"].as_f64().unwrap() > 1.0e9);
    hub.stop().await;
}

/// Chromium's path, or `None` (with a message) when it is absent and this is not CI.
fn chromium() -> Option<PathBuf> {
    browser::find(&["chromium", "chromium-browser"], "chromium")
}

/// Runs headless Chromium on `url` with `args`, letting the page's script run for five seconds of
/// virtual time, and returns its standard output.
async fn browse(chromium: &Path, url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().expect("a profile directory");
    let mut command = Command::new(chromium);
    command
        .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        .args(["--disable-dev-shm-usage", "--virtual-time-budget=5000"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .kill_on_drop(true);
    // Chromium starts in a second or two, but a loaded machine may take far longer.
    let output = tokio::time::timeout(PATIENCE * 6, command.output())
        .await
        .expect("chromium finishes in time")
        .expect("chromium runs");
    assert!(output.status.success(), "chromium: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The text of the element with `id` in `dom`, tags stripped.
fn text_of(dom: &str, id: &str) -> String {
    let start = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in:\n{dom}"));
    let inner = &dom[start..];
    let open = inner.find('>').map_or(0, |at| at + 1);
    let close = inner[open..].find("</").map_or(inner.len(), |at| open + at);
    inner[open..close].trim().to_owned()
}

#[tokio::test]
async fn a_browser_shows_every_server_and_the_totals() {
    let Some(chromium) = chromium() else { return };
    let (_hub, admin, _one, _two) = cluster().await;
    let url = format!("http://{}/", admin.addr);
    let dom = browse(&chromium, &url, &["--dump-dom"]).await;

    assert!(dom.contains(r#"data-server-id="1""#), "no card for AS 1 in:\n{dom}");
    assert!(dom.contains(r#"data-server-id="2""#), "no card for AS 2 in:\n{dom}");
    assert!(dom.contains("127.0.0.1:6002"), "AS 2's client address is shown");
    assert_eq!(text_of(&dom, "total-servers"), "2");
    assert_eq!(text_of(&dom, "total-users"), "3");
    assert_eq!(text_of(&dom, "users-now"), "3");
    assert!(text_of(&dom, "total-relayed").starts_with("1 relayed"), "{dom}");
    assert!(text_of(&dom, "status-text").starts_with("live"), "the page reached the API");
    // No server reports its load yet: the page says so with a dash rather than NaN or 0.
    assert_eq!(text_of(&dom, "total-cpu"), "—");
    assert!(!dom.contains("NaN") && !dom.contains("undefined"), "{dom}");

    let shots = tempfile::tempdir().expect("a directory for the screenshot");
    let shot = shots.path().join("dashboard.png");
    let arg = format!("--screenshot={}", shot.display());
    browse(&chromium, &url, &[&arg, "--window-size=1400,900"]).await;
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real picture of the page");
}

#[tokio::test]
async fn a_browser_shows_an_empty_cluster_as_such() {
    let Some(chromium) = chromium() else { return };
    let hub = TestHub::start().await;
    let admin = TestAdmin::start(&hub.hub, PATIENCE).await;
    let dom = browse(&chromium, &format!("http://{}/", admin.addr), &["--dump-dom"]).await;
    assert!(dom.contains("No app servers yet"), "no empty state in:\n{dom}");
    assert_eq!(text_of(&dom, "total-servers"), "0");
    assert_eq!(text_of(&dom, "total-users"), "0");
}

#[tokio::test]
async fn a_browser_says_when_the_hub_is_gone() {
    let Some(chromium) = chromium() else { return };
    let hub = TestHub::start().await;
    // A port with nothing behind it: bound, read back, then closed.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    drop(listener);
    let page = TestAdmin::start(&hub.hub, PATIENCE).await;
    // The page from a live hub, its API from the dead port: fetches fail as after a hub stops.
    let html = page.get("/").await.body.replace("api/", &format!("http://{addr}/api/"));
    let file = tempfile::Builder::new().suffix(".html").tempfile().expect("a page file");
    std::fs::write(file.path(), html).expect("write the page");
    let dom =
        browse(&chromium, &format!("file://{}", file.path().display()), &["--dump-dom"]).await;
    assert_eq!(text_of(&dom, "status-text"), "hub unreachable, retrying");
    assert!(dom.contains(r#"class="dot stale""#), "{dom}");
}
