//! The [`Cluster`] handle: what the app calls, and how it starts the link.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use acms_protocol::{Data, DataKind, EVERYONE, GroupId, ServerId, UserId};
use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

pub use crate::builder::ClusterBuilder;
pub use crate::error::ClusterError;
pub use crate::events::{Event, Events, LinkState, Outcome, Reach, Receipt, UndeliverableReason};
use crate::link::{Command, Link, LinkCore, LinkEnds};
use crate::reliable::{Epoch, charge};
use crate::state::ServerState;
use crate::users::AtLimit;

/// One message for [`Cluster::send_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Who sends it.
    pub from: UserId,
    /// Whom it is for, on any server.
    pub to: UserId,
    /// The bytes to deliver.
    pub payload: Bytes,
}

/// How the messages of one [`Cluster::send_batch`] left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchRoutes {
    /// Delivered to this server's events.
    pub local: usize,
    /// Queued for the hub. A message for a local user with sessions on other servers too
    /// (policy `multi`) counts here and in `local`.
    pub hub: usize,
}

/// Whether a send may wait for room.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    Yes,
    No,
}

/// Whether a send is an invitation ([`Cluster::invite`]) rather than a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invitation {
    Yes,
    No,
}

/// How a message left [`Cluster::send_to_user`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SentVia {
    /// The recipient is on this server: delivered to this server's events, not through the hub.
    Local,
    /// Queued for the hub, which relays it to the recipient's server; or, for a user of this
    /// server who also has sessions on others (policy `multi`), delivered to this server's events
    /// and queued for the hub, which relays it to those other sessions.
    Hub,
}

// Starting is the cluster's business, so the builder module needs neither it nor the link.
impl ClusterBuilder {
    /// Starts the hub connection in the background and returns the handle and its events.
    ///
    /// Returns at once: the connection is made, and remade, by a task of its own. Must be called
    /// within a tokio runtime.
    pub fn start(self) -> (Cluster, Events) {
        let (commands, command_rx) = mpsc::channel(self.queue_capacity);
        let (events, event_rx) = mpsc::channel(self.event_capacity);
        let (state_tx, state) = watch::channel(LinkState::Connecting);
        let server = Arc::new(ServerState::default());
        let shutdown = CancellationToken::new();
        let credit = Arc::new(Semaphore::new(self.retransmit_buffer));
        let hub = Arc::new(std::sync::Mutex::new(None));
        // Only equality matters: a restarted process must not reuse its predecessor's epoch.
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |since| since.as_nanos() as u64);
        let now = tokio::time::Instant::now().into_std();
        let core = LinkCore::new(&self, Epoch(epoch), server.clone(), now);
        let ends = LinkEnds {
            commands: command_rx,
            events: events.clone(),
            state: state_tx,
            connected_hub: hub.clone(),
            credit: credit.clone(),
            shutdown: shutdown.clone(),
        };
        let task = tokio::spawn(Link::new(&self, core, ends).run());
        let inner = Inner {
            server_id: self.server_id,
            max_frame_len: self.max_frame_len,
            credit,
            credit_cap: self.retransmit_buffer,
            server,
            commands,
            events,
            state,
            hub,
            task: std::sync::Mutex::new(Some(task)),
            shutdown: shutdown.clone(),
            _cancel_on_drop: shutdown.drop_guard(),
        };
        (Cluster { inner: Arc::new(inner) }, Events::new(event_rx))
    }
}

/// A cheap-to-clone handle on this server's membership of the cluster.
///
/// Every clone feeds the same connection task. Dropping the last one closes the connection after
/// it has sent what was queued.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    server_id: ServerId,
    max_frame_len: usize,
    /// Free bytes of the retransmit buffer.
    credit: Arc<Semaphore>,
    pub(crate) credit_cap: usize,
    /// Users, groups, watches and limits, shared with the link.
    pub(crate) server: Arc<ServerState>,
    commands: mpsc::Sender<Command>,
    events: mpsc::Sender<Vec<Event>>,
    state: watch::Receiver<LinkState>,
    /// The hub connected to, set by the link.
    hub: Arc<std::sync::Mutex<Option<String>>>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
    shutdown: CancellationToken,
    _cancel_on_drop: DropGuard,
}

impl Cluster {
    /// Settings for a server with id `server_id` joining the hub at `hubs`: one `host:port`, or
    /// several separated by commas, in order of preference (hot standby, docs/FAILOVER.md).
    pub fn builder(server_id: ServerId, hubs: impl Into<String>) -> ClusterBuilder {
        ClusterBuilder::new(server_id, hubs.into())
    }

    /// This server's id.
    pub fn server_id(&self) -> ServerId {
        self.inner.server_id
    }

    /// Marks `user` as online on this server and tells the hub, which routes their messages here
    /// from then on (after [`Cluster::flush`] if the caller must be sure). Logging in a user who is
    /// already online here changes nothing. A login that would pass the hub's limit on users per
    /// server is refused here, before the hub would close the connection over it. Waits only
    /// while the queue to the hub is full.
    pub async fn login(&self, user: UserId) -> Result<(), ClusterError> {
        let max = self.inner.server.max_users.load(Ordering::Relaxed);
        match self.inner.server.users.login(&user, max) {
            Err(AtLimit { max }) => Err(ClusterError::TooManyUsers { max }),
            Ok(None) => Ok(()),
            Ok(Some(version)) => self.command(Command::Login(user, version)).await,
        }
    }

    /// Marks `user` as gone from this server and tells the hub.
    pub async fn logout(&self, user: &UserId) -> Result<(), ClusterError> {
        let Some(version) = self.inner.server.users.logout(user) else {
            return Ok(());
        };
        // After the user left the set, so a `join` racing with this logout cannot leave them in
        // a group (it checks the set under the groups' lock).
        let emptied = self.inner.server.groups().remove_user(user);
        self.command(Command::Logout(user.clone(), version)).await?;
        for group in emptied {
            self.command(Command::Group(group)).await?;
        }
        Ok(())
    }

    /// Makes local user `user` a member of `group`, until they leave it or log out. The hub
    /// learns only that this server has members of the group, when it gets its first. A join
    /// that would give this server members in more groups than the hub allows one server
    /// (`max_groups_per_server`, announced when it connects) is refused here, before the hub
    /// would close the connection over it.
    pub async fn join(&self, group: &GroupId, user: &UserId) -> Result<(), ClusterError> {
        let first = {
            let mut groups = self.inner.server.groups();
            if !self.inner.server.users.contains(user.as_str()) {
                return Err(ClusterError::NotLocal { user: user.clone() });
            }
            if let Some(max) = groups.full_for(group.as_str()) {
                return Err(ClusterError::TooManyGroups { max });
            }
            groups.join(group, user)
        };
        if first {
            self.command(Command::Group(group.clone())).await?;
        }
        Ok(())
    }

    /// Takes `user` out of `group`; a user who is not a member changes nothing.
    pub async fn leave(&self, group: &GroupId, user: &UserId) -> Result<(), ClusterError> {
        let last = self.inner.server.groups().leave(group, user);
        if last {
            self.command(Command::Group(group.clone())).await?;
        }
        Ok(())
    }

    /// The groups local user `user` is a member of.
    pub fn groups_of(&self, user: &UserId) -> Vec<GroupId> {
        self.inner.server.groups().groups_of(user.as_str())
    }

    /// Sends `payload` from `from` to every member of `group` on every server, exactly once
    /// each, but `from` when `exclude_sender`. Members here get it at once as an
    /// [`Event::GroupMessage`]; one copy goes through the hub to each other server with members,
    /// which hands it to its own. Kept for retransmission until every one of those servers has
    /// it, like a message to a user (docs/RELIABILITY.md). The [`Receipt`] tells how many
    /// servers it reached. A group with no members anywhere is no error.
    pub async fn send_to_group(
        &self,
        from: &UserId,
        group: &GroupId,
        payload: Bytes,
        exclude_sender: bool,
    ) -> Result<Receipt, ClusterError> {
        let except = exclude_sender.then_some(from.as_str());
        let members = self.inner.server.groups().members(group.as_str(), except);
        let local = (!members.is_empty()).then(|| Event::GroupMessage {
            group: group.clone(),
            from: from.clone(),
            to: members,
            payload: payload.clone(),
        });
        let kind = if exclude_sender { DataKind::GroupExceptSender } else { DataKind::Group };
        let recipient = UserId::new(group.as_str()).expect("a group id is a valid name");
        self.fan_out(kind, recipient, from.clone(), payload, local).await
    }

    /// Sends `payload` from `from` to every online user of the cluster, exactly once each, but
    /// `from` when `exclude_sender`. Users here get it at once as an [`Event::Broadcast`]; one
    /// copy goes through the hub to each other server, which hands it to its own users.
    pub async fn broadcast(
        &self,
        from: &UserId,
        payload: Bytes,
        exclude_sender: bool,
    ) -> Result<Receipt, ClusterError> {
        let except = exclude_sender.then_some(from.as_str());
        let to = self.inner.server.users.all_but(except);
        let local = (!to.is_empty()).then(|| Event::Broadcast {
            from: from.clone(),
            to,
            payload: payload.clone(),
        });
        let kind =
            if exclude_sender { DataKind::BroadcastExceptSender } else { DataKind::Broadcast };
        let recipient = UserId::new(EVERYONE).expect("a valid name");
        self.fan_out(kind, recipient, from.clone(), payload, local).await
    }

    /// Sends `payload` to server `server` itself (not its users), exactly once, as an
    /// [`Event::ServerMessage`]; to this server, through its own events. The [`Receipt`] says
    /// `Reached { servers: 0 }` if no such server is in the cluster.
    pub async fn send_to_server(
        &self,
        server: ServerId,
        payload: Bytes,
    ) -> Result<Receipt, ClusterError> {
        let me = self.inner.server_id;
        if server == me {
            self.deliver_locally(vec![Event::ServerMessage { from: me, payload }]).await?;
            return Ok(Receipt::known(Outcome::Reached { servers: 0 }));
        }
        let recipient = UserId::new(&server.to_string()).expect("a number is a valid name");
        self.fan_out(DataKind::Server, recipient, self.server_name(), payload, None).await
    }

    /// Sends `payload` to every other server of the cluster, exactly once each, as an
    /// [`Event::ServerMessage`]: cluster-wide events, cache invalidation.
    pub async fn send_to_all_servers(&self, payload: Bytes) -> Result<Receipt, ClusterError> {
        let recipient = UserId::new(EVERYONE).expect("a valid name");
        self.fan_out(DataKind::Server, recipient, self.server_name(), payload, None).await
    }

    /// This server's id as the sender of its server messages.
    fn server_name(&self) -> UserId {
        UserId::new(&self.inner.server_id.to_string()).expect("a number is a valid name")
    }

    /// Delivers `local` here and queues a frame of `kind` for the hub to fan out.
    async fn fan_out(
        &self,
        kind: DataKind,
        recipient: UserId,
        sender: UserId,
        payload: Bytes,
        local: Option<Event>,
    ) -> Result<Receipt, ClusterError> {
        let data = Data { kind, seq: 0, origin: self.inner.server_id, recipient, sender, payload };
        let (len, max) = (data.encoded_len(), self.inner.max_frame_len);
        if len > max {
            return Err(ClusterError::TooLarge { len, max });
        }
        if let Some(event) = local {
            self.deliver_locally(vec![event]).await?;
        }
        let (receipt, rx) = oneshot::channel();
        self.take_credit(charge(acms_protocol::LENGTH_PREFIX_LEN + len, self.inner.credit_cap))
            .await?;
        self.command(Command::Data { data, receipt: Some(receipt), here: false }).await?;
        Ok(Receipt::waiting(rx))
    }

    /// Whether `user` is online on this server.
    pub fn is_local(&self, user: &str) -> bool {
        self.inner.server.users.contains(user)
    }

    /// Number of users online on this server.
    pub fn local_users(&self) -> usize {
        self.inner.server.users.len()
    }

    /// Number of users of this server that the hub says also have sessions on other servers
    /// (policy `multi`): messages to them from here go through the hub too. For monitoring.
    pub fn multi_session_users(&self) -> usize {
        self.inner.server.users.multi_session_count()
    }

    /// Sends `payload` from `from` to `to`, wherever `to` is.
    ///
    /// A local recipient gets it through this server's [`Events`] without the hub. Otherwise it is
    /// queued for the hub and kept in the retransmit buffer until the recipient's server has it:
    /// it arrives exactly once, in order with this sender's other messages to `to`, across hub
    /// restarts and failovers (docs/RELIABILITY.md). If `to` is online nowhere, an
    /// [`Event::Undeliverable`] comes back. Waits while the retransmit buffer or the queue to the
    /// hub is full or, for a local recipient, while the events queue is: so the task that drains
    /// [`Events`] should not itself await sends to local users.
    pub async fn send_to_user(
        &self,
        from: &UserId,
        to: &UserId,
        payload: Bytes,
    ) -> Result<SentVia, ClusterError> {
        self.send(from, to, payload, None, Wait::Yes, Invitation::No).await
    }

    /// Like [`Cluster::send_to_user`], but never waits for room: fails with
    /// [`ClusterError::Full`] instead, and nothing is sent.
    pub async fn try_send_to_user(
        &self,
        from: &UserId,
        to: &UserId,
        payload: Bytes,
    ) -> Result<SentVia, ClusterError> {
        self.send(from, to, payload, None, Wait::No, Invitation::No).await
    }

    /// Like [`Cluster::send_to_user`], and returns a [`Receipt`] for the message's outcome.
    pub async fn send_with_receipt(
        &self,
        from: &UserId,
        to: &UserId,
        payload: Bytes,
    ) -> Result<Receipt, ClusterError> {
        let (receipt, rx) = oneshot::channel();
        let route = self.send(from, to, payload, Some(receipt), Wait::Yes, Invitation::No).await?;
        Ok(match route {
            SentVia::Local => Receipt::known(Outcome::Delivered { sessions: 1 }),
            SentVia::Hub => Receipt::waiting(rx),
        })
    }

    /// Sends a message, or an invitation, from `from` to `to`: locally when `to` is here only,
    /// else through the hub (and locally too when `to` has sessions elsewhere as well).
    pub(crate) async fn send(
        &self,
        from: &UserId,
        to: &UserId,
        payload: Bytes,
        receipt: Option<oneshot::Sender<Outcome>>,
        wait: Wait,
        invitation: Invitation,
    ) -> Result<SentVia, ClusterError> {
        let here = self.is_local(to.as_str());
        let (kind, event): (_, fn(UserId, UserId, Bytes) -> Event) = match invitation {
            Invitation::No => {
                (DataKind::Unicast, |from, to, payload| Event::Message { from, to, payload })
            }
            Invitation::Yes => {
                (DataKind::Invitation, |from, to, payload| Event::Invitation { from, to, payload })
            }
        };
        if here && !self.inner.server.users.is_multi_session(to.as_str()) {
            let event = event(from.clone(), to.clone(), payload);
            match wait {
                Wait::Yes => self.deliver_locally(vec![event]).await?,
                Wait::No => self.try_deliver_locally(vec![event])?,
            }
            return Ok(SentVia::Local);
        }
        let data = Data {
            kind,
            seq: 0,
            origin: self.inner.server_id,
            recipient: to.clone(),
            sender: from.clone(),
            payload,
        };
        let (len, max) = (data.encoded_len(), self.inner.max_frame_len);
        if len > max {
            return Err(ClusterError::TooLarge { len, max });
        }
        let charge = charge(acms_protocol::LENGTH_PREFIX_LEN + len, self.inner.credit_cap);
        // A local user with sessions elsewhere: delivered here, and through the hub to the others.
        let local = here.then(|| event(from.clone(), to.clone(), data.payload.clone()));
        let command = Command::Data { data, receipt, here };
        match wait {
            Wait::Yes => {
                self.take_credit(charge).await?;
                if let Some(event) = local {
                    self.deliver_locally(vec![event]).await?;
                }
                self.command(command).await?;
            }
            Wait::No => {
                let credit =
                    self.inner.credit.try_acquire_many(charge).map_err(|err| match err {
                        tokio::sync::TryAcquireError::NoPermits => ClusterError::Full,
                        tokio::sync::TryAcquireError::Closed => ClusterError::Closed,
                    })?;
                let permit = self.inner.commands.try_reserve().map_err(|err| match err {
                    mpsc::error::TrySendError::Full(()) => ClusterError::Full,
                    mpsc::error::TrySendError::Closed(()) => ClusterError::Closed,
                })?;
                if let Some(event) = local {
                    // Nothing is sent if this fails: the credit and the permit go back.
                    self.try_deliver_locally(vec![event])?;
                }
                credit.forget();
                permit.send(command);
            }
        }
        Ok(SentVia::Hub)
    }

    /// Hands events to the app at once, or fails with [`ClusterError::Full`].
    fn try_deliver_locally(&self, events: Vec<Event>) -> Result<(), ClusterError> {
        self.inner.events.try_send(events).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => ClusterError::Full,
            mpsc::error::TrySendError::Closed(_) => ClusterError::Closed,
        })
    }

    /// Takes room in the retransmit buffer, given back by the link when the message is answered.
    async fn take_credit(&self, charge: u32) -> Result<(), ClusterError> {
        let credit = self.inner.credit.acquire_many(charge).await;
        credit.map_err(|_| ClusterError::Closed)?.forget();
        Ok(())
    }

    /// Sends many messages at once: those for local users go to this server's events as one
    /// batch, the others are encoded here, into one buffer, and queued for the hub as one
    /// command. Order is kept per recipient. For servers that produce messages in bursts (a game
    /// tick, a fan-out), this costs a fraction of one `send_to_user` per message. A batch larger
    /// than the whole retransmit buffer is refused with [`ClusterError::TooLarge`].
    pub async fn send_batch(
        &self,
        messages: impl IntoIterator<Item = Outgoing>,
    ) -> Result<BatchRoutes, ClusterError> {
        let max = self.inner.max_frame_len;
        let mut local = Vec::new();
        let mut encoded = bytes::BytesMut::new();
        let mut hub = 0;
        let mut charged = 0u32;
        // Messages for local users with sessions elsewhere: delivered here and, one command
        // each after the encoded ones, sent through the hub to the other sessions.
        let mut shared = Vec::new();
        for Outgoing { from, to, payload } in messages {
            let here = self.is_local(to.as_str());
            if here {
                local.push(Event::Message {
                    from: from.clone(),
                    to: to.clone(),
                    payload: payload.clone(),
                });
                if !self.inner.server.users.is_multi_session(to.as_str()) {
                    continue;
                }
            }
            let data = Data {
                kind: DataKind::Unicast,
                seq: 0,
                origin: self.inner.server_id,
                recipient: to,
                sender: from,
                payload,
            };
            let len = data.encoded_len();
            if len > max {
                return Err(ClusterError::TooLarge { len, max });
            }
            charged = charged.saturating_add(charge(
                acms_protocol::LENGTH_PREFIX_LEN + len,
                self.inner.credit_cap,
            ));
            if here {
                shared.push(data);
                continue;
            }
            acms_protocol::Frame::Data(data)
                .encode(max, &mut encoded)
                .map_err(|_| ClusterError::TooLarge { len, max })?;
            hub += 1;
        }
        let routes = BatchRoutes { local: local.len(), hub: hub + shared.len() };
        // The link gives the room back frame by frame, each frame's share.
        if charged as usize > self.inner.credit_cap {
            let (len, max) = (encoded.len(), self.inner.credit_cap);
            return Err(ClusterError::TooLarge { len, max });
        }
        if charged > 0 {
            self.take_credit(charged).await?;
        }
        if !local.is_empty() {
            self.deliver_locally(local).await?;
        }
        if hub > 0 {
            self.command(Command::Encoded(encoded)).await?;
        }
        for data in shared {
            self.command(Command::Data { data, receipt: None, here: true }).await?;
        }
        Ok(routes)
    }

    /// Resolves once the hub has handled everything this server sent before the call, logins
    /// included, so a user logged in before it is reachable from every server after it.
    /// Waits across reconnects.
    pub async fn flush(&self) -> Result<(), ClusterError> {
        let (done, wait) = oneshot::channel();
        self.command(Command::Flush(done)).await?;
        wait.await.map_err(|_| ClusterError::Closed)
    }

    /// Which server `user` is online on, or `None` when online nowhere. A user of this server is
    /// answered here; any other question goes to the hub (waiting across reconnects), which
    /// answers from its directory: with several sessions (policy `multi`), the last login's.
    pub async fn locate(&self, user: &UserId) -> Result<Option<ServerId>, ClusterError> {
        if self.is_local(user.as_str()) {
            return Ok(Some(self.inner.server_id));
        }
        Ok(self.reach(user).await?.map(|reach| reach.server))
    }

    /// Subscribes this server to the presence of `users` (a friends list): an
    /// [`Event::Presence`] with each one's current state arrives at once, then another whenever
    /// one comes online, goes offline or moves. The hub pushes them to the servers watching
    /// that user only. The watch list survives reconnects. A watch that would take the list
    /// past the hub's limit (`max_users_per_server`, the same as for users) is refused here, as
    /// a whole, before the hub would close the connection over it.
    pub async fn watch(&self, users: impl IntoIterator<Item = UserId>) -> Result<(), ClusterError> {
        let users: Vec<UserId> = users.into_iter().collect();
        {
            let mut watched = self.inner.server.watched();
            let max = self.inner.server.max_users.load(Ordering::Relaxed);
            let new: std::collections::HashSet<&UserId> =
                users.iter().filter(|user| !watched.contains(*user)).collect();
            if watched.len().saturating_add(new.len()) > max {
                return Err(ClusterError::TooManyWatches { max });
            }
            watched.extend(users.iter().cloned());
        }
        self.command(Command::Watch(users)).await
    }

    /// Ends the watch of `users`; users not watched are ignored.
    pub async fn unwatch(
        &self,
        users: impl IntoIterator<Item = UserId>,
    ) -> Result<(), ClusterError> {
        let users: Vec<UserId> = {
            let mut watched = self.inner.server.watched();
            users.into_iter().filter(|user| watched.remove(user)).collect()
        };
        if users.is_empty() {
            return Ok(());
        }
        self.command(Command::Unwatch(users)).await
    }

    /// The address of the hub this server is registered with, while it is connected.
    pub fn hub(&self) -> Option<String> {
        self.inner.hub.lock().expect("hub lock").clone()
    }

    /// The state of the hub connection, as a watch that changes with it.
    pub fn link_state(&self) -> watch::Receiver<LinkState> {
        self.inner.state.clone()
    }

    /// Sends what is queued, closes the hub connection and waits for the task to end. The hub
    /// then takes this server's users out of the directory.
    pub async fn close(&self) {
        self.inner.shutdown.cancel();
        let task = self.inner.task.lock().expect("task lock").take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    async fn deliver_locally(&self, events: Vec<Event>) -> Result<(), ClusterError> {
        self.inner.events.send(events).await.map_err(|_| ClusterError::Closed)
    }

    pub(crate) async fn command(&self, command: Command) -> Result<(), ClusterError> {
        self.inner.commands.send(command).await.map_err(|_| ClusterError::Closed)
    }
}
