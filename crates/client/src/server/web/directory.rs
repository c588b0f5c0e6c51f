//! Where the cluster's web pages are: each server with a page tells the others its client
//! address and its page's address (server-to-server messages), so a drained server can send its
//! browsers to the page of the server the hub picked, and a page may open its socket there.
//!
//! The announcement is `acms-demo-web hello <client-addr> <web-addr>` to every server; a server
//! with a page of its own answers `acms-demo-web reply ...` to the one that said hello, so
//! servers that started earlier and later all learn of each other.

use std::sync::{Arc, OnceLock};

use acms_appserver::{Cluster, ServerId};
use bytes::Bytes;
use dashmap::DashMap;
use tracing::{info, warn};

/// First word of the server messages this module sends and reads.
const TAG: &str = "acms-demo-web";

/// Longest address accepted in an announcement.
const MAX_ADDR_LEN: usize = 255;

/// The cluster's web pages, by the client address of their servers. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct WebDirectory {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// This server's client address and web address, once its page is up.
    own: OnceLock<(String, String)>,
    /// Client address → web address (`host:port`) of every server with a page, this one too.
    pages: DashMap<String, String>,
}

impl WebDirectory {
    /// Records this server's page and tells every other server where it is.
    pub(crate) async fn announce(&self, cluster: &Cluster, client: &str, web: &str) {
        let _ = self.inner.own.set((client.to_owned(), web.to_owned()));
        self.inner.pages.insert(client.to_owned(), web.to_owned());
        if let Err(err) = cluster.send_to_all_servers(message("hello", client, web)).await {
            warn!(error = %err, "cannot tell the other servers where this web page is");
        }
    }

    /// Takes a server message if it is an announcement (and answers a hello with this server's
    /// own page); `false` for any other message.
    pub(crate) async fn handle_server_message(
        &self,
        cluster: &Cluster,
        from: ServerId,
        payload: &[u8],
    ) -> bool {
        let Ok(text) = std::str::from_utf8(payload) else { return false };
        let mut words = text.split(' ');
        if words.next() != Some(TAG) {
            return false;
        }
        let (kind, client, web) = (words.next(), words.next(), words.next());
        let valid = |addr: &str| !addr.is_empty() && addr.len() <= MAX_ADDR_LEN;
        let (Some(kind @ ("hello" | "reply")), Some(client), Some(web), None) =
            (kind, client, web, words.next())
        else {
            warn!(%from, "bad web-page announcement; ignored");
            return true;
        };
        if !valid(client) || !valid(web) {
            warn!(%from, "bad web-page announcement; ignored");
            return true;
        }
        info!(%from, client, web, "a server's web page");
        self.inner.pages.insert(client.to_owned(), web.to_owned());
        if let (Some((own_client, own_web)), "hello") = (self.inner.own.get(), kind) {
            let answer = message("reply", own_client, own_web);
            if let Err(err) = cluster.send_to_server(from, answer).await {
                warn!(%from, error = %err, "cannot tell a server where this web page is");
            }
        }
        true
    }

    /// The web address of the server whose client address is `client`.
    pub(crate) fn page_of(&self, client: &str) -> Option<String> {
        self.inner.pages.get(client).map(|web| web.clone())
    }

    /// Whether `authority` (`host:port`) is the page of a server of the cluster. Loopback
    /// names are one: a page opened at `localhost:8080` is the page advertised as
    /// `127.0.0.1:8080`.
    pub(crate) fn is_cluster_page(&self, authority: &str) -> bool {
        let authority = same_host(authority);
        self.inner.pages.iter().any(|page| same_host(page.value()) == authority)
    }
}

/// `authority` lowercased, with any loopback host written `loopback`.
pub(crate) fn same_host(authority: &str) -> String {
    let authority = authority.to_ascii_lowercase();
    let Some((host, port)) = authority.rsplit_once(':') else { return authority };
    match host {
        "localhost" | "127.0.0.1" | "[::1]" => format!("loopback:{port}"),
        _ => authority,
    }
}

/// A server message of this module.
fn message(kind: &str, client: &str, web: &str) -> Bytes {
    Bytes::from(format!("{TAG} {kind} {client} {web}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_are_one_host() {
        assert_eq!(same_host("localhost:8080"), same_host("127.0.0.1:8080"));
        assert_eq!(same_host("[::1]:8080"), same_host("LOCALHOST:8080"));
        assert_ne!(same_host("localhost:8080"), same_host("127.0.0.1:8081"));
        assert_ne!(same_host("chat.example:8080"), same_host("127.0.0.1:8080"));
        assert_eq!(same_host("Chat.Example:8080"), "chat.example:8080");
    }
}
