//! Admin queries (`status`, `lockdump`) on a session that joins no lockspace.

use super::connect::{next_kind, open_session, within_handshake, ConnectOptions, Session};
use super::ClientError;
use crate::proto as pb;

/// A session for queries. A daemon answers a query at once, so each answer is
/// awaited at most the handshake timeout.
pub struct AdminClient {
    session: Session,
    options: ConnectOptions,
}

impl AdminClient {
    /// Connects and authenticates.
    pub async fn connect(options: &ConnectOptions) -> Result<AdminClient, ClientError> {
        Ok(AdminClient { session: open_session(options, "", 0, false).await?, options: options.clone() })
    }

    /// The daemon's node id.
    pub fn node_id(&self) -> u32 {
        self.session.welcome.node_id
    }

    async fn query(&mut self, kind: pb::query::Kind) -> Result<pb::query_reply::Kind, ClientError> {
        let message = pb::ClientMessage { kind: Some(pb::client_message::Kind::Query(pb::Query { kind: Some(kind) })) };
        self.session.sender.message(message)?;
        let receiver = &mut self.session.receiver;
        within_handshake(&self.options, async {
            loop {
                match next_kind(receiver).await? {
                    pb::server_message::Kind::Reply(pb::QueryReply { kind: Some(pb::query_reply::Kind::Error(e)) }) => {
                        return Err(ClientError::Query(e));
                    }
                    pb::server_message::Kind::Reply(pb::QueryReply { kind: Some(reply) }) => return Ok(reply),
                    _ => continue,
                }
            }
        })
        .await?
    }

    /// The daemon's status and per-lockspace counters.
    pub async fn status(&mut self) -> Result<pb::StatusReply, ClientError> {
        match self.query(pb::query::Kind::Status(pb::StatusQuery {})).await? {
            pb::query_reply::Kind::Status(s) => Ok(s),
            other => Err(ClientError::Protocol(format!("expected a status, got {other:?}"))),
        }
    }

    /// The resources of `lockspace` mastered on this daemon.
    pub async fn lockdump(&mut self, lockspace: &str) -> Result<pb::LockdumpReply, ClientError> {
        match self.query(pb::query::Kind::Lockdump(pb::LockdumpQuery { lockspace: lockspace.to_string() })).await? {
            pb::query_reply::Kind::Lockdump(d) => Ok(d),
            other => Err(ClientError::Protocol(format!("expected a lock dump, got {other:?}"))),
        }
    }
}
