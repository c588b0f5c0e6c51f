//! Headless Chromium driven over WebDriver: [`fantoccini`] talking to Debian's `chromedriver`
//! (package `chromium-driver`), one of each per [`Browser`]; scripts/test.sh installs both.
//! Without them [`Browser::launch`] prints a SKIPPED line and returns `None`, except under
//! `CI=true`, where it panics.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use fantoccini::wd::{Capabilities, WindowHandle};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, MutexGuard};

/// How long the browser tests wait for anything: a page, a message, a transfer. Chromium on a
/// loaded two-core machine is slow to start and to run a debug cluster's traffic.
pub const BROWSER_PATIENCE: Duration = Duration::from_secs(60);

/// The first of `names` on PATH; `None` with a message when there is none, a panic under CI
/// (where scripts/test.sh installs Debian's `package`).
pub fn find(names: &[&str], package: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = names.iter().find_map(|name| {
        std::env::split_paths(&path).map(|dir| dir.join(name)).find(|path| path.is_file())
    });
    if found.is_none() {
        assert!(
            !std::env::var("CI").is_ok_and(|ci| ci == "true" || ci == "1"),
            "{} is missing under CI: scripts/test.sh installs {package}",
            names[0]
        );
        eprintln!("SKIPPED: no {} on PATH (apt-get install {package})", names[0]);
    }
    found
}

/// A headless Chromium under its own chromedriver, both killed when dropped, however the test
/// ends.
pub struct Browser {
    shared: Arc<Shared>,
    driver: Child,
    _profile: tempfile::TempDir,
}

/// The session, and the window its commands currently go to (locked across a switch and the
/// command that follows).
struct Shared {
    client: Client,
    current: Mutex<Option<WindowHandle>>,
}

/// One window of the browser.
pub struct Page {
    shared: Arc<Shared>,
    window: WindowHandle,
}

impl Browser {
    /// Starts chromedriver and Chromium, or `None` when either is absent (see the module's
    /// comment).
    pub async fn launch() -> Option<Self> {
        let chromium = find(&["chromium", "chromium-browser"], "chromium")?;
        let chromedriver = find(&["chromedriver"], "chromium-driver")?;
        let profile = tempfile::tempdir().expect("a profile directory");
        let mut driver = Command::new(chromedriver)
            .arg("--port=0")
            // A process group of its own, which Drop ends with Chromium's processes in it.
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let mut stdout = BufReader::new(driver.stdout.take().expect("piped stdout")).lines();
        let port = tokio::time::timeout(BROWSER_PATIENCE, async {
            while let Some(line) = stdout.next_line().await.expect("chromedriver's output") {
                if let Some(port) = line.split("started successfully on port ").nth(1) {
                    return port.trim_end_matches('.').parse::<u16>().expect("a port");
                }
            }
            panic!("chromedriver exited before listening");
        })
        .await
        .expect("chromedriver listens in time");
        // Keep reading, so that chromedriver never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });

        let patience = BROWSER_PATIENCE.as_millis() as u64;
        let capabilities: Capabilities = serde_json::from_value(json!({
            "goog:chromeOptions": {"binary": chromium, "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-dev-shm-usage",
                format!("--user-data-dir={}", profile.path().display()),
                // Every window keeps its timers and sockets running, as if it were in front.
                "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
                "--disable-backgrounding-occluded-windows",
            ]},
            // A dialog stays open, for `Page::alert` to see.
            "unhandledPromptBehavior": "ignore",
            "timeouts": {"script": patience, "pageLoad": patience},
        }))
        .expect("capabilities");
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a WebDriver session");
        let shared = Arc::new(Shared { client, current: Mutex::new(None) });
        Some(Self { shared, driver, _profile: profile })
    }

    /// Opens a new window at `url`, 1200 by 800, and waits until its page has loaded.
    pub async fn page(&self, url: &str) -> Page {
        let window = self.shared.client.new_window(false).await.expect("a new window").handle;
        let page = Page { shared: self.shared.clone(), window };
        page.set_viewport(1200, 800).await;
        {
            let _window = page.focus().await;
            let loaded = page.shared.client.goto(url).await;
            loaded.unwrap_or_else(|err| panic!("loading {url}: {err}"));
        }
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(pid) = self.driver.id() {
            let group = format!("-{pid}");
            // Never a panic here: this may run while a failed test unwinds.
            let mut kill = std::process::Command::new("kill");
            let _ = kill.args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        }
    }
}

impl Page {
    /// Sends the session's commands to this window until the guard is dropped.
    async fn focus(&self) -> MutexGuard<'_, Option<WindowHandle>> {
        let mut current = self.shared.current.lock().await;
        if current.as_ref() != Some(&self.window) {
            let switch = self.shared.client.switch_to_window(self.window.clone()).await;
            switch.expect("switch to the page's window");
            *current = Some(self.window.clone());
        }
        current
    }

    /// Runs `script` (a function body; a returned promise is awaited) and returns its value.
    async fn execute(&self, script: &str) -> Value {
        let _window = self.focus().await;
        let result = self.shared.client.execute(script, Vec::new()).await;
        result.unwrap_or_else(|err| panic!("script failed: {script}\n{err}"))
    }

    /// The value of `expression` in the page, a promise awaited.
    pub async fn eval(&self, expression: &str) -> Value {
        self.execute(&format!("return ({expression});")).await
    }

    /// Runs `statements` in the page.
    pub async fn run(&self, statements: &str) {
        self.execute(statements).await;
    }

    /// Waits until `condition` (a script expression) is true in the page; `what` for the
    /// failure message, with the page's text.
    pub async fn wait_for(&self, what: &str, condition: &str) {
        let deadline = tokio::time::Instant::now() + BROWSER_PATIENCE;
        while self.eval(&format!("Boolean({condition})")).await != json!(true) {
            if tokio::time::Instant::now() > deadline {
                let text = self.eval("document.body ? document.body.innerText : ''").await;
                panic!("timed out waiting for {what}; the page says:\n{}", text.as_str().unwrap());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Gives the file input matching `selector` the file at `path`, as a user picking it.
    pub async fn set_file(&self, selector: &str, path: &Path) {
        let _window = self.focus().await;
        let input = self.shared.client.find(Locator::Css(selector)).await.expect(selector);
        input.send_keys(&path.display().to_string()).await.expect("pick the file");
    }

    /// Shows the page in a viewport of `width` by `height` CSS pixels (a phone's when narrow).
    pub async fn set_viewport(&self, width: u32, height: u32) {
        let client = &self.shared.client;
        let _window = self.focus().await;
        // WebDriver sizes the window, which adds its own frame around the viewport.
        client.set_window_size(width, height).await.expect("size the window");
        let inner = client.execute("return [innerWidth, innerHeight];", Vec::new()).await;
        let (w, h): (u32, u32) = serde_json::from_value(inner.expect("the viewport")).unwrap();
        let outer = (2 * width - w.min(width), 2 * height - h.min(height));
        client.set_window_size(outer.0, outer.1).await.expect("size the window");
    }

    /// A PNG of the page as it is shown.
    pub async fn screenshot(&self) -> Vec<u8> {
        let _window = self.focus().await;
        self.shared.client.screenshot().await.expect("a screenshot")
    }

    /// The text of the dialog (`alert`, `confirm`, `prompt`) the page has open, if any.
    pub async fn alert(&self) -> Option<String> {
        let _window = self.focus().await;
        match self.shared.client.get_alert_text().await {
            Ok(text) => Some(text),
            Err(err) if err.is_no_such_alert() => None,
            Err(err) => panic!("asking for a dialog failed: {err}"),
        }
    }
}
