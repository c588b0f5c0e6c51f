//! ACMS, the cluster hub: app servers (AS) register with it, report which users are online on
//! them, and send it data frames for users on other servers, which it relays by the routing header
//! alone.
//!
//! The hub's state is soft: every AS re-sends its users when it (re)connects, so nothing here is
//! persisted and a restart loses nothing the AS still hold.
//!
//! # Layout
//! - [`admin`]: the admin HTTP API (JSON, bearer token, OpenAPI document) and `/metrics`.
//! - [`admin_server`]: the admin API's HTTP server: header-read deadline, connection cap.
//! - `announce`: the hub's DNS-SD announcement on the LAN (cluster name, role, protocol
//!   version), kept up to date with its role and withdrawn at shutdown.
//! - [`assign`]: which app server a new client should use, by the configured policy.
//! - [`dashboard`]: the live dashboard page at `GET /` (embedded), `GET /api/summary` and
//!   `GET /api/hub` (active or standby, and which hub is active); `dashboard_cluster`, every
//!   hub of a backplane in the summary.
//! - [`metrics`]: the Prometheus text rendering of the hub's counters.
//! - `push`: frames the hub originates itself (pushes from the admin API) and their acks.
//! - [`config`]: settings with their defaults, read from TOML by the binary, and their checks.
//! - [`daemon`]: [`Daemon`] and [`run`]: the transfer port and the admin API ([`AdminPort`])
//!   bound and served together, as the binary runs them.
//! - `token_file`: the generated admin token and the file that keeps it.
//! - `auth`: who may join a hub that has no shared secret (the loopback rule).
//! - [`tls`]: optional TLS on the transfer port ([`ServerTls`]).
//! - `backplane`: several active hubs on a NATS cluster, the synchronous core: the replica of
//!   the shared two-level directory, the hubs alive, the numbered messages between hubs and
//!   their gaps, the directory writes owed, which hubs have members of which group.
//! - `hub_requests`: pushes and kicks one hub's admin API forwards to another hub.
//! - [`nats`]: the backplane's async shell: the NATS connection, subscriptions, key-value
//!   watches, heartbeats, publisher and directory writer; `nats::effects` what they do here;
//!   `nats::asks` the questions between the hubs' admin sides.
//! - [`hub`]: [`Hub`], the accept loop with its connection cap and graceful shutdown.
//! - `connection`: one AS connection: an async shell (reader loop, writer task, keepalive,
//!   pushback, classified close) around synchronous cores: `handshake` (TLS, authentication,
//!   registration), `relay` (the frames of one read, routed and handed over per destination)
//!   and `session` (the hub's record of one app server and its control handlers).
//! - `keepalive`: when an idle writer pings and when a silent peer is dead, over explicit
//!   instants.
//! - [`outbox`]: the byte-bounded queue in front of each connection and its batching writer task.
//! - [`registry`]: the AS registry and the user directory, behind synchronous methods; the
//!   directory's methods are in `registry::directory`, the settle window in `registry::settle`.
//! - `forwarded`: the lowest sequence number each origin forwarded to each AS connection, for
//!   the frames in flight to a server that leaves for good.
//! - `state`: `HubState`, what every connection shares, and the hub-wide effects: every control
//!   frame sent to a server, and the slow-consumer rule, go through it.
//! - `watches`: which AS watch which users; `presence`: the `Presence` pushes to them.
//! - [`groups`]: which servers have members of which group.
//! - [`stats`]: counters of what the hub relayed and refused, and the sampled relay latency.
//! - [`standby`]: hot standby: which hub of a cluster is active, and what it answers a peer
//!   hub's status link; `peer_watch`: the links that watch the peer hubs; `peer_discovery`:
//!   the peer hubs found on the LAN (`peers = "auto"`).

pub mod admin;
pub mod admin_server;
mod announce;
pub mod assign;
mod auth;
mod backplane;
pub mod config;
mod connection;
pub mod daemon;
pub mod dashboard;
mod dashboard_cluster;
mod forwarded;
pub mod groups;
pub mod hub;
mod hub_requests;
mod keepalive;
pub mod metrics;
pub mod nats;
pub mod outbox;
mod peer_discovery;
mod peer_watch;
mod presence;
mod push;
pub mod registry;
pub mod standby;
mod state;
pub mod stats;
pub mod tls;
mod token_file;
mod watches;

pub use acms_protocol::Secret;
pub use admin::{AdminSettings, AdminToken};
pub use admin_server::HttpLimits;
pub use assign::Policy as AssignPolicy;
pub use backplane::{BackplaneStats, HubId, RemoteServer, ServerReport};
pub use config::{
    AdminConfig, AssignConfig, BackplaneConfig, Config, ConfigError, DiscoveryConfig, HubConfig,
    LogFormat, LoginConflict, TlsFiles,
};
pub use daemon::{AdminPort, Daemon, DaemonError, run};
pub use groups::Groups;
pub use hub::Hub;
pub use registry::{Registry, ServerInfo};
pub use standby::Standby;
pub use stats::{Stats, StatsSnapshot};
pub use tls::{ServerTls, TlsError};
pub use token_file::TokenFileError;
