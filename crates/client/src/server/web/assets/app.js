// The chat page: the demo line protocol over a WebSocket, one line per message (README, "A
// browser client"). Everything another user wrote is put in the page with textContent, never
// as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const NAME = /^\S{1,64}$/;
const EVERYONE = "*";
// Lines kept while the socket is down or moving, sent once logged in again.
const MAX_OUTBOX = 1000;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10000;

const state = {
  user: null,
  server: null,
  // The server whose socket is in use: `host:port`, this page's own at first.
  addr: location.host,
  conn: null,
  // The connection being left during a drain, read until its server closes it.
  old: null,
  moving: false,
  stopped: true,
  retries: 0,
  retryTimer: null,
  outbox: [],
  rooms: new Set(),
  friends: new Map(),
  conversations: new Map(),
  current: EVERYONE,
};

// ---------- connection ----------

function connect(addr, purpose) {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  let ws;
  try {
    ws = new WebSocket(`${scheme}${addr}/ws`);
  } catch (err) {
    return onClosed({ addr, purpose, ws: null }, { code: 1006, reason: String(err) });
  }
  const conn = { ws, addr, purpose, loggedIn: false };
  ws.onopen = () => ws.send(`LOGIN ${state.user}`);
  ws.onmessage = (event) => onLine(conn, String(event.data));
  ws.onclose = (event) => onClosed(conn, event);
  state.conn = conn;
  return conn;
}

function send(line) {
  const conn = state.conn;
  if (!state.moving && conn && conn.loggedIn && conn.ws.readyState === WebSocket.OPEN) {
    conn.ws.send(line);
    return true;
  }
  if (state.outbox.length >= MAX_OUTBOX) {
    notice(state.current, "Not sent: too much is waiting for the connection to come back.");
    return false;
  }
  state.outbox.push(line);
  return true;
}

function onLoggedIn(conn, server) {
  conn.loggedIn = true;
  const first = state.server === null;
  const moved = conn.purpose === "move";
  state.server = server;
  state.addr = conn.addr;
  if (moved) state.moving = false;
  state.retries = 0;
  setStatus("on", `connected to server ${server}`);
  $("me").textContent = `${state.user} · server ${server}`;
  if (first) {
    $("login-view").hidden = true;
    $("chat-view").hidden = false;
    $("logout").hidden = false;
    select(EVERYONE);
    $("message").focus();
  } else {
    // Everything this page had on the server it lost or left, asked for again.
    for (const room of state.rooms) conn.ws.send(`JOIN ${room}`);
    if (state.friends.size > 0) conn.ws.send(`WATCH ${[...state.friends.keys()].join(" ")}`);
  }
  const waiting = state.outbox.splice(0);
  for (const line of waiting) conn.ws.send(line);
  if (moved) {
    banner(`Moved to server ${server} (${conn.addr}): nothing was lost.`);
    notice(state.current, `Moved to server ${server} (${conn.addr}).`);
  } else if (conn.purpose === "reconnect") {
    banner(`Reconnected to server ${server}.`);
    notice(state.current, `Reconnected to server ${server}.`);
  }
}

function onClosed(conn, event) {
  if (conn === state.old) {
    state.old = null;
    return;
  }
  if (conn.purpose === "move" && !conn.loggedIn) return moveFailed(conn, "no answer");
  if (conn !== state.conn || state.stopped) return;
  if (state.server === null) {
    // The first login failed before any answer.
    stop();
    $("login-error").textContent = event.reason || "Cannot reach the server.";
    return;
  }
  conn.loggedIn = false;
  scheduleReconnect(event.reason ? `connection lost (${event.reason})` : "connection lost");
}

function scheduleReconnect(why) {
  const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** state.retries);
  const jittered = Math.round(delay * (0.5 + Math.random() / 2));
  state.retries += 1;
  setStatus("off", `${why}: reconnecting in ${(jittered / 1000).toFixed(1)} s`);
  banner(`Connection to server ${state.server} lost; reconnecting by itself.`);
  clearTimeout(state.retryTimer);
  state.retryTimer = setTimeout(() => {
    if (state.stopped) return;
    setStatus("wait", "reconnecting…");
    connect(state.addr, "reconnect");
  }, jittered);
}

function stop() {
  state.stopped = true;
  clearTimeout(state.retryTimer);
  for (const conn of [state.conn, state.old]) {
    if (conn && conn.ws) conn.ws.onclose = null;
    if (conn && conn.ws && conn.ws.readyState <= WebSocket.OPEN) conn.ws.close();
  }
  state.conn = null;
  state.old = null;
  setStatus("off", "not connected");
}

// ---------- lines from the server ----------

function word(text) {
  const at = text.indexOf(" ");
  return at < 0 ? [text, ""] : [text.slice(0, at), text.slice(at + 1)];
}

function onLine(conn, line) {
  const [verb, rest] = word(line);
  if (!conn.loggedIn) {
    if (verb === "OK") return onLoggedIn(conn, Number(rest));
    if (verb === "ERR") return onLoginRefused(conn, rest);
    return;
  }
  const draining = conn === state.old;
  switch (verb) {
    case "MSG": {
      const [from, text] = word(rest);
      return post(`@${from}`, { from, text });
    }
    case "GMSG": {
      const [room, tail] = word(rest);
      const [from, text] = word(tail);
      return post(`#${room}`, { from, text });
    }
    case "BCAST": {
      const [from, text] = word(rest);
      return post(EVERYONE, { from, text });
    }
    case "UNDELIVERABLE": {
      const [to, tail] = word(rest);
      const close = tail.indexOf(")");
      const reason = tail.slice(1, close);
      const text = tail.slice(close + 1).trimStart();
      return notice(`@${to}`, `Not delivered to ${to} (${reason}): ${text}`);
    }
    case "ERR":
      return notice(state.current, `Error: ${rest}`);
    case "LOCATED":
    case "PRESENCE": {
      const [user, where] = word(rest);
      return presence(user, where === "offline" ? null : Number(where));
    }
    case "JOINED":
      state.rooms.add(rest);
      conversation(`#${rest}`);
      if (state.current === `#${rest}`) $("leave-room").hidden = false;
      renderConversations();
      return;
    case "LEFT":
      state.rooms.delete(rest);
      if (state.current === `#${rest}`) $("leave-room").hidden = true;
      notice(`#${rest}`, `You left #${rest}.`);
      renderConversations();
      return;
    case "KICKED":
      if (draining) return;
      stop();
      banner(`Logged out: ${rest}`);
      notice(state.current, `You were logged out: ${rest}`);
      setStatus("off", "kicked");
      return;
    case "MOVE":
      if (draining || state.moving) return;
      // The old connection is read until its server closes it (after the login on the new
      // one): what was routed there still arrives. Lines typed meanwhile wait in the outbox.
      state.moving = true;
      state.old = conn;
      banner(`Server ${state.server} is being drained; moving to ${rest}…`);
      notice(state.current, `Server ${state.server} is being drained; moving to ${rest}.`);
      connect(rest, "move");
      return;
    case "HUB":
      if (rest === "down") {
        setStatus("wait", `server ${state.server} lost the hub; messages wait there`);
        banner("The server lost the cluster's hub: messages wait on the server until it is back.");
      } else {
        setStatus("on", `connected to server ${state.server}`);
        banner("Reconnected: the server reached the hub again and delivers what waited.");
        notice(state.current, "Reconnected to the cluster's hub.");
      }
      return;
    case "FILE": {
      const [from, body] = word(rest);
      return transfers.handle(from, body);
    }
    case "FILE-UNDELIVERABLE": {
      const [to, body] = word(rest);
      return transfers.undeliverable(to, body);
    }
  }
}

/** The move to another server failed: back to the old connection, or reconnect to it. */
function moveFailed(conn, reason) {
  conn.ws.onclose = null;
  conn.ws.close();
  state.moving = false;
  const old = state.old;
  state.old = null;
  state.conn = old;
  banner(`Could not move to ${conn.addr} (${reason}); staying on server ${state.server}.`);
  if (!old || old.ws.readyState !== WebSocket.OPEN) {
    if (old) old.loggedIn = false;
    scheduleReconnect("the drained server closed the connection");
  } else {
    for (const line of state.outbox.splice(0)) old.ws.send(line);
  }
}

function onLoginRefused(conn, reason) {
  if (conn.purpose === "move") return moveFailed(conn, reason);
  if (state.server === null) {
    stop();
    $("login-error").textContent = reason;
    return;
  }
  // A reconnect refused (the server still has the old session, or is stopping): try again.
  conn.ws.onclose = null;
  conn.ws.close();
  scheduleReconnect(reason);
}

// ---------- conversations ----------

function conversation(key) {
  let conv = state.conversations.get(key);
  if (!conv) {
    conv = { key, entries: [], unread: 0 };
    state.conversations.set(key, conv);
  }
  return conv;
}

function title(key) {
  if (key === EVERYONE) return "Everyone";
  return key.startsWith("#") ? key : key.slice(1);
}

function post(key, entry) {
  const conv = conversation(key);
  entry.time = new Date();
  conv.entries.push(entry);
  if (conv.entries.length > 2000) conv.entries.shift();
  if (key === state.current) appendEntry(entry);
  else conv.unread += 1;
  renderConversations();
}

function notice(key, text) {
  post(key, { notice: true, text });
}

function appendEntry(entry) {
  const list = $("messages");
  const item = document.createElement("li");
  if (entry.notice) item.className = "notice";
  else if (entry.from === state.user && entry.mine) item.className = "mine";
  if (entry.from) {
    const from = document.createElement("span");
    from.className = "from";
    from.textContent = entry.mine ? "you" : entry.from;
    item.append(from);
  }
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = entry.text;
  item.append(text);
  const time = document.createElement("time");
  time.textContent = entry.time.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  item.append(time);
  list.append(item);
  list.scrollTop = list.scrollHeight;
}

function select(key) {
  state.current = key;
  const conv = conversation(key);
  conv.unread = 0;
  $("conversation-title").textContent = title(key);
  $("leave-room").hidden = !(key.startsWith("#") && state.rooms.has(key.slice(1)));
  $("messages").replaceChildren();
  for (const entry of conv.entries) appendEntry(entry);
  const sendable = key !== EVERYONE && !key.startsWith("#");
  $("file-button").hidden = !sendable;
  $("message").placeholder = key === EVERYONE
    ? "Write to everyone online; Enter sends"
    : `Write to ${title(key)}; Enter sends`;
  renderConversations();
}

function renderConversations() {
  const list = $("conversations");
  const keys = [EVERYONE, ...[...state.conversations.keys()].filter((key) => key !== EVERYONE)];
  const focused = document.activeElement && document.activeElement.dataset.key;
  list.replaceChildren(...keys.map((key) => {
    const conv = conversation(key);
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.key = key;
    button.textContent = title(key);
    button.setAttribute("aria-current", String(key === state.current));
    if (key.startsWith("#")) button.dataset.joined = String(state.rooms.has(key.slice(1)));
    button.onclick = () => select(key);
    item.append(button);
    if (conv.unread > 0) {
      const unread = document.createElement("span");
      unread.className = "unread";
      unread.textContent = String(conv.unread);
      unread.title = `${conv.unread} unread`;
      item.append(unread);
    }
    return item;
  }));
  if (focused) {
    const again = list.querySelector(`button[data-key="${CSS.escape(focused)}"]`);
    if (again) again.focus();
  }
}

// ---------- friends ----------

function presence(user, server) {
  if (!state.friends.has(user)) return notice(state.current, server === null ? `${user} is offline.` : `${user} is online on server ${server}.`);
  state.friends.set(user, server);
  renderFriends();
}

function renderFriends() {
  const list = $("friends");
  list.replaceChildren(...[...state.friends].map(([user, server]) => {
    const item = document.createElement("li");
    item.className = server === null ? "offline" : "online";
    item.dataset.friend = user;
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = user;
    button.onclick = () => select(`@${user}`);
    const where = document.createElement("span");
    where.className = "where";
    where.textContent = server === null ? "offline" : server === undefined ? "…" : `online · server ${server}`;
    item.append(button, where);
    return item;
  }));
}

// ---------- transfers ----------

const transferItems = new Map();

const transfers = new Transfers((peer, message) => send(`FILE ${peer} ${message}`), {
  added(t) {
    const item = document.createElement("li");
    item.dataset.direction = t.direction;
    const label = document.createElement("span");
    label.textContent = t.direction === "send" ? `${t.name} → ${t.peer}` : `${t.name} ← ${t.peer}`;
    const bar = document.createElement("progress");
    bar.max = Math.max(t.size, 1);
    bar.value = 0;
    const info = document.createElement("span");
    info.className = "info";
    info.textContent = `0 / ${size(t.size)}`;
    item.append(label, bar, info);
    $("transfers").append(item);
    transferItems.set(t, { item, bar, info });
  },
  progress(t) {
    const view = transferItems.get(t);
    view.bar.value = t.bytes;
    view.info.textContent = `${size(t.bytes)} / ${size(t.size)}`;
  },
  finished(t) {
    const view = transferItems.get(t);
    view.item.dataset.state = t.error ? "failed" : "done";
    if (t.error) {
      view.info.className = "failed";
      view.info.textContent = `failed: ${t.error}`;
      notice(`@${t.peer}`, `File ${t.name} ${t.direction === "send" ? "to" : "from"} ${t.peer} failed: ${t.error}`);
      return;
    }
    view.bar.value = view.bar.max;
    view.item.dataset.sha256 = t.sha256;
    if (t.direction === "send") {
      view.info.textContent = `sent, ${size(t.size)}, checksum confirmed`;
      notice(`@${t.peer}`, `Sent ${t.name} (${size(t.size)}) to ${t.peer}.`);
    } else {
      view.info.textContent = `${size(t.size)}, checksum verified`;
      const link = document.createElement("a");
      link.href = URL.createObjectURL(t.blob);
      link.download = t.name;
      link.className = "button";
      link.textContent = `Save ${t.name}`;
      view.item.append(link);
      notice(`@${t.peer}`, `Received ${t.name} (${size(t.size)}) from ${t.peer}.`);
    }
  },
});

function size(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

function sendFiles(files) {
  const key = state.current;
  if (!key.startsWith("@")) {
    notice(key, "Files go to one user: open a conversation with them first.");
    return;
  }
  for (const file of files) transfers.sendFile(key.slice(1), file);
}

// ---------- status ----------

function setStatus(kind, text) {
  $("status-dot").className = `dot ${kind}`;
  $("status-text").textContent = text;
}

function banner(text) {
  const node = $("banner");
  node.textContent = text;
  node.hidden = false;
}

// ---------- the user's actions ----------

function field(id) {
  const input = $(id);
  const value = input.value.trim();
  if (!NAME.test(value)) {
    input.setCustomValidity("One word, no spaces, at most 64 characters.");
    input.reportValidity();
    return null;
  }
  input.setCustomValidity("");
  input.value = "";
  return value;
}

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const user = field("login-name");
  if (!user) return;
  $("login-error").textContent = "";
  state.user = user;
  state.stopped = false;
  setStatus("wait", "logging in…");
  connect(state.addr, "login");
});

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("message");
  const text = input.value.replace(/[\r\n]+/g, " ");
  if (!text.trim()) return;
  const key = state.current;
  const line = key === EVERYONE ? `ALL ${text}` : key.startsWith("#") ? `GROUP ${key.slice(1)} ${text}` : `SEND ${key.slice(1)} ${text}`;
  if (!send(line)) return;
  input.value = "";
  post(key, { from: state.user, mine: true, text });
});

$("open-user").addEventListener("submit", (event) => {
  event.preventDefault();
  const user = field("open-user-name");
  if (user) select(`@${user}`);
});

$("join-room").addEventListener("submit", (event) => {
  event.preventDefault();
  const room = field("join-room-name");
  if (!room) return;
  send(`JOIN ${room}`);
  select(`#${room}`);
});

$("leave-room").addEventListener("click", () => {
  const key = state.current;
  if (key.startsWith("#")) send(`LEAVE ${key.slice(1)}`);
  $("leave-room").hidden = true;
});

$("add-friend").addEventListener("submit", (event) => {
  event.preventDefault();
  const user = field("add-friend-name");
  if (!user || state.friends.has(user)) return;
  state.friends.set(user, undefined);
  renderFriends();
  send(`WATCH ${user}`);
});

$("logout").addEventListener("click", () => {
  transfers.shutdown(`${state.user} left`);
  if (state.conn && state.conn.loggedIn) state.conn.ws.send("QUIT");
  stop();
  location.reload();
});

$("file-input").addEventListener("change", (event) => {
  sendFiles(event.target.files);
  event.target.value = "";
});

$("file-button").addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") {
    event.preventDefault();
    $("file-input").click();
  }
});

const conversationPane = $("conversation");
conversationPane.addEventListener("dragover", (event) => {
  event.preventDefault();
  $("drop-hint").hidden = false;
});
conversationPane.addEventListener("dragleave", (event) => {
  if (!conversationPane.contains(event.relatedTarget)) $("drop-hint").hidden = true;
});
conversationPane.addEventListener("drop", (event) => {
  event.preventDefault();
  $("drop-hint").hidden = true;
  if (event.dataTransfer && event.dataTransfer.files.length > 0) sendFiles(event.dataTransfer.files);
});
