//! Settings taken from the environment, where secrets belong rather than on a command line.

use acms_protocol::{Secret, SecretError};

/// The environment variable that holds the cluster's shared secret, for the hub and every app
/// server alike; it overrides the config file's.
pub const SECRET_VAR: &str = "ACMS_SECRET";

/// Why a setting from the environment cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// The variable holds bytes that are not UTF-8.
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    /// The secret in the variable is refused (empty, say).
    #[error("{var} is not usable: {source}")]
    Secret {
        /// The variable.
        var: &'static str,
        /// Why the secret is refused.
        source: SecretError,
    },
}

/// The value of `var`, or `None` when it is not set.
pub fn var(var: &'static str) -> Result<Option<String>, EnvError> {
    std::env::var_os(var)
        .map(|value| value.into_string().map_err(|_| EnvError::NotUtf8(var)))
        .transpose()
}

/// The shared secret in [`SECRET_VAR`], or `None` when it is not set.
pub fn secret_from_env() -> Result<Option<Secret>, EnvError> {
    var(SECRET_VAR)?
        .map(|value| {
            Secret::new(value).map_err(|source| EnvError::Secret { var: SECRET_VAR, source })
        })
        .transpose()
}
