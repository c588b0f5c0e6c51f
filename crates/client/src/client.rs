//! A client of the example IM server.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_util::codec::{Framed, LinesCodec, LinesCodecError};

use crate::MAX_LINE_LEN;
use crate::line::{ClientLine, LineError, ServerLine};

/// A connection to an IM server, logged in as one user.
#[derive(Debug)]
pub struct ImClient {
    lines: Framed<TcpStream, LinesCodec>,
    server: u32,
    /// Lines that came while the client waited for an answer, for [`ImClient::recv`].
    early: VecDeque<ServerLine>,
}

/// Why the client failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection failed.
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
    /// A line was too long or not UTF-8.
    #[error("bad line from the server: {0}")]
    Codec(#[from] LinesCodecError),
    /// The server sent something that is not part of the protocol.
    #[error(transparent)]
    Line(#[from] LineError),
    /// The server refused the login.
    #[error("login refused: {0}")]
    Refused(String),
    /// The server closed the connection.
    #[error("server closed the connection")]
    Closed,
}

impl ImClient {
    /// Connects to the server at `addr` and logs in as `user`.
    pub async fn connect(addr: impl ToSocketAddrs, user: &str) -> Result<Self, ClientError> {
        let stream = TcpStream::connect(addr).await?;
        let mut lines = Framed::new(stream, LinesCodec::new_with_max_length(MAX_LINE_LEN));
        lines.send(ClientLine::Login { user: user.to_owned() }.to_string()).await?;
        let mut client = Self { lines, server: 0, early: VecDeque::new() };
        match client.recv().await? {
            Some(ServerLine::Ok { server }) => {
                client.server = server;
                Ok(client)
            }
            Some(ServerLine::Error { reason }) => Err(ClientError::Refused(reason)),
            Some(other) => Err(ClientError::Refused(format!("unexpected answer: {other}"))),
            None => Err(ClientError::Closed),
        }
    }

    /// Id of the server this client is logged in on.
    pub fn server(&self) -> u32 {
        self.server
    }

    /// The address of the server this client is connected to.
    pub fn server_addr(&self) -> Result<SocketAddr, ClientError> {
        Ok(self.lines.get_ref().peer_addr()?)
    }

    /// Sends any line of the protocol.
    pub async fn send_line(&mut self, line: &ClientLine) -> Result<(), ClientError> {
        self.lines.send(line.to_string()).await?;
        Ok(())
    }

    /// Asks the server which UDP port answers the reflexive-address probe (`None`: it runs
    /// none); lines that come meanwhile are kept for [`ImClient::recv`].
    pub async fn udp_port(&mut self) -> Result<Option<u16>, ClientError> {
        self.send_line(&ClientLine::Udp).await?;
        loop {
            match self.lines.next().await {
                None => return Err(ClientError::Closed),
                Some(line) => match ServerLine::parse(&line?) {
                    Ok(ServerLine::Udp { port }) => return Ok(port),
                    // An older server does not know the question.
                    Ok(ServerLine::Error { reason }) if reason.starts_with("bad line") => {
                        return Ok(None);
                    }
                    Ok(other) => self.early.push_back(other),
                    Err(err) => return Err(err.into()),
                },
            }
        }
    }

    /// Sends `text` to `to`.
    pub async fn send(&mut self, to: &str, text: &str) -> Result<(), ClientError> {
        let line = ClientLine::Send { to: to.to_owned(), text: text.to_owned() };
        self.lines.send(line.to_string()).await?;
        Ok(())
    }

    /// Asks where `user` is; the answer comes as a [`ServerLine::Located`].
    pub async fn who(&mut self, user: &str) -> Result<(), ClientError> {
        self.request(ClientLine::Who { user: user.to_owned() }).await
    }

    /// Watches `users` (a friends list); their states come as [`ServerLine::Presence`] lines.
    pub async fn watch(&mut self, users: &[String]) -> Result<(), ClientError> {
        self.request(ClientLine::Watch { users: users.to_vec() }).await
    }

    /// Sends `text` to every online user but this one.
    pub async fn broadcast(&mut self, text: &str) -> Result<(), ClientError> {
        self.request(ClientLine::All { text: text.to_owned() }).await
    }

    /// Joins `group`; the server answers `Joined` once it is in effect cluster-wide.
    pub async fn join(&mut self, group: &str) -> Result<(), ClientError> {
        self.request(ClientLine::Join { group: group.to_owned() }).await
    }

    /// Leaves `group`; the server answers `Left`.
    pub async fn leave(&mut self, group: &str) -> Result<(), ClientError> {
        self.request(ClientLine::Leave { group: group.to_owned() }).await
    }

    /// Sends `text` to every member of `group` but this user.
    pub async fn send_to_group(&mut self, group: &str, text: &str) -> Result<(), ClientError> {
        self.request(ClientLine::Group { group: group.to_owned(), text: text.to_owned() }).await
    }

    async fn request(&mut self, line: ClientLine) -> Result<(), ClientError> {
        self.lines.send(line.to_string()).await?;
        Ok(())
    }

    /// Sends file-transfer message `body` to `to` (see [`crate::transfer`]).
    pub async fn send_file(&mut self, to: &str, body: &str) -> Result<(), ClientError> {
        // As `ClientLine::File` formats it, without copying a chunk's body into one first.
        self.lines.send(format!("FILE {to} {body}")).await?;
        Ok(())
    }

    /// Says goodbye and waits for the server to close the connection.
    pub async fn quit(mut self) -> Result<(), ClientError> {
        self.lines.send(ClientLine::Quit.to_string()).await?;
        while self.recv().await?.is_some() {}
        Ok(())
    }

    /// The next line from the server, or `None` once it closed the connection.
    pub async fn recv(&mut self) -> Result<Option<ServerLine>, ClientError> {
        if let Some(line) = self.early.pop_front() {
            return Ok(Some(line));
        }
        match self.lines.next().await {
            None => Ok(None),
            Some(line) => Ok(Some(ServerLine::parse(&line?)?)),
        }
    }
}
