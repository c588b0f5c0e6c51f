//! The AS registry and the user directory.
//!
//! Both are sharded concurrent maps behind synchronous methods: a relay looks up the recipient's
//! server and queues the frame on that server's [`Outbox`] without holding any guard across an
//! `.await` (there is none), so connections on different cores rarely touch the same shard.

use std::net::SocketAddr;
use std::time::SystemTime;

use acms_protocol::{ServerId, UserId};
use bytes::Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio_util::sync::CancellationToken;

use crate::outbox::{Outbox, PushError};

/// What the cluster knows of one registered AS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// The id it registered under.
    pub id: ServerId,
    /// Where its clients connect, as it advertised.
    pub client_addr: String,
    /// The address its hub connection comes from.
    pub peer_addr: SocketAddr,
    /// When it registered.
    pub connected_at: SystemTime,
}

#[derive(Debug)]
struct ServerEntry {
    info: ServerInfo,
    outbox: Outbox,
    /// Cancels the AS's connection, for the slow-consumer rule.
    closer: CancellationToken,
}

impl ServerEntry {
    /// Stops relaying to the server at once and tells its connection to end.
    fn close(&self) {
        self.outbox.close();
        self.closer.cancel();
    }
}

/// A fast, randomly seeded hash: every relayed frame costs one directory lookup.
type Hasher = foldhash::fast::RandomState;

/// Registered AS and the users online on them.
#[derive(Debug, Default)]
pub struct Registry {
    servers: DashMap<ServerId, ServerEntry, Hasher>,
    users: DashMap<UserId, ServerId, Hasher>,
}

/// A second live AS asked for an id that is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("server id {0} is already registered by a live connection")]
pub struct DuplicateServer(pub ServerId);

/// Why frames could not be queued for a server; the frames come back to be bounced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayError {
    /// The server is no longer registered.
    Gone(Vec<Bytes>),
    /// The server is over its queue limit and was told to disconnect.
    SlowConsumer {
        /// Bytes it had pending.
        pending: usize,
        /// The frames that were not queued.
        frames: Vec<Bytes>,
    },
}

impl Registry {
    /// Registers an AS, unless another live connection holds its id.
    pub(crate) fn register(
        &self,
        info: ServerInfo,
        outbox: Outbox,
        closer: CancellationToken,
    ) -> Result<(), DuplicateServer> {
        match self.servers.entry(info.id) {
            Entry::Occupied(_) => Err(DuplicateServer(info.id)),
            Entry::Vacant(slot) => {
                slot.insert(ServerEntry { info, outbox, closer });
                Ok(())
            }
        }
    }

    /// Removes an AS and, at once, every user it still had online.
    pub(crate) fn unregister<'a>(&self, id: ServerId, users: impl IntoIterator<Item = &'a UserId>) {
        self.servers.remove(&id);
        for user in users {
            self.logout(id, user.as_str());
        }
    }

    /// Records `user` as online on `server`, returning the AS that had them before, if another.
    pub(crate) fn login(&self, server: ServerId, user: UserId) -> Option<ServerId> {
        self.users.insert(user, server).filter(|&previous| previous != server)
    }

    /// Takes `user` off the directory if `server` still owns them: a user who moved to another AS
    /// meanwhile stays where they are.
    pub(crate) fn logout(&self, server: ServerId, user: &str) {
        self.users.remove_if(user, |_, &owner| owner == server);
    }

    /// Queues whole data frames for `server`, in order, never waiting. A server over its queue
    /// limit is told to disconnect (the slow-consumer rule). Returns the server's outbox when it
    /// is above its high water, for the caller to wait on before it reads more.
    pub(crate) fn relay_batch(
        &self,
        server: ServerId,
        frames: Vec<Bytes>,
    ) -> Result<Option<Outbox>, RelayError> {
        let Some(entry) = self.servers.get(&server) else {
            return Err(RelayError::Gone(frames));
        };
        match entry.outbox.push_batch(frames) {
            Ok(()) => Ok(entry.outbox.above_high_water().then(|| entry.outbox.clone())),
            Err((PushError::Closed, frames)) => Err(RelayError::Gone(frames)),
            Err((PushError::Full { pending }, frames)) => {
                entry.close();
                Err(RelayError::SlowConsumer { pending, frames })
            }
        }
    }

    /// Disconnects a server that did not drain its queue in time (the slow-consumer rule).
    pub(crate) fn close(&self, server: ServerId) {
        if let Some(entry) = self.servers.get(&server) {
            entry.close();
        }
    }

    /// The AS `user` is online on, if any.
    pub fn locate(&self, user: &str) -> Option<ServerId> {
        self.users.get(user).map(|owner| *owner)
    }

    /// Every registered AS, by id.
    pub fn servers(&self) -> Vec<ServerInfo> {
        let mut servers: Vec<_> = self.servers.iter().map(|entry| entry.info.clone()).collect();
        servers.sort_by_key(|info| info.id);
        servers
    }

    /// Number of users online in the cluster.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: u32) -> ServerInfo {
        ServerInfo {
            id: ServerId(id),
            client_addr: format!("127.0.0.1:{}", 6000 + id),
            peer_addr: SocketAddr::from(([127, 0, 0, 1], 50000)),
            connected_at: SystemTime::now(),
        }
    }

    fn user(name: &str) -> UserId {
        UserId::new(name).unwrap()
    }

    #[test]
    fn duplicate_id_is_refused_until_the_first_leaves() {
        let registry = Registry::default();
        let (outbox, _inbox) = Outbox::new(1024, 512);
        let token = CancellationToken::new();
        registry.register(info(1), outbox.clone(), token.clone()).unwrap();
        assert_eq!(
            registry.register(info(1), outbox.clone(), token.clone()),
            Err(DuplicateServer(ServerId(1)))
        );
        registry.unregister(ServerId(1), []);
        registry.register(info(1), outbox, token).unwrap();
    }

    #[test]
    fn unregister_takes_only_the_servers_own_users() {
        let registry = Registry::default();
        let (alice, bob) = (user("alice"), user("bob"));
        registry.login(ServerId(1), alice.clone());
        registry.login(ServerId(1), bob.clone());
        // bob moved to server 2 before server 1 noticed.
        assert_eq!(registry.login(ServerId(2), bob.clone()), Some(ServerId(1)));
        registry.unregister(ServerId(1), [&alice, &bob]);
        assert_eq!(registry.locate("alice"), None);
        assert_eq!(registry.locate("bob"), Some(ServerId(2)));
    }

    #[test]
    fn relay_to_a_full_queue_closes_that_server() {
        let registry = Registry::default();
        let (outbox, _inbox) = Outbox::new(4, 2);
        let token = CancellationToken::new();
        registry.register(info(2), outbox, token.clone()).unwrap();
        let frames = |text: &'static str| vec![Bytes::from_static(text.as_bytes())];
        assert_eq!(
            registry.relay_batch(ServerId(3), frames("x")).err(),
            Some(RelayError::Gone(frames("x")))
        );
        assert!(registry.relay_batch(ServerId(2), frames("1234")).unwrap().is_some());
        assert!(!token.is_cancelled());
        assert_eq!(
            registry.relay_batch(ServerId(2), frames("5")).err(),
            Some(RelayError::SlowConsumer { pending: 4, frames: frames("5") })
        );
        assert!(token.is_cancelled());
    }
}
