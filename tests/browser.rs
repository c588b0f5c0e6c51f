//! A small driver of headless Chromium over the DevTools protocol (a WebSocket with JSON
//! commands): open pages, run script in them, give a file input its files, take screenshots.
//! Debian's `chromium` is all it needs (scripts/test.sh installs it).
//!
//! Without Chromium, [`Browser::launch`] returns `None` after printing a SKIPPED line, except
//! under `CI=true`, where it panics.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long the browser tests wait for anything: a page, a message, a transfer. Chromium on a
/// loaded two-core machine is slow to start and to run a debug cluster's traffic.
pub const BROWSER_PATIENCE: Duration = Duration::from_secs(60);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// Chromium's path, or `None` (with a message) when it is absent and this is not CI.
pub fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser"].iter().find_map(|name| {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path).map(|dir| dir.join(name)).find(|path| path.is_file())
    });
    let ci = std::env::var("CI").is_ok_and(|ci| ci == "true" || ci == "1");
    match found {
        Some(path) => Some(path),
        None if ci => panic!("chromium is missing under CI: scripts/test.sh installs it"),
        None => {
            eprintln!(
                "SKIPPED: no chromium on PATH (apt-get install chromium, or scripts/test.sh)"
            );
            None
        }
    }
}

/// A headless Chromium, killed when dropped.
pub struct Browser {
    _child: Child,
    _profile: tempfile::TempDir,
    inner: Arc<Inner>,
}

struct Inner {
    sink: tokio::sync::Mutex<SplitSink<Socket, Message>>,
    pending: Pending,
    next_id: AtomicU64,
    /// Every event received: (session id, method).
    events: Arc<Mutex<Vec<(String, String)>>>,
}

/// One tab of the browser.
pub struct Page {
    inner: Arc<Inner>,
    session: String,
}

impl Browser {
    /// Starts Chromium, or `None` when there is none (see the module's comment).
    pub async fn launch() -> Option<Self> {
        let chromium = chromium()?;
        let profile = tempfile::tempdir().expect("a profile directory");
        let mut child = Command::new(&chromium)
            .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run"])
            .args(["--disable-dev-shm-usage", "--remote-debugging-port=0"])
            // Every tab keeps its timers and sockets running, as if it were in front.
            .args(["--disable-background-timer-throttling", "--disable-renderer-backgrounding"])
            .arg("--disable-backgrounding-occluded-windows")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts");
        let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let endpoint = tokio::time::timeout(BROWSER_PATIENCE, async {
            while let Some(line) = stderr.next_line().await.expect("chromium's stderr") {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return url.trim().to_owned();
                }
            }
            panic!("chromium exited before listening for DevTools");
        })
        .await
        .expect("chromium listens for DevTools in time");
        // Keep reading, so that Chromium never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });

        let (socket, _) =
            tokio_tungstenite::connect_async(&endpoint).await.expect("connect to DevTools");
        let (sink, mut stream) = socket.split();
        let pending = Pending::default();
        let events = Arc::new(Mutex::new(Vec::new()));
        let (pending_rx, events_rx) = (pending.clone(), events.clone());
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else { continue };
                let Ok(value) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                if let Some(id) = value["id"].as_u64() {
                    if let Some(reply) = pending_rx.lock().unwrap().remove(&id) {
                        let _ = reply.send(value);
                    }
                } else if let Some(method) = value["method"].as_str() {
                    let session = value["sessionId"].as_str().unwrap_or_default().to_owned();
                    events_rx.lock().unwrap().push((session, method.to_owned()));
                }
            }
        });
        let inner = Arc::new(Inner {
            sink: tokio::sync::Mutex::new(sink),
            pending,
            next_id: AtomicU64::new(1),
            events,
        });
        Some(Self { _child: child, _profile: profile, inner })
    }

    /// Opens a new tab at `url` and waits until its page has loaded.
    pub async fn page(&self, url: &str) -> Page {
        let target =
            command(&self.inner, None, "Target.createTarget", json!({"url": "about:blank"})).await;
        let target = target["targetId"].as_str().expect("a target id").to_owned();
        let attached = command(
            &self.inner,
            None,
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        )
        .await;
        let session = attached["sessionId"].as_str().expect("a session id").to_owned();
        let page = Page { inner: self.inner.clone(), session };
        page.call("Page.enable", json!({})).await;
        page.call("Runtime.enable", json!({})).await;
        page.set_viewport(1200, 800).await;
        page.goto(url).await;
        page
    }
}

/// Sends one DevTools command and returns its result; panics on an error answer.
async fn command(inner: &Inner, session: Option<&str>, method: &str, params: Value) -> Value {
    let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
    let mut message = json!({"id": id, "method": method, "params": params});
    if let Some(session) = session {
        message["sessionId"] = json!(session);
    }
    let (reply, answer) = oneshot::channel();
    inner.pending.lock().unwrap().insert(id, reply);
    inner
        .sink
        .lock()
        .await
        .send(Message::Text(message.to_string().into()))
        .await
        .expect("send to DevTools");
    let answer = tokio::time::timeout(BROWSER_PATIENCE, answer)
        .await
        .unwrap_or_else(|_| panic!("no answer to {method} in time"))
        .expect("DevTools answers");
    if let Some(error) = answer.get("error") {
        panic!("{method} failed: {error}");
    }
    answer["result"].clone()
}

impl Page {
    async fn call(&self, method: &str, params: Value) -> Value {
        command(&self.inner, Some(&self.session), method, params).await
    }

    /// Loads `url` and waits until its document is complete.
    pub async fn goto(&self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        self.wait_for(
            "the page to load",
            "document.readyState === 'complete' && location.href !== 'about:blank'",
        )
        .await;
    }

    /// Runs `expression` in the page (awaiting a promise) and returns its value.
    pub async fn eval(&self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        if let Some(details) = result.get("exceptionDetails") {
            panic!("script failed: {expression}\n{details}");
        }
        result["result"]["value"].clone()
    }

    /// Waits until `condition` (a script expression) is true in the page; `what` for the
    /// failure message, with the page's text.
    pub async fn wait_for(&self, what: &str, condition: &str) {
        let deadline = tokio::time::Instant::now() + BROWSER_PATIENCE;
        loop {
            if self.eval(&format!("Boolean({condition})")).await == json!(true) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let text = self.eval("document.body ? document.body.innerText : ''").await;
                panic!(
                    "timed out waiting for {what}; the page says:\n{}",
                    text.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Gives the file input matching `selector` the file at `path`, as a user picking it.
    pub async fn set_file(&self, selector: &str, path: &Path) {
        let document = self.call("DOM.getDocument", json!({})).await;
        let root = document["root"]["nodeId"].clone();
        let node =
            self.call("DOM.querySelector", json!({"nodeId": root, "selector": selector})).await;
        let files = json!([path.display().to_string()]);
        self.call("DOM.setFileInputFiles", json!({"files": files, "nodeId": node["nodeId"]})).await;
    }

    /// Shows the page in a window of `width` by `height` CSS pixels (a phone's when narrow).
    pub async fn set_viewport(&self, width: u32, height: u32) {
        let metrics = json!({
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 700
        });
        self.call("Emulation.setDeviceMetricsOverride", metrics).await;
    }

    /// A PNG of the page as it is shown.
    pub async fn screenshot(&self) -> Vec<u8> {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"})).await;
        let data = shot["data"].as_str().expect("base64 data");
        base64::engine::general_purpose::STANDARD.decode(data).expect("base64")
    }

    /// The DevTools events this page has sent so far, by method name.
    pub fn events(&self) -> Vec<String> {
        let events = self.inner.events.lock().unwrap();
        events
            .iter()
            .filter(|(session, _)| *session == self.session)
            .map(|(_, m)| m.clone())
            .collect()
    }
}
