// File transfer, the same protocol as im-client's (acms_client::transfer): `FILE <peer> <message>`
// lines relayed unread by the servers; messages `offer`, `accept`, `chunk`, `ack`, `end`, `done`,
// `abort`; 32 KiB chunks in base64, at most 16 unacknowledged; SHA-256 of the whole file checked
// by the receiver and confirmed to the sender, incrementally with js-sha256 (`sha256.create()`,
// loaded before this file), since the browser's crypto.subtle hashes only whole buffers.
"use strict";

const CHUNK_LEN = 32 * 1024;
const WINDOW = 16;
// A silent peer ends the transfer after this long, as im-client's --file-timeout does.
const TRANSFER_TIMEOUT_MS = 15000;
// A received file is held in the page's memory until saved.
const MAX_RECEIVE = 512 * 1024 * 1024;

function toBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 8192) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 8192));
  }
  return btoa(binary);
}

function fromBase64(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/**
 * The transfers of this page. `send(peer, message)` sends a transfer message; `view` is told of
 * each transfer's start (`added(t)`), progress (`progress(t)`) and end (`finished(t)`), where `t`
 * has `direction` ("send" or "receive"), `peer`, `name`, `size`, `bytes`, and at the end either
 * `error` or `sha256` (and for a received file `blob`).
 */
class Transfers {
  constructor(send, view) {
    this.send = send;
    this.view = view;
    this.sending = new Map();
    this.receiving = new Map();
    this.nextId = Date.now() * 1000;
  }

  key(peer, id) {
    return `${peer} ${id}`;
  }

  /** Sends `file` (a File) to `peer`. */
  sendFile(peer, file) {
    const id = this.nextId++;
    const name = file.name.replace(/[\r\n]/g, " ") || "download";
    const t = {
      direction: "send", peer, id, name, size: file.size, bytes: 0, file,
      sent: 0, acked: 0, offset: 0, reading: false, ended: false, accepted: false,
      hasher: sha256.create(), done: false,
    };
    this.sending.set(this.key(peer, id), t);
    this.view.added(t);
    this.arm(t);
    this.send(peer, `offer ${id} ${file.size} ${name}`);
  }

  /** Takes a transfer message from `peer`. */
  handle(peer, body) {
    const match = /^(\w+) (\d+)(?: (.*))?$/s.exec(body);
    if (!match) return;
    const [, verb, id, rest = ""] = match;
    const key = this.key(peer, id);
    if (verb === "offer") return this.offered(peer, id, rest);
    const toSender = verb === "accept" || verb === "ack" || verb === "done";
    const t = verb === "abort"
      ? this.sending.get(key) || this.receiving.get(key)
      : (toSender ? this.sending : this.receiving).get(key);
    if (!t) {
      // Finished or never started here: tell the peer, unless it is the last word of one.
      if (verb !== "done" && verb !== "abort") this.send(peer, `abort ${id} no such transfer`);
      return;
    }
    this.arm(t);
    try {
      if (verb === "abort") return this.fail(t, `${peer} aborted the transfer: ${rest}`, false);
      if (t.direction === "send") this.onSenderMessage(t, verb, rest);
      else this.onReceiverMessage(t, verb, rest);
    } catch (err) {
      this.fail(t, String(err.message || err), true);
    }
  }

  /** A transfer message to `peer` came back: they are offline. */
  undeliverable(peer, body) {
    const match = /^\w+ (\d+)/.exec(body);
    if (!match) return;
    const key = this.key(peer, match[1]);
    const t = this.sending.get(key) || this.receiving.get(key);
    if (t) this.fail(t, `${peer} is offline`, false);
  }

  offered(peer, id, rest) {
    const match = /^(\d+) (.+)$/s.exec(rest);
    const key = this.key(peer, id);
    if (!match) return this.send(peer, `abort ${id} offer takes a size and a name`);
    if (this.receiving.has(key)) return this.send(peer, `abort ${id} duplicate transfer id`);
    const size = Number(match[1]);
    const name = match[2].split(/[\\/]/).pop().replace(/^\.+/, "") || "download";
    const t = {
      direction: "receive", peer, id, name, size, bytes: 0, count: 0, chunks: [],
      hasher: sha256.create(), done: false,
    };
    this.receiving.set(key, t);
    this.view.added(t);
    if (size > MAX_RECEIVE) {
      return this.fail(t, `too large for a browser page (at most ${MAX_RECEIVE} bytes)`, true);
    }
    this.arm(t);
    this.send(peer, `accept ${id}`);
  }

  onSenderMessage(t, verb, rest) {
    if (verb === "accept" && !t.accepted) {
      t.accepted = true;
      return this.pump(t);
    }
    if (verb === "ack") {
      const count = Number(rest);
      if (!(count >= t.acked && count <= t.sent)) {
        throw new Error(`${t.peer} acknowledged ${count} chunks of ${t.sent} sent`);
      }
      t.acked = count;
      t.bytes = Math.min(count * CHUNK_LEN, t.size);
      this.view.progress(t);
      return this.pump(t);
    }
    if (verb === "done" && t.ended) {
      if (rest !== t.sha256) throw new Error(`checksum mismatch: sent ${t.sha256}, received ${rest}`);
      t.bytes = t.size;
      return this.finish(t);
    }
    throw new Error(`unexpected \`${verb}\` from ${t.peer}`);
  }

  /** Sends chunks while the window allows, one file read at a time. */
  async pump(t) {
    if (t.reading || t.done) return;
    t.reading = true;
    try {
      while (!t.done && t.sent - t.acked < WINDOW && t.offset < t.size) {
        const end = Math.min(t.offset + CHUNK_LEN, t.size);
        const data = new Uint8Array(await t.file.slice(t.offset, end).arrayBuffer());
        if (t.done) return;
        if (data.length !== end - t.offset) throw new Error(`${t.name} changed while it was sent`);
        t.hasher.update(data);
        this.send(t.peer, `chunk ${t.id} ${t.sent} ${toBase64(data)}`);
        t.offset = end;
        t.sent += 1;
      }
      if (!t.done && !t.ended && t.offset >= t.size) {
        t.ended = true;
        t.sha256 = t.hasher.hex();
        this.send(t.peer, `end ${t.id} ${t.sha256}`);
      }
    } catch (err) {
      this.fail(t, `cannot read ${t.name}: ${err.message || err}`, true);
    } finally {
      t.reading = false;
    }
  }

  onReceiverMessage(t, verb, rest) {
    if (verb === "chunk") {
      const match = /^(\d+) (.*)$/s.exec(rest);
      if (!match) throw new Error("chunk takes an index and base64 data");
      const index = Number(match[1]);
      if (index !== t.count) throw new Error(`chunk ${index} from ${t.peer} where chunk ${t.count} was due`);
      const data = fromBase64(match[2]);
      if (data.length > CHUNK_LEN) throw new Error("chunk longer than CHUNK_LEN");
      t.bytes += data.length;
      if (t.bytes > t.size) throw new Error(`${t.peer} sent more than the ${t.size} bytes offered`);
      t.hasher.update(data);
      t.chunks.push(data);
      t.count += 1;
      this.send(t.peer, `ack ${t.id} ${t.count}`);
      this.view.progress(t);
      return;
    }
    if (verb === "end") {
      if (t.bytes !== t.size) throw new Error(`${t.peer} ended after ${t.bytes} of the ${t.size} bytes offered`);
      const mine = t.hasher.hex();
      if (mine !== rest.toLowerCase()) {
        throw new Error(`checksum mismatch: sender's sha256 ${rest}, received bytes' sha256 ${mine}`);
      }
      t.sha256 = mine;
      t.blob = new Blob(t.chunks, { type: "application/octet-stream" });
      t.chunks = [];
      this.send(t.peer, `done ${t.id} ${mine}`);
      return this.finish(t);
    }
    throw new Error(`unexpected \`${verb}\` from ${t.peer}`);
  }

  /** (Re)starts the timer that ends a transfer whose peer went silent. */
  arm(t) {
    clearTimeout(t.timer);
    t.timer = setTimeout(
      () => this.fail(t, `no progress from ${t.peer} for ${TRANSFER_TIMEOUT_MS / 1000} s; giving up`, true),
      TRANSFER_TIMEOUT_MS,
    );
  }

  finish(t) {
    if (t.done) return;
    t.done = true;
    clearTimeout(t.timer);
    this.forget(t);
    this.view.finished(t);
  }

  /** Ends a transfer with `reason`, telling the peer unless it already knows. */
  fail(t, reason, tellPeer) {
    if (t.done) return;
    t.error = reason;
    t.chunks = [];
    if (tellPeer) this.send(t.peer, `abort ${t.id} ${reason.replace(/[\r\n]/g, " ")}`);
    this.finish(t);
  }

  forget(t) {
    (t.direction === "send" ? this.sending : this.receiving).delete(this.key(t.peer, t.id));
  }

  /** Ends every transfer, telling each peer why. */
  shutdown(reason) {
    for (const t of [...this.sending.values(), ...this.receiving.values()]) this.fail(t, reason, true);
  }
}
