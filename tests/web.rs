//! The browser chat client end to end: a real `acms` hub and two `im-server`s with `--http`,
//! pages in headless Chromium (driven over WebDriver, [`acms_tests::browser`]) and
//! `im-client`s in terminals, all talking across the two servers; and the WebSocket's defences
//! (origin, size, bad lines) over raw sockets.
//!
//! The programs are not built by this test: `cargo build --workspace --bins --examples` first.
//! Without Chromium and chromedriver the browser tests skip with a message, except under
//! `CI=true`.

use std::net::SocketAddr;
use std::path::Path;

use acms_tests::browser::{BROWSER_PATIENCE, Browser, Page};
use acms_tests::http::request;
use acms_tests::process::{ADMIN_TOKEN, Proc, assert_stopped_cleanly, field_addr, program};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A hub on a fixed port (so it can be restarted) and two IM servers with web pages.
struct WebCluster {
    hub: Proc,
    hub_addr: SocketAddr,
    admin: SocketAddr,
    servers: Vec<Proc>,
    /// Where the terminal clients of each server connect.
    listen: Vec<String>,
    /// Where each server's page is: `host:port`.
    pages: Vec<String>,
}

impl WebCluster {
    async fn start() -> Self {
        let hub_addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port");
        let (hub, admin) = start_hub(hub_addr).await;
        let (mut servers, mut listen, mut pages) = (Vec::new(), Vec::new(), Vec::new());
        for id in ["0", "1"] {
            let args = ["--id", id, "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"];
            let mut server = Proc::start(
                &format!("im-server {id}"),
                &program("examples/im-server"),
                &[&args[..], &["--acms", &hub_addr.to_string()]].concat(),
            );
            let (mut page, mut client, mut connected) = (None, None, false);
            while page.is_none() || client.is_none() || !connected {
                let line = server
                    .stderr
                    .wait_for("the server's start", |line| {
                        line.contains("im-server started")
                            || line.contains("web page listening")
                            || line.contains("connected to hub")
                    })
                    .await;
                if line.contains("im-server started") {
                    client = Some(field_addr(&line, "listen").to_string());
                } else if line.contains("web page listening") {
                    page = Some(field_addr(&line, "http").to_string());
                } else {
                    connected = true;
                }
            }
            listen.push(client.unwrap());
            pages.push(page.unwrap());
            servers.push(server);
        }
        // Each server knows where the other's page is, for the MOVE of a drain.
        for (server, other) in servers.iter_mut().zip(pages.iter().rev()) {
            let other = other.clone();
            server
                .stderr
                .wait_for("the other server's page", |line| {
                    line.contains("a server's web page") && line.contains(&other)
                })
                .await;
        }
        Self { hub, hub_addr, admin, servers, listen, pages }
    }

    /// Kills server `id` as a crash would, and starts it again on the same addresses.
    async fn restart_server(&mut self, id: usize) {
        self.servers[id].kill().await;
        let hub = self.hub_addr.to_string();
        let args =
            ["--id", &id.to_string(), "--listen", &self.listen[id], "--http", &self.pages[id]]
                .map(str::to_owned);
        let args: Vec<&str> = args.iter().map(String::as_str).chain(["--acms", &hub]).collect();
        let mut server =
            Proc::start(&format!("im-server {id} again"), &program("examples/im-server"), &args);
        server
            .stderr
            .wait_for("the link to the hub", |line| line.contains("connected to hub"))
            .await;
        self.servers[id] = server;
    }

    fn url(&self, id: usize) -> String {
        format!("http://{}/", self.pages[id])
    }

    /// An `im-client` of `user` on server `id`, logged in.
    async fn terminal(&self, user: &str, id: usize, extra: &[&str]) -> Proc {
        let args = [&["--server", &self.listen[id], "--user", user][..], extra].concat();
        let mut client = Proc::start(user, &program("im-client"), &args);
        let expected = format!("logged in as {user} on server {id} (");
        client.stderr.wait_for("the login", |line| line.starts_with(&expected)).await;
        client
    }
}

async fn start_hub(addr: SocketAddr) -> (Proc, SocketAddr) {
    let args = ["--transfer", &addr.to_string(), "--admin", "127.0.0.1:0"];
    let mut hub = Proc::start("acms", &program("acms"), &args);
    // The two listeners log in either order.
    let (mut transfer, mut admin) = (false, None);
    while !transfer || admin.is_none() {
        let line = hub
            .stderr
            .wait_for("the hub's two listeners", |line| {
                line.contains("accepting app servers") || line.contains("admin HTTP API listening")
            })
            .await;
        transfer |= line.contains("accepting app servers");
        if line.contains("admin HTTP API listening") {
            admin = Some(field_addr(&line, "admin"));
        }
    }
    (hub, admin.expect("the admin address"))
}

/// A JavaScript string literal of `text`.
fn js(text: &str) -> String {
    serde_json::to_string(text).expect("a string")
}

/// Opens the page at `url` and logs in as `user`.
async fn log_in(browser: &Browser, url: &str, user: &str) -> Page {
    let page = browser.page(url).await;
    page.run(&format!(
        "document.getElementById('login-name').value = {}; \
         document.getElementById('login-form').requestSubmit()",
        js(user)
    ))
    .await;
    let me = js(&format!("{user} · server "));
    page.wait_for(
        "the login",
        &format!("document.getElementById('me').textContent.startsWith({me})"),
    )
    .await;
    page
}

/// Fills the form `form` whose text field is `input` with `value` and submits it.
async fn submit(page: &Page, form: &str, input: &str, value: &str) {
    page.run(&format!(
        "document.getElementById({}).value = {}; document.getElementById({}).requestSubmit()",
        js(input),
        js(value),
        js(form)
    ))
    .await;
}

/// Opens the conversation with `user`.
async fn open(page: &Page, user: &str) {
    submit(page, "open-user", "open-user-name", user).await;
    let title = js(user);
    page.wait_for(
        "the conversation",
        &format!("document.getElementById('conversation-title').textContent === {title}"),
    )
    .await;
}

/// Joins `room` (and shows it), waiting until the server says it is joined.
async fn join(page: &Page, room: &str) {
    submit(page, "join-room", "join-room-name", room).await;
    let key = js(&format!("#{room}"));
    page.wait_for("the join", &format!(
        "document.querySelector(`[data-key=\"${{CSS.escape({key})}}\"]`)?.dataset.joined === 'true'"
    ))
    .await;
}

/// Types `text` in the composer and sends it to the open conversation.
async fn say(page: &Page, text: &str) {
    page.run(&format!(
        "document.getElementById('message').value = {}; \
         document.getElementById('composer').requestSubmit()",
        js(text)
    ))
    .await;
}

/// The texts of the open conversation's messages (not notices), in order.
async fn texts(page: &Page) -> Vec<String> {
    let texts = page
        .eval("[...document.querySelectorAll('#messages li:not(.notice) .text')].map(e => e.textContent)")
        .await;
    serde_json::from_value(texts).expect("strings")
}

/// Waits until the open conversation shows a message or notice whose text is `text`.
async fn shows(page: &Page, text: &str) {
    page.wait_for(
        &format!("{text:?} on the page"),
        &format!(
            "[...document.querySelectorAll('#messages .text')].some(e => e.textContent === {})",
            js(text)
        ),
    )
    .await;
}

#[tokio::test]
async fn pages_and_terminals_chat_across_servers() {
    let Some(browser) = Browser::launch().await else { return };
    let cluster = WebCluster::start().await;
    let alice = log_in(&browser, &cluster.url(0), "alice").await;
    let bob = log_in(&browser, &cluster.url(1), "bob").await;
    let mut carol = cluster.terminal("carol", 1, &[]).await;
    let mut dave = cluster.terminal("dave", 0, &[]).await;

    // Two pages on two servers, both ways.
    open(&alice, "bob").await;
    open(&bob, "alice").await;
    say(&alice, "hello bob, from server 0").await;
    shows(&bob, "hello bob, from server 0").await;
    say(&bob, "hi alice, from server 1").await;
    shows(&alice, "hi alice, from server 1").await;

    // A page and a terminal on another server, both ways.
    open(&alice, "carol").await;
    say(&alice, "a page to a terminal").await;
    assert_eq!(carol.stdout.next("alice's message").await, "alice: a page to a terminal");
    carol.say("@alice a terminal to a page").await;
    shows(&alice, "a terminal to a page").await;

    // A room with members in a page and in terminals on both servers.
    join(&alice, "lobby").await;
    for (client, name) in [(&mut carol, "carol"), (&mut dave, "dave")] {
        client.say("/join lobby").await;
        client.stderr.wait_for(&format!("{name}'s join"), |line| line == "joined #lobby").await;
    }
    carol.say("#lobby hello room").await;
    shows(&alice, "hello room").await;
    assert_eq!(dave.stdout.next("carol's room message").await, "#lobby carol: hello room");
    say(&alice, "the page to the room").await;
    assert_eq!(
        carol.stdout.next("alice's room message").await,
        "#lobby alice: the page to the room"
    );
    assert_eq!(
        dave.stdout.next("alice's room message").await,
        "#lobby alice: the page to the room"
    );

    // The friends panel: who is online, and where.
    submit(&alice, "add-friend", "add-friend-name", "bob").await;
    alice
        .wait_for("bob in the friends panel", "document.querySelector('[data-friend=\"bob\"] .where')?.textContent === 'online · server 1'")
        .await;

    // A message to someone offline comes back as a notice.
    open(&alice, "nobody").await;
    say(&alice, "anyone there?").await;
    shows(&alice, "Not delivered to nobody (offline): anyone there?").await;

    // A message to everyone.
    say_to_everyone(&alice, "hello everyone").await;
    assert_eq!(carol.stdout.next("the broadcast").await, "* alice: hello everyone");
    assert_eq!(dave.stdout.next("the broadcast").await, "* alice: hello everyone");

    // A picture of the page, as the README shows it; kept when ACMS_WEB_SCREENSHOT names a file.
    open(&alice, "bob").await;
    let png = alice.screenshot().await;
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real picture of the page");
    if let Some(path) = std::env::var_os("ACMS_WEB_SCREENSHOT") {
        std::fs::write(path, &png).expect("write the screenshot");
    }

    // At a phone's width the conversation list goes above the messages, and nothing is wider
    // than the screen.
    alice.set_viewport(390, 844).await;
    alice
        .wait_for(
            "the phone layout",
            "document.querySelector('.side').getBoundingClientRect().bottom \
               <= document.getElementById('conversation').getBoundingClientRect().top + 1",
        )
        .await;
    let width = alice.eval("document.documentElement.scrollWidth").await;
    assert!(width.as_u64().is_some_and(|width| width <= 390), "wider than a phone: {width}");
    if let Some(path) = std::env::var_os("ACMS_WEB_SCREENSHOT_PHONE") {
        std::fs::write(path, alice.screenshot().await).expect("write the screenshot");
    }
}

async fn say_to_everyone(page: &Page, text: &str) {
    page.eval("document.querySelector('[data-key=\"*\"]').click()").await;
    say(page, text).await;
}

/// The SHA-256 of `bytes`, lowercase hex.
fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// `len` bytes that no compression or pattern would make look right by chance.
fn random_file(dir: &Path, name: &str, len: usize) -> (std::path::PathBuf, String) {
    let mut bytes = vec![0u8; len];
    rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
    let path = dir.join(name);
    std::fs::write(&path, &bytes).expect("write the file");
    (path, sha256(&bytes))
}

#[tokio::test]
async fn files_cross_between_a_page_and_a_terminal_both_ways() {
    let Some(browser) = Browser::launch().await else { return };
    let cluster = WebCluster::start().await;
    let dir = tempfile::tempdir().expect("a directory");
    let downloads = dir.path().join("downloads");
    std::fs::create_dir(&downloads).expect("the download directory");
    let alice = log_in(&browser, &cluster.url(0), "alice").await;
    let download_dir = downloads.display().to_string();
    let mut carol = cluster.terminal("carol", 1, &["--download-dir", &download_dir]).await;
    open(&alice, "carol").await;

    // From the page, picked with the file input, to the terminal on the other server.
    let (path, sha) = random_file(dir.path(), "from-page.bin", 3 * 1024 * 1024 + 12_345);
    alice.set_file("#file-input", &path).await;
    let received = carol
        .stderr
        .wait_for("the file from the page", |line| {
            line.starts_with("received from-page.bin from alice:")
        })
        .await;
    assert!(received.contains(&format!("sha256 {sha}")), "{received}");
    let bytes = std::fs::read(downloads.join("from-page.bin")).expect("the received file");
    assert_eq!(sha256(&bytes), sha);
    alice
        .wait_for(
            "the page's transfer to finish",
            "document.querySelector('#transfers [data-direction=send]')?.dataset.state === 'done'",
        )
        .await;

    // From the terminal to the page: the bytes behind the page's download link (the blob it was
    // made of: the page's own policy lets no script fetch even a blob URL) hash the same.
    let (path, sha) = random_file(dir.path(), "from-terminal.bin", 2 * 1024 * 1024 + 777);
    carol.say(&format!("/file alice {}", path.display())).await;
    alice
        .wait_for("the file from the terminal", "document.querySelector('#transfers [data-direction=receive]')?.dataset.state === 'done'")
        .await;
    let shown = alice
        .eval("document.querySelector('#transfers [data-direction=receive]').dataset.sha256")
        .await;
    assert_eq!(shown, json!(sha));
    let hashed = alice
        .eval(
            "(async () => { \
               const link = document.querySelector('#transfers [data-direction=receive] a'); \
               const received = [...transferItems.keys()].find(t => t.direction === 'receive'); \
               if (!link.href.startsWith('blob:')) throw new Error('no download link'); \
               const bytes = await received.blob.arrayBuffer(); \
               const digest = await crypto.subtle.digest('SHA-256', bytes); \
               return [link.download, bytes.byteLength, \
                 [...new Uint8Array(digest)].map(b => b.toString(16).padStart(2, '0')).join('')]; \
             })()",
        )
        .await;
    let len = std::fs::metadata(&path).expect("the sent file").len();
    assert_eq!(hashed, json!(["from-terminal.bin", len, sha]));
    carol
        .stderr
        .wait_for("the terminal's transfer to finish", |line| {
            line.starts_with("sent from-terminal.bin to alice:")
        })
        .await;
}

#[tokio::test]
async fn markup_from_others_is_shown_as_text_and_never_runs() {
    let Some(browser) = Browser::launch().await else { return };
    let cluster = WebCluster::start().await;
    let alice = log_in(&browser, &cluster.url(0), "alice").await;
    let mut mallory = cluster.terminal("mallory", 1, &[]).await;
    let bob = log_in(&browser, &cluster.url(1), "bob").await;
    open(&alice, "mallory").await;
    let attacks = [
        "<img src=x onerror=alert(1)>",
        "<img src=x onerror=window.pwned=1><script>window.pwned=2</script>",
    ];
    for attack in attacks {
        mallory.say(&format!("@alice {attack}")).await;
        shows(&alice, attack).await;
    }
    // The same from another page, and to a room.
    open(&alice, "bob").await;
    open(&bob, "alice").await;
    say(&bob, attacks[1]).await;
    shows(&alice, attacks[1]).await;

    assert_eq!(alice.eval("typeof window.pwned").await, json!("undefined"), "no script ran");
    assert_eq!(
        alice.eval("document.querySelectorAll('#messages img, #messages script').length").await,
        json!(0)
    );
    assert_eq!(alice.alert().await, None, "no alert opened");
    drop(mallory);
}

#[tokio::test]
async fn a_hub_restart_loses_nothing_and_the_page_says_it_reconnected() {
    const COUNT: usize = 60;
    let Some(browser) = Browser::launch().await else { return };
    let mut cluster = WebCluster::start().await;
    let alice = log_in(&browser, &cluster.url(0), "alice").await;
    let mut carol = cluster.terminal("carol", 1, &[]).await;
    open(&alice, "carol").await;

    // The page sends a numbered stream, paced, while the hub is killed and started again.
    alice
        .eval(&format!(
            "void (async () => {{ \
               for (let n = 1; n <= {COUNT}; n++) {{ \
                 document.getElementById('message').value = String(n); \
                 document.getElementById('composer').requestSubmit(); \
                 await new Promise(resolve => setTimeout(resolve, 40)); \
               }} \
             }})()"
        ))
        .await;
    assert_eq!(carol.stdout.next("the first message").await, "alice: 1");
    cluster.hub.kill().await;
    alice
        .wait_for(
            "the page to tell the hub is gone",
            "document.getElementById('banner').textContent.includes('lost the cluster')",
        )
        .await;
    let (hub, _admin) = start_hub(cluster.hub_addr).await;
    cluster.hub = hub;
    alice
        .wait_for(
            "the page to say it reconnected",
            "document.getElementById('banner').textContent.startsWith('Reconnected')",
        )
        .await;

    let mut received = vec![1];
    while received.len() < COUNT {
        let line = carol.stdout.next("alice's stream").await;
        let n: usize = line
            .strip_prefix("alice: ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        received.push(n);
    }
    // Anything sent twice would come before this.
    say(&alice, "the end").await;
    assert_eq!(carol.stdout.next("the last message").await, "alice: the end");
    assert_eq!(received, (1..=COUNT).collect::<Vec<_>>(), "every message once, in order");
    let status = alice.eval("document.getElementById('status-text').textContent").await;
    assert_eq!(status, json!("connected to server 0"));
}

#[tokio::test]
async fn a_drain_moves_the_page_to_the_other_server_and_loses_nothing() {
    const COUNT: usize = 100;
    let Some(browser) = Browser::launch().await else { return };
    let cluster = WebCluster::start().await;
    let alice = log_in(&browser, &cluster.url(1), "alice").await;
    let mut carol = cluster.terminal("carol", 0, &[]).await;
    join(&alice, "ops").await;
    open(&alice, "carol").await;

    for n in 1..=COUNT / 2 {
        carol.say(&format!("@alice {n}")).await;
    }
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let drained =
        request(cluster.admin, "POST", "/api/servers/1/drain", &[("Authorization", &bearer)], None)
            .await;
    assert_eq!(drained.status, 200, "{drained:?}");
    for n in COUNT / 2 + 1..=COUNT {
        carol.say(&format!("@alice {n}")).await;
    }
    alice
        .wait_for("the move", "document.getElementById('me').textContent === 'alice · server 0'")
        .await;
    let banner = alice.eval("document.getElementById('banner').textContent").await;
    let expected = format!("Moved to server 0 ({})", cluster.pages[0]);
    assert!(banner.as_str().is_some_and(|text| text.starts_with(&expected)), "{banner}");

    let last = js(&COUNT.to_string());
    alice
        .wait_for("every message", &format!("[...document.querySelectorAll('#messages li:not(.notice) .text')].some(e => e.textContent === {last})"))
        .await;
    carol.say("@alice after the move").await;
    shows(&alice, "after the move").await;
    let mut numbers: Vec<usize> =
        texts(&alice).await.iter().filter_map(|text| text.parse().ok()).collect();
    let all = numbers.clone();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers, (1..=COUNT).collect::<Vec<_>>(), "every message once: {all:?}");
    assert_eq!(all.len(), COUNT, "none twice: {all:?}");

    // The page is in its room again on the new server.
    carol.say("/join ops").await;
    carol.stderr.wait_for("carol's join", |line| line == "joined #ops").await;
    carol.say("#ops still here?").await;
    alice.eval("document.querySelector('[data-key=\"#ops\"]').click()").await;
    shows(&alice, "still here?").await;
    assert!(BROWSER_PATIENCE.as_secs() > 0);
}

#[tokio::test]
async fn a_page_that_loses_its_server_reconnects_by_itself() {
    let Some(browser) = Browser::launch().await else { return };
    let mut cluster = WebCluster::start().await;
    let alice = log_in(&browser, &cluster.url(0), "alice").await;
    let mut carol = cluster.terminal("carol", 1, &[]).await;
    open(&alice, "carol").await;

    cluster.servers[0].kill().await;
    alice
        .wait_for(
            "the page to say the connection is lost",
            "document.getElementById('banner').textContent.includes('lost; reconnecting by itself') \
             && document.getElementById('status-text').textContent.startsWith('connection lost')",
        )
        .await;
    // Typed while the server is away: sent once the page is back.
    say(&alice, "typed while away").await;
    cluster.restart_server(0).await;
    alice
        .wait_for(
            "the page to say it reconnected",
            "document.getElementById('banner').textContent === 'Reconnected to server 0.'",
        )
        .await;
    assert_eq!(carol.stdout.next("the message typed while away").await, "alice: typed while away");
    carol.say("@alice welcome back").await;
    shows(&alice, "welcome back").await;
}

#[tokio::test]
async fn a_page_whose_user_logs_in_elsewhere_says_why_and_stops() {
    let Some(browser) = Browser::launch().await else { return };
    let cluster = WebCluster::start().await;
    let alice = log_in(&browser, &cluster.url(0), "alice").await;
    let _terminal = cluster.terminal("alice", 1, &[]).await;
    alice
        .wait_for(
            "the kick",
            "document.getElementById('banner').textContent.startsWith('Logged out:')",
        )
        .await;
    assert_eq!(
        alice.eval("document.getElementById('status-text').textContent").await,
        json!("kicked")
    );
    assert_eq!(
        alice.eval("state.stopped && state.conn === null").await,
        json!(true),
        "no reconnect"
    );
}

/// A WebSocket request to `page`'s `/ws` with `origin`, if any.
fn ws_request(
    page: &str,
    origin: Option<&str>,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = format!("ws://{page}/ws").into_client_request().expect("a request");
    if let Some(origin) = origin {
        request.headers_mut().insert("Origin", origin.parse().expect("a header value"));
    }
    request
}

#[tokio::test]
async fn a_socket_from_a_foreign_page_is_refused() {
    let mut cluster = WebCluster::start().await;
    let page = cluster.pages[0].clone();
    let refused = tokio_tungstenite::connect_async(ws_request(&page, Some("http://evil.example")))
        .await
        .expect_err("a foreign origin is refused");
    match refused {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected 403, got {other}"),
    }
    cluster.servers[0]
        .stderr
        .wait_for("the refusal's log line", |line| {
            line.contains("WebSocket from a foreign page refused") && line.contains("evil.example")
        })
        .await;
    // The page's own origin, and the other server's page (where a drained page comes from).
    // A user each: the first socket's logout may still be under way when the second logs in.
    let origins = [format!("http://{page}"), format!("http://{}", cluster.pages[1])];
    for (origin, user) in origins.iter().zip(["zed", "yves"]) {
        let (mut socket, _) = tokio_tungstenite::connect_async(ws_request(&page, Some(origin)))
            .await
            .unwrap_or_else(|err| panic!("{origin} is let in: {err}"));
        socket.send(Message::Text(format!("LOGIN {user}").into())).await.expect("send");
        assert_eq!(next_text(&mut socket).await.as_deref(), Some("OK 0"));
        socket.close(None).await.expect("close");
    }
}

/// The next text message of `socket`, or `None` once it is closed.
async fn next_text<S>(socket: &mut S) -> Option<String>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let next = tokio::time::timeout(BROWSER_PATIENCE, socket.next()).await.expect("in time");
        match next {
            Some(Ok(Message::Text(text))) => return Some(text.as_str().to_owned()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
            Some(Ok(other)) => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_misbehaving_socket_is_closed_alone() {
    let mut cluster = WebCluster::start().await;
    let page = cluster.pages[0].clone();
    let connect = |user: &'static str| {
        let page = page.clone();
        async move {
            let (mut socket, _) =
                tokio_tungstenite::connect_async(ws_request(&page, None)).await.expect("connect");
            socket.send(Message::Text(format!("LOGIN {user}").into())).await.expect("send");
            assert_eq!(next_text(&mut socket).await.as_deref(), Some("OK 0"));
            socket
        }
    };
    let mut good = connect("good").await;

    // Over the size limit: a line of 100 KiB.
    let mut big = connect("big").await;
    let oversized = format!("SEND good {}", "x".repeat(100 * 1024));
    let _ = big.send(Message::Text(oversized.into())).await;
    assert_eq!(next_text(&mut big).await, None, "the oversized socket is closed");
    // Not a line of the protocol.
    let mut garbled = connect("garbled").await;
    garbled.send(Message::Text("{\"hello\": 1}".into())).await.expect("send");
    assert_eq!(next_text(&mut garbled).await, None, "the garbled socket is closed");
    // Binary.
    let mut binary = connect("binary").await;
    binary.send(Message::Binary(vec![0, 1, 2].into())).await.expect("send");
    assert_eq!(next_text(&mut binary).await, None, "the binary socket is closed");
    cluster.servers[0]
        .stderr
        .wait_for("the log line", |line| line.contains("closing a misbehaving web client"))
        .await;

    // The well-behaved socket carries on.
    good.send(Message::Text("WHO good".into())).await.expect("send");
    assert_eq!(next_text(&mut good).await.as_deref(), Some("LOCATED good 0"));
    good.send(Message::Text("WHO big".into())).await.expect("send");
    assert_eq!(next_text(&mut good).await.as_deref(), Some("LOCATED big offline"));
}

#[tokio::test]
async fn a_server_with_a_page_stops_cleanly_and_tells_its_browsers() {
    let mut cluster = WebCluster::start().await;
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_request(&cluster.pages[0], None))
        .await
        .expect("connect");
    socket.send(Message::Text("LOGIN leaving".into())).await.expect("send");
    assert_eq!(next_text(&mut socket).await.as_deref(), Some("OK 0"));

    let server = &mut cluster.servers[0];
    server.terminate().await;
    assert_eq!(next_text(&mut socket).await.as_deref(), Some("ERR server is shutting down"));
    assert_eq!(next_text(&mut socket).await, None, "then the socket is closed");
    let log = server.exits_cleanly().await;
    assert_stopped_cleanly("im-server 0", &log);
}
