//! Set-up shared by the ACMS hub daemon and the app servers, kept once so the two cannot drift:
//! reading PEM certificates and keys, the shared secret from the environment and, for processes
//! (the `process` feature), the signal that stops them and their logging.
//!
//! The protocol crate stays free of rustls and of any I/O; this crate is where the two binaries'
//! common ground lives instead.
//!
//! # Layout
//! - [`pem`]: certificates and private keys from PEM bytes, and a version-1 certificate told apart.
//! - `discovery` (feature `discovery`): the hubs of a cluster on a LAN, found by DNS-SD over
//!   multicast DNS, and the cluster name they announce.
//! - [`env`]: settings from the environment: the shared secret (`ACMS_SECRET`), any UTF-8 variable.
//! - `signal` (feature `process`): a `CancellationToken` cancelled by SIGINT or SIGTERM.
//! - `logging` (feature `process`): `tracing` to stderr, plain or JSON, level from `RUST_LOG`.

#![warn(missing_docs)]

#[cfg(feature = "discovery")]
pub mod discovery;
pub mod env;
#[cfg(feature = "process")]
pub mod logging;
pub mod pem;
#[cfg(feature = "process")]
pub mod signal;

pub use env::{EnvError, SECRET_VAR, secret_from_env};
pub use pem::PemError;
