//! Settings of the hub. Every one has a default, so the daemon runs with no file at all;
//! `config/acms.toml` lists them all with their defaults.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use acms_common::discovery::ClusterName;
use acms_protocol::Secret;
use serde::Deserialize;

/// The whole configuration file of the `acms` daemon.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The transfer port the app servers connect to.
    pub transfer: HubConfig,
    /// The admin HTTP API and `/metrics`.
    pub admin: AdminConfig,
    /// How `GET /api/assign` picks a server for a new client.
    pub assign: AssignConfig,
    /// Logging.
    pub log: LogConfig,
    /// The DNS-SD announcement on the LAN.
    pub discovery: DiscoveryConfig,
    /// Several active hubs sharing one NATS cluster (`[backplane]`); off by default.
    pub backplane: BackplaneConfig,
}

/// Settings of the NATS backplane that lets several hubs run active at once (`[backplane]`).
/// With no `nats` URL the hub is alone, exactly as without this section.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackplaneConfig {
    /// The NATS servers to connect to (`nats://host:4222` or `tls://host:4222`); `acms
    /// --backplane` overrides it. Empty: no backplane.
    pub nats: Vec<String>,
    /// Connect to the servers of `nats` in their order (the first that answers; on its loss, the
    /// next), not in a random one as NATS clients do by default. Hubs that list the same server
    /// first then meet on it, so a frame between them crosses one NATS server instead of two
    /// (docs/SCALING.md); random spreads the hubs over the servers.
    pub in_order: bool,
    /// A NATS credentials file (JWT and NKey seed), as `nats` tools take it.
    pub credentials: Option<PathBuf>,
    /// User name for NATS user/password authentication; needs `password`.
    pub user: Option<String>,
    /// Password of `user`; `ACMS_NATS_PASSWORD` overrides it.
    pub password: Option<String>,
    /// Token for NATS token authentication; `ACMS_NATS_TOKEN` overrides it.
    pub token: Option<String>,
    /// The CA certificate (PEM) that signed the NATS servers' certificates; requires TLS.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) presented to the NATS servers; needs `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM).
    pub tls_key: Option<PathBuf>,
    /// How long the first connection to NATS, and then opening the directory's buckets, may
    /// each take before the hub gives up and exits.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How often the hub tells the other hubs it is alive.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// A hub not heard from for this long is dead for every other hub.
    #[serde(with = "humantime_serde")]
    pub dead_after: Duration,
    /// Replicas of the directory's buckets; by default one per NATS server of the cluster, up
    /// to three, so the directory survives the death of any one of them.
    pub kv_replicas: Option<usize>,
    /// Batches waiting to be published to NATS before the readers that feed them wait
    /// (pushback, for at most twice `transfer.max_stall`); a batch that finds 1,024 more than
    /// this waiting is dropped, which its receiving hub sees as a gap and repairs by asking the
    /// origins to send again.
    pub max_pending_batches: usize,
}

impl Default for BackplaneConfig {
    fn default() -> Self {
        Self {
            nats: Vec::new(),
            in_order: false,
            credentials: None,
            user: None,
            password: None,
            token: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            connect_timeout: Duration::from_secs(5),
            heartbeat: Duration::from_millis(500),
            dead_after: Duration::from_secs(3),
            kv_replicas: None,
            max_pending_batches: 4096,
        }
    }
}

impl fmt::Debug for BackplaneConfig {
    /// The password and token are never shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |set: bool| if set { Some("..") } else { None };
        f.debug_struct("BackplaneConfig")
            .field("nats", &self.nats)
            .field("in_order", &self.in_order)
            .field("credentials", &self.credentials)
            .field("user", &self.user)
            .field("password", &hidden(self.password.is_some()))
            .field("token", &hidden(self.token.is_some()))
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("connect_timeout", &self.connect_timeout)
            .field("heartbeat", &self.heartbeat)
            .field("dead_after", &self.dead_after)
            .field("kv_replicas", &self.kv_replicas)
            .field("max_pending_batches", &self.max_pending_batches)
            .finish()
    }
}

impl BackplaneConfig {
    /// Whether the hub runs on a backplane.
    pub fn enabled(&self) -> bool {
        !self.nats.is_empty()
    }

    /// Checks the combinations of backplane settings.
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |why: &str| Err(ConfigError::Backplane(why.to_owned()));
        for url in &self.nats {
            if !(url.starts_with("nats://") || url.starts_with("tls://")) {
                return Err(ConfigError::Backplane(format!(
                    "`{url}` is not a NATS URL: write nats://host:port or tls://host:port"
                )));
            }
        }
        if self.user.is_some() != self.password.is_some() {
            return bad("`user` and `password` go together");
        }
        let methods = [self.credentials.is_some(), self.user.is_some(), self.token.is_some()];
        if methods.iter().filter(|&&set| set).count() > 1 {
            return bad("choose one of `credentials`, `user`/`password` and `token`");
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("`tls_cert` and `tls_key` go together");
        }
        if self.heartbeat.is_zero() || self.dead_after < self.heartbeat * 2 {
            return bad("`heartbeat` must be above zero and `dead_after` at least twice it");
        }
        if self.max_pending_batches == 0 {
            return bad("`max_pending_batches` must be at least 1");
        }
        Ok(())
    }
}

/// Settings of the hub's announcement on the LAN (`[discovery]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Announce the transfer port by DNS-SD over multicast DNS (`_acms._tcp.local.`); `acms
    /// --no-announce` turns it off. A hub whose transfer port is on loopback is never announced.
    pub announce: bool,
    /// The cluster's name, announced with the hub: app servers and hubs find only the hubs of
    /// their own cluster name. 1 to 63 characters of `A-Z a-z 0-9 - _ .`.
    #[serde(deserialize_with = "cluster_name")]
    pub cluster_name: ClusterName,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self { announce: true, cluster_name: ClusterName::default() }
    }
}

fn cluster_name<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<ClusterName, D::Error> {
    let name = String::deserialize(deserializer)?;
    ClusterName::new(name).map_err(serde::de::Error::custom)
}

/// Settings of the admin HTTP API (`[admin]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the admin API listens; loopback by default.
    pub addr: SocketAddr,
    /// The bearer token for routes that change state; `ACMS_ADMIN_TOKEN` overrides it. With none,
    /// the daemon generates one at start and writes it to `token_file`.
    pub token: Option<AdminToken>,
    /// Where a generated token is kept (mode 0600), and read back at the next start so the token
    /// stays the same. By default `acms-admin-PORT.token` in `$XDG_RUNTIME_DIR`, or in the
    /// temporary directory.
    pub token_file: Option<PathBuf>,
    /// How long a push waits for the recipient's server to acknowledge it.
    #[serde(with = "humantime_serde")]
    pub push_timeout: Duration,
    /// How long a connection has to send a complete request header (at connect, and between
    /// requests on a kept-alive connection) before it is closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Most admin connections open at once; more are answered `503` and closed.
    #[serde(deserialize_with = "at_least_one")]
    pub max_connections: usize,
}

impl AdminConfig {
    /// The HTTP server's limits; shutdown waits for open requests as long as for app servers.
    pub fn limits(&self, shutdown_grace: Duration) -> crate::HttpLimits {
        crate::HttpLimits {
            header_read_timeout: self.header_read_timeout,
            max_connections: self.max_connections,
            shutdown_grace,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            addr: DEFAULT_ADDR,
            token: None,
            token_file: None,
            push_timeout: Duration::from_secs(5),
            header_read_timeout: crate::HttpLimits::default().header_read_timeout,
            max_connections: crate::HttpLimits::default().max_connections,
        }
    }
}

/// Settings of server assignment (`[assign]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AssignConfig {
    /// `min-users` (default), `min-cpu`, `round-robin`, `weighted` or `affinity`.
    pub policy: crate::assign::Policy,
}

impl Config {
    /// Parses a TOML document; unknown keys are errors, missing keys take their defaults.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

/// A count that disables what it limits at zero (every connection refused) is a mistake in the
/// file, not a setting: refuse it at start with the key's name.
fn at_least_one<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    let value = usize::deserialize(deserializer)?;
    if value == 0 {
        return Err(serde::de::Error::custom("must be at least 1"));
    }
    Ok(value)
}

/// Settings of the transfer port and of the relay behind it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// Where app servers connect.
    pub listen: SocketAddr,
    /// Largest frame body accepted or sent, in bytes (capped at 16 MiB).
    pub max_frame_len: usize,
    /// The secret app servers must prove (HMAC challenge-response) to join. With none, the hub
    /// admits app servers only from loopback addresses (or with a verified TLS client
    /// certificate). The `acms` binary also takes it from `ACMS_SECRET`.
    pub secret: Option<Secret>,
    /// How long a new connection has to complete the handshake (TLS, `Hello`, authentication).
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Most connections open at once; more are refused at accept.
    #[serde(deserialize_with = "at_least_one")]
    pub max_connections: usize,
    /// Most users one AS may have online. A `Login` past it closes that AS's connection with
    /// `TooManyUsers`; the AS library refuses such a login itself before it is sent.
    pub max_users_per_server: usize,
    /// Most groups one AS may have members in. A `Join` past it closes that AS's connection with
    /// `TooManyGroups`; the AS library refuses such a join itself before it is sent.
    pub max_groups_per_server: usize,
    /// Bytes waiting in one AS's outbound queue above which the servers sending to it are paused
    /// (the hub stops reading from them) until it drains.
    pub high_water_bytes: usize,
    /// Longest a sending server is paused for one slow receiver; a receiver that has not drained
    /// under the high water by then is disconnected (the slow-consumer rule). On a backplane, a
    /// sender waiting for credit from another hub reads again after twice this at the latest.
    #[serde(with = "humantime_serde")]
    pub max_stall: Duration,
    /// Bytes that may wait in one AS's outbound queue. A relay that would pass it disconnects that
    /// AS (the slow-consumer rule) and returns the frame to its sender as undeliverable.
    pub max_pending_bytes: usize,
    /// How long an AS whose connection broke stays registered, its users online, for it to come
    /// back; frames for its users are held meanwhile and sent again by their origins.
    #[serde(with = "humantime_serde")]
    pub reconnect_grace: Duration,
    /// How long after the first AS registers the directory counts as still filling: frames for
    /// users nobody has yet are held for their origin to send again, not returned as undeliverable.
    #[serde(with = "humantime_serde")]
    pub settle: Duration,
    /// How long shutdown waits for connections to flush before it drops them.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// The other hubs of this cluster (`host:port` of their transfer ports), watched so that
    /// exactly one hub is active: a hub refuses registrations while it can reach an active peer
    /// (docs/FAILOVER.md). Empty: the hub is alone and always active. The hub's own address may be
    /// listed too, so every hub can share one list; it recognises and skips itself. `"auto"` (or
    /// `["auto"]`): the other hubs of this cluster name found on the LAN by DNS-SD
    /// (`[discovery]`), followed as they come and go; they authenticate like listed ones. The
    /// daemon ([`crate::run`], [`crate::Daemon`]) does the looking; a [`crate::Hub`] served on its
    /// own stays standby with `auto`.
    #[serde(deserialize_with = "peer_list")]
    pub peers: Vec<String>,
    /// Most peer hubs' status links open at once (each peer of a cluster keeps one). A peer hub
    /// past it is refused, with a log line; its links are authenticated like app servers first.
    #[serde(deserialize_with = "at_least_one")]
    pub max_peer_links: usize,
    /// How often a hub asks each peer for its status.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// A peer that has not answered for this long is counted unreachable, and a registered app
    /// server that has sent nothing for this long (app servers ping every second when idle) is
    /// closed: the bound on noticing a silent network cut.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// What happens when a user logs in on a second AS while online on another.
    pub login_conflict: LoginConflict,
    /// TLS on the transfer port. The `acms` binary reads these files and hands the result to
    /// [`crate::Hub::with_tls`]; the library itself reads no file.
    pub tls: Option<TlsFiles>,
}

/// The value of `peers` that finds the peer hubs on the LAN.
pub const AUTO_PEERS: &str = "auto";

impl HubConfig {
    /// Whether the peer hubs are found on the LAN (`peers = "auto"`) rather than listed.
    pub fn discovers_peers(&self) -> bool {
        self.peers.iter().any(|peer| peer.eq_ignore_ascii_case(AUTO_PEERS))
    }
}

/// `peers`: a list of addresses, or one string (`"auto"`, or addresses separated by commas).
fn peer_list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Peers {
        One(String),
        List(Vec<String>),
    }
    let peers = match Peers::deserialize(deserializer)? {
        Peers::One(text) => text.split(',').map(|peer| peer.trim().to_owned()).collect(),
        Peers::List(list) => list,
    };
    Ok(peers.into_iter().filter(|peer| !peer.is_empty()).collect())
}

/// The policy for a user who logs in on a second AS while online on another.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LoginConflict {
    /// The newer session wins: the directory moves to the new AS, and the older AS is sent
    /// `Kick` for the user, which ends that session.
    #[default]
    Replace,
    /// Every session stays: a message for the user reaches each AS they are online on.
    Multi,
}

/// PEM files of the transfer port's TLS (`[transfer.tls]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The hub's certificate chain.
    pub cert: PathBuf,
    /// The hub's private key.
    pub key: PathBuf,
    /// When set, every app server must present a client certificate signed by this CA.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 12000)),
            max_frame_len: acms_protocol::DEFAULT_MAX_FRAME_LEN,
            secret: None,
            handshake_timeout: Duration::from_secs(5),
            max_connections: 1024,
            max_users_per_server: 1_000_000,
            max_groups_per_server: 100_000,
            high_water_bytes: 1 << 20,
            max_stall: Duration::from_secs(5),
            max_pending_bytes: 64 << 20,
            reconnect_grace: Duration::from_secs(5),
            settle: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(5),
            peers: Vec::new(),
            max_peer_links: 16,
            keepalive_interval: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(3),
            login_conflict: LoginConflict::Replace,
            tls: None,
        }
    }
}

/// Logging settings; `RUST_LOG` chooses the level.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Line format.
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

// The admin API's token and address live here, beside the settings that hold them, so that
// the settings depend on no server module.

/// The address the admin API listens on by default: loopback only.
pub const DEFAULT_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 11000);

/// The bearer token of the admin API. Never shown in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct AdminToken(String);

/// Why a string cannot be an admin token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the admin token must be 16 to 256 visible ASCII characters")]
pub struct BadToken;

impl AdminToken {
    /// A token from text: 16 to 256 visible ASCII characters, so it fits a header as it is.
    pub fn new(token: impl Into<String>) -> Result<Self, BadToken> {
        let token = token.into();
        let visible = token.bytes().all(|byte| byte.is_ascii_graphic());
        if (16..=256).contains(&token.len()) && visible { Ok(Self(token)) } else { Err(BadToken) }
    }

    /// A fresh random token (256 bits, hex) for a hub that was given none.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
    }

    /// The token's text, to write where the operator can read it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares in time independent of where the strings differ.
    pub(crate) fn matches(&self, offered: &[u8]) -> bool {
        let mine = self.0.as_bytes();
        let mut diff = mine.len() ^ offered.len();
        for (index, byte) in mine.iter().enumerate() {
            diff |= usize::from(byte ^ offered.get(index).copied().unwrap_or(0));
        }
        diff == 0
    }
}

impl TryFrom<String> for AdminToken {
    type Error = BadToken;

    fn try_from(token: String) -> Result<Self, BadToken> {
        Self::new(token)
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_file_matches_the_defaults() {
        let shipped = Config::from_toml(include_str!("../../../config/acms.toml")).unwrap();
        let defaults = Config::default();
        assert_eq!(format!("{shipped:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn backplane_settings_are_read_checked_and_the_password_never_shown() {
        let text = "[backplane]\nnats = [\"nats://a:4222\", \"tls://b:4222\"]\n\
                    user = \"acms\"\npassword = \"hunter2-secret\"\n";
        let config = Config::from_toml(text).unwrap();
        config.validate().unwrap();
        assert!(config.backplane.enabled());
        assert!(!format!("{config:?}").contains("hunter2"));
        assert!(!Config::default().backplane.enabled());
        let refused = [
            ("[backplane]\nnats = [\"http://a:4222\"]\n", "not a NATS URL"),
            ("[backplane]\nuser = \"a\"\n", "go together"),
            ("[backplane]\ntoken = \"t\"\ncredentials = \"c\"\n", "choose one"),
            ("[backplane]\ntls_cert = \"c\"\n", "go together"),
            ("[backplane]\nheartbeat = \"2s\"\ndead_after = \"3s\"\n", "twice"),
            ("[backplane]\nnats = [\"nats://a:1\"]\n[transfer]\npeers = [\"b:1\"]\n", "peers"),
        ];
        for (text, why) in refused {
            let err = Config::from_toml(text).unwrap().validate().unwrap_err().to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
        let err = Config::from_toml("[backplane]\nnat = []\n").unwrap_err();
        assert!(err.to_string().contains("nat"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::from_toml("[transfer]\nlisen = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }

    #[test]
    fn secret_and_tls_are_read_and_the_secret_is_never_shown() {
        let text = "[transfer]\nsecret = \"0123456789abcdef0123\"\n\
                    [transfer.tls]\ncert = \"hub.pem\"\nkey = \"hub.key\"\n";
        let config = Config::from_toml(text).unwrap();
        assert!(config.transfer.secret.is_some());
        assert!(!format!("{config:?}").contains("0123456789abcdef"));
        let tls = config.transfer.tls.unwrap();
        assert_eq!((tls.cert.to_str(), tls.client_ca), (Some("hub.pem"), None));

        let err = Config::from_toml("[transfer]\nsecret = \"short\"\n").unwrap_err();
        assert!(err.to_string().contains("at least 16"), "{err}");
        let err = Config::from_toml("[transfer.tls]\ncert = \"a\"\nkey = \"b\"\nca = \"c\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("ca"), "{err}");
    }

    #[test]
    fn login_conflict_is_read() {
        let config = Config::from_toml("[transfer]\nlogin_conflict = \"multi\"\n").unwrap();
        assert_eq!(config.transfer.login_conflict, LoginConflict::Multi);
        assert!(Config::from_toml("[transfer]\nlogin_conflict = \"both\"\n").is_err());
    }

    #[test]
    fn admin_settings_are_read_and_the_token_is_never_shown() {
        let text = "[admin]\naddr = \"127.0.0.1:9\"\ntoken = \"abcdefghijklmnopqrstuvwxyz\"\n";
        let config = Config::from_toml(text).unwrap();
        assert_eq!(config.admin.addr.port(), 9);
        assert_eq!(
            config.admin.token.as_ref().map(AdminToken::expose),
            Some("abcdefghijklmnopqrstuvwxyz")
        );
        assert!(!format!("{config:?}").contains("abcdefghijklmnop"));
        let err = Config::from_toml("[admin]\ntoken = \"short\"\n").unwrap_err();
        assert!(err.to_string().contains("16 to 256"), "{err}");
        assert_eq!(Config::default().admin.addr.to_string(), "127.0.0.1:11000");
        let text = "[admin]\nheader_read_timeout = \"2s\"\nmax_connections = 7\n";
        let limits = Config::from_toml(text).unwrap().admin.limits(Duration::from_secs(1));
        assert_eq!(
            (limits.header_read_timeout, limits.max_connections),
            (Duration::from_secs(2), 7)
        );
    }

    #[test]
    fn limits_of_zero_are_refused_naming_the_key() {
        for (table, key) in [
            ("admin", "max_connections"),
            ("transfer", "max_connections"),
            ("transfer", "max_peer_links"),
        ] {
            let err = Config::from_toml(&format!("[{table}]\n{key} = 0\n")).unwrap_err();
            let message = err.to_string();
            assert!(message.contains("must be at least 1") && message.contains(key), "{message}");
        }
        assert!(Config::from_toml("[transfer]\nmax_peer_links = 1\n").is_ok());
    }

    #[test]
    fn discovery_settings_are_read_and_the_cluster_name_is_checked() {
        let defaults = Config::default().discovery;
        assert!(defaults.announce);
        assert_eq!(defaults.cluster_name.as_str(), "acms");
        let text = "[discovery]\nannounce = false\ncluster_name = \"prod-eu.1\"\n";
        let config = Config::from_toml(text).unwrap();
        assert!(!config.discovery.announce);
        assert_eq!(config.discovery.cluster_name.as_str(), "prod-eu.1");
        for bad in ["", "two words", "x/y"] {
            let text = format!("[discovery]\ncluster_name = \"{bad}\"\n");
            let err = Config::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains("cluster_name") && err.contains("1 to 63"), "{err}");
        }
    }

    #[test]
    fn peers_are_read() {
        let text = "[transfer]\npeers = [\"10.0.0.1:12000\", \"10.0.0.2:12000\"]\n";
        let config = Config::from_toml(text).unwrap();
        assert_eq!(config.transfer.peers, ["10.0.0.1:12000", "10.0.0.2:12000"]);
        assert!(!config.transfer.discovers_peers());
        let config = Config::from_toml("[transfer]\npeers = \"a:1, b:2\"\n").unwrap();
        assert_eq!(config.transfer.peers, ["a:1", "b:2"]);
        for text in ["peers = \"auto\"", "peers = [\"auto\"]"] {
            let config = Config::from_toml(&format!("[transfer]\n{text}\n")).unwrap();
            assert!(config.transfer.discovers_peers(), "{text}");
            config.validate().expect("auto alone is valid");
        }
        let mixed = Config::from_toml("[transfer]\npeers = [\"auto\", \"a:1\"]\n").unwrap();
        let err = mixed.validate().expect_err("auto with addresses").to_string();
        assert!(err.contains("auto"), "{err}");
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let config = Config::from_toml("[transfer]\nhandshake_timeout = \"250ms\"\n").unwrap();
        assert_eq!(config.transfer.handshake_timeout, Duration::from_millis(250));
        assert_eq!(config.transfer.listen.port(), 12000);
    }
}

/// Settings that parse but cannot work together.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Hot standby with TLS on the transfer port.
    #[error(
        "hot standby (peers) and TLS on the transfer port cannot be combined yet: remove \
         `peers`/--peers or the TLS settings"
    )]
    PeersWithTls,
    /// `peers` both `auto` and addresses.
    #[error(
        "peers is either \"auto\" (find the peer hubs on the LAN) or a list of addresses, not both"
    )]
    AutoPeersWithAddresses,
    /// Hot standby on a backplane: the hubs of a backplane are all active.
    #[error(
        "hot standby (peers) and a backplane cannot be combined: on a backplane every hub is \
         active; remove `peers`/--peers or the backplane"
    )]
    PeersWithBackplane,
    /// A `[backplane]` setting is wrong.
    #[error("backplane: {0}")]
    Backplane(String),
}

impl Config {
    /// Checks what no single key's parsing can: the combinations of settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.transfer.tls.is_some() && !self.transfer.peers.is_empty() {
            // Peers ask each other's status over plain TCP: against a TLS port every probe would
            // fail, and each hub would think itself alone and active.
            return Err(ConfigError::PeersWithTls);
        }
        if self.transfer.discovers_peers() && self.transfer.peers.len() > 1 {
            return Err(ConfigError::AutoPeersWithAddresses);
        }
        if self.backplane.enabled() && !self.transfer.peers.is_empty() {
            return Err(ConfigError::PeersWithBackplane);
        }
        self.backplane.validate()
    }
}
