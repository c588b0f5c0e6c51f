//! The admin token of a hub that was given none: generated once, kept in a file only this user
//! can read, and read back at the next start so the operators' token stays the same.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::{AdminConfig, AdminToken};

/// Why the admin token file cannot be used; each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read, written or replaced.
    #[error("{what} {path}")]
    Io {
        /// What was being done ("cannot read", "cannot write the admin token to").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The system's reason.
        source: std::io::Error,
    },
    /// The file is not one this hub may trust.
    #[error("{0}")]
    Untrusted(String),
}

/// The token of a hub given none, and the file that keeps it.
#[derive(Debug)]
pub(crate) struct TokenFile {
    pub(crate) token: AdminToken,
    path: PathBuf,
    /// Made for this run only (an ephemeral admin port): removed when the hub stops.
    per_run: bool,
}

impl TokenFile {
    /// Reads the token kept in the file from an earlier run, or makes one and writes it to a file
    /// only this user can read, and logs where: the API is never open by default, the token never
    /// appears in a log, and it stays the same across restarts until the file is deleted.
    pub(crate) fn open(config: &AdminConfig, port: u16) -> Result<Self, TokenFileError> {
        let per_run = config.token_file.is_none() && config.addr.port() == 0;
        let path = config.token_file.clone().unwrap_or_else(|| {
            let dir =
                std::env::var_os("XDG_RUNTIME_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
            dir.join(format!("acms-admin-{port}.token"))
        });
        if !per_run && let Some(token) = read_token(&path)? {
            tracing::info!(file = %path.display(), "admin token read from its file");
            return Ok(Self { token, path, per_run });
        }
        let token = AdminToken::generate();
        write_token(&path, &token)?;
        tracing::warn!(
            file = %path.display(),
            "no admin token set (ACMS_ADMIN_TOKEN or admin.token): generated one and wrote it to this file"
        );
        Ok(Self { token, path, per_run })
    }

    /// Removes a per-run file once the hub has stopped; a kept file stays for the next start.
    pub(crate) fn close(self) {
        if self.per_run
            && let Err(err) = std::fs::remove_file(&self.path)
        {
            tracing::warn!(file = %self.path.display(), error = %err, "cannot remove the admin token file");
        }
    }
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TokenFileError {
    let path = path.to_owned();
    move |source| TokenFileError::Io { what, path, source }
}

/// The token kept at `path`, or `None` if there is no file. A file this user does not own, that
/// others may read, or that holds no valid token is an error: reusing it could hand the API to
/// whoever wrote it, and replacing it silently would change the operators' token.
fn read_token(path: &Path) -> Result<Option<AdminToken>, TokenFileError> {
    let shown = path.display();
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(io_error("cannot read", path)(err)),
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !metadata.file_type().is_file() || metadata.uid() != me {
        return Err(TokenFileError::Untrusted(format!(
            "the admin token file {shown} is not a regular file owned by this user: remove it \
             (a new token is then generated) or set admin.token_file"
        )));
    }
    if metadata.mode() & 0o077 != 0 {
        return Err(TokenFileError::Untrusted(format!(
            "the admin token file {shown} may be read by other users (mode {:o}): `chmod 600` it, \
             or remove it to generate a new token",
            metadata.mode() & 0o777
        )));
    }
    let text = std::fs::read_to_string(path).map_err(io_error("cannot read", path))?;
    let token = AdminToken::new(text.trim()).map_err(|err| {
        TokenFileError::Untrusted(format!(
            "the admin token file {shown} holds no usable token ({err}): fix it, or remove it to \
             generate a new one"
        ))
    })?;
    Ok(Some(token))
}

/// Writes `token` to a new file at `path` with mode 0600, replacing any file there.
fn write_token(path: &Path, token: &AdminToken) -> Result<(), TokenFileError> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(io_error("cannot replace", path)(err));
        }
        _ => {}
    }
    const WRITE: &str = "cannot write the admin token to";
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error(WRITE, path))?;
    writeln!(file, "{}", token.expose()).map_err(io_error(WRITE, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(file: &Path) -> AdminConfig {
        AdminConfig {
            addr: "127.0.0.1:1".parse().unwrap(),
            token_file: Some(file.to_owned()),
            ..AdminConfig::default()
        }
    }

    #[test]
    fn a_kept_token_is_read_back_and_a_readable_file_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        let first = TokenFile::open(&config(&path), 1).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let again = TokenFile::open(&config(&path), 1).unwrap();
        assert_eq!(again.token.expose(), first.token.expose(), "the same token at the next start");
        again.close();
        assert!(path.exists(), "a kept file stays for the next start");

        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let err = TokenFile::open(&config(&path), 1).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
