//! Answers to `status` and `lockdump` queries (the admin side of a session).

use super::Daemon;
use crate::engine::Mode;
use crate::proto as pb;

/// Most resources in one lock dump.
pub const LOCKDUMP_MAX_RESOURCES: usize = 100_000;

/// Answers a query.
pub fn answer(daemon: &Daemon, query: pb::Query) -> pb::QueryReply {
    let kind = match query.kind {
        Some(pb::query::Kind::Status(_)) => pb::query_reply::Kind::Status(status(daemon)),
        Some(pb::query::Kind::Lockdump(q)) => match daemon.existing_lockspace(&q.lockspace) {
            Some(ls) => pb::query_reply::Kind::Lockdump(lockdump(daemon, &ls)),
            None => pb::query_reply::Kind::Error(format!("no lockspace {:?} on node {}", q.lockspace, daemon.node_id)),
        },
        None => pb::query_reply::Kind::Error("empty query".into()),
    };
    pb::QueryReply { kind: Some(kind) }
}

fn status(daemon: &Daemon) -> pb::StatusReply {
    let lockspaces = daemon
        .all_lockspaces()
        .iter()
        .map(|ls| {
            let state = ls.state.lock();
            pb::LockspaceStatus {
                name: ls.name.clone(),
                lvb_len: ls.lvb_len,
                sessions: state.sessions.len() as u64,
                held_locks: state.holders.len() as u64,
                mastered_resources: state.engine.resource_count() as u64,
                mastered_locks: state.engine.lock_count() as u64,
                counters: state.counters.named().iter().map(|(name, value)| pb::Counter { name: name.to_string(), value: *value }).collect(),
            }
        })
        .collect();
    let peers = daemon
        .config
        .nodes
        .iter()
        .filter(|n| n.id != daemon.node_id)
        .map(|n| {
            let link = daemon.link_state(n.id);
            pb::PeerStatus {
                node_id: n.id,
                name: n.name.clone(),
                address: n.address.to_string(),
                outgoing_connected: link.outgoing,
                incoming_connected: link.incoming,
            }
        })
        .collect();
    let (recovering, awaiting_rebuild) = daemon.recovery_state();
    pb::StatusReply {
        cluster_name: daemon.config.cluster_name.clone(),
        node_id: daemon.node_id,
        epoch: daemon.membership.epoch,
        lockspaces,
        peers,
        refused_connections: daemon.refused.load(std::sync::atomic::Ordering::Relaxed),
        incarnation: daemon.incarnation,
        recovering,
        awaiting_rebuild,
    }
}

fn lockdump(daemon: &Daemon, ls: &super::Lockspace) -> pb::LockdumpReply {
    let state = ls.state.lock();
    let names = state.engine.resource_names();
    let truncated = names.len() > LOCKDUMP_MAX_RESOURCES;
    let dump_lock = |l: &crate::engine::LockView| pb::DumpLock {
        node_id: l.id.node,
        lock_id: l.id.lock,
        granted_mode: l.granted.map(|m| m as i32).unwrap_or(Mode::NL as i32),
        has_granted: l.granted.is_some(),
        requested_mode: l.requested.map(|m| m as i32).unwrap_or(Mode::NL as i32),
        has_requested: l.requested.is_some(),
        flags: l.flags.0,
    };
    let resources = names
        .iter()
        .take(LOCKDUMP_MAX_RESOURCES)
        .filter_map(|name| state.engine.resource(name))
        .map(|view| pb::DumpResource {
            name: view.name.as_bytes().to_vec(),
            granted: view.granted.iter().map(dump_lock).collect(),
            converting: view.converting.iter().map(dump_lock).collect(),
            waiting: view.waiting.iter().map(dump_lock).collect(),
            lvb: view.lvb.value.0[..ls.lvb_len as usize].to_vec(),
            lvb_seq: view.lvb.seq,
            lvb_valid: view.lvb.valid,
        })
        .collect();
    pb::LockdumpReply { lockspace: ls.name.clone(), node_id: daemon.node_id, resources, truncated }
}
