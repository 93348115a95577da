//! What only the framed transport can be sent: broken frames and prefaces. Each
//! is refused on its own connection, over the unix socket (node 1) and TCP (node 2),
//! and the daemon keeps serving its other clients.

use std::time::Duration;

use rgfs_dlm::client::{JoinOptions, Lockspace, Transport};
use rgfs_dlm::engine::{Flags, Mode, Status};
use rgfs_dlm::proto as pb;

use crate::harness::{authenticated, Cluster, RawSession};

/// Expects a refusal mentioning `why`, then the end of the connection.
async fn expect_refused(raw: &mut RawSession, why: &str) {
    let refused = raw.recv_kind().await;
    assert!(matches!(refused, pb::server_message::Kind::Refused(ref r) if r.reason.contains(why)), "{why}: {refused:?}");
    assert!(raw.recv().await.is_none(), "{why}: the connection stays open");
}

/// A framed connection that has read its challenge.
async fn challenged(cluster: &Cluster, node: u32) -> RawSession {
    let mut raw = RawSession::open(cluster, node).await;
    assert!(matches!(raw.recv_kind().await, pb::server_message::Kind::Challenge(_)));
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_are_refused_and_the_daemon_keeps_serving() {
    let cluster = Cluster::start(Transport::Framed);
    for node in [1, 2] {
        let (before, _) = cluster.join(node, "frames").await;
        let (held, _) = before.lock(b"held across the garbage", Mode::EX, Flags::NONE).await.unwrap();

        let mut raw = challenged(&cluster, node).await;
        raw.write_bytes(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await.unwrap();
        expect_refused(&mut raw, "malformed message").await;

        let mut raw = challenged(&cluster, node).await;
        raw.write_bytes(&u32::MAX.to_be_bytes()).await.unwrap();
        expect_refused(&mut raw, "frame larger than").await;

        let mut raw = challenged(&cluster, node).await;
        raw.write_bytes(&[0, 0, 0, 50, 1, 2, 3]).await.unwrap();
        raw.shutdown().await;
        expect_refused(&mut raw, "middle of a frame").await;

        let mut raw = challenged(&cluster, node).await;
        raw.send(crate::ops_message(vec![])).await.unwrap();
        expect_refused(&mut raw, "first message must be a hello").await;

        let mut raw = authenticated(&cluster, node, "frames").await;
        raw.write_bytes(&[0, 0, 0, 2, 0x0a, 0xff]).await.unwrap();
        expect_refused(&mut raw, "malformed message").await;

        // A preface of another version of the framed protocol: closed at once.
        let mut raw = RawSession::connect_framed(&cluster.options(node).address).await;
        raw.write_bytes(b"RGFSDLM\x02").await.unwrap();
        assert!(raw.recv().await.is_none());

        // Neither framed nor HTTP/2: the gRPC server drops it.
        let mut raw = RawSession::connect_framed(&cluster.options(node).address).await;
        raw.write_bytes(b"GARBAGE!GARBAGE!GARBAGE!").await.unwrap();
        assert!(raw.recv().await.is_none());

        // Everyone else is still served: the session from before and a new one.
        let released = before.unlock(held, Flags::NONE, None).unwrap().await.unwrap();
        assert_eq!(released.status, Status::Unlocked);
        let (after, _) = cluster.join(node, "frames").await;
        let (_, granted) = after.lock(b"after the garbage", Mode::EX, Flags::NONE).await.unwrap();
        assert_eq!(granted.status, Status::Granted);
        let status = cluster.admin(node).await.status().await.unwrap();
        assert_eq!(status.refused_connections, 6, "node {node}");
    }
}

/// A framed client and a gRPC client of the same daemon contend for one lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framed_and_grpc_clients_share_a_lockspace() {
    let cluster = Cluster::start(Transport::Framed);
    let mut grpc_options = cluster.options(1);
    grpc_options.transport = Transport::Grpc;
    let (framed, mut blocking) = cluster.join(1, "mixed").await;
    let (grpc, _) = Lockspace::join(&grpc_options, "mixed", JoinOptions::default()).await.unwrap();
    let (lock, _) = framed.lock(b"shared", Mode::EX, Flags::NONE).await.unwrap();
    let waiting = grpc.request(b"shared", Mode::PR, Flags::NONE).unwrap();
    let callback = crate::within("the blocking callback", blocking.recv()).await.unwrap();
    assert_eq!((callback.lock, callback.mode), (lock, Mode::PR));
    framed.unlock(lock, Flags::NONE, None).unwrap().await.unwrap();
    let granted = crate::within("the gRPC client's grant", waiting).await.unwrap();
    assert_eq!((granted.status, granted.mode), (Status::Granted, Some(Mode::PR)));
}

/// A resource name that `node` masters.
fn name_mastered_by(ls: &Lockspace, node: u32, prefix: &str) -> Vec<u8> {
    (0..).map(|i| format!("{prefix} {i}").into_bytes()).find(|name| ls.master_of(name) == node).unwrap()
}

/// Runs `pairs` lock+unlock pairs one at a time on `name`.
async fn lock_unlock(ls: &Lockspace, name: &[u8], pairs: usize) {
    for _ in 0..pairs {
        let (lock, granted) = ls.lock(name, Mode::EX, Flags::NONE).await.unwrap();
        assert_eq!(granted.status, Status::Granted);
        ls.unlock(lock, Flags::NONE, None).unwrap().await.unwrap();
    }
}

/// Polling before sleeping (docs/dlm.md) ends: after a burst of one-at-a-time
/// operations, whose sessions poll (unless the machine is crowded, which pauses
/// polling: the socket tests in `proto/socket.rs` check the mechanism itself), the
/// daemons sit idle and use (almost) no CPU while the sessions stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_stop_polling() {
    let cluster = Cluster::start(Transport::Framed);
    let mut sessions = Vec::new();
    for node in [1, 2] {
        let (ls, _) = cluster.join(node, "idle").await;
        let name = name_mastered_by(&ls, node, "idle");
        lock_unlock(&ls, &name, 2000).await;
        sessions.push(ls);
    }
    let before = [cluster.daemon_cpu(1), cluster.daemon_cpu(2)];
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (i, node) in [1u32, 2].into_iter().enumerate() {
        let used = cluster.daemon_cpu(node) - before[i];
        assert!(used < Duration::from_millis(300), "node {node} used {used:?} of CPU in 2 s of idle sessions");
    }
    drop(sessions);
}

/// Polling is cooperative: with a window of one second, a daemon's single thread
/// still serves its other sessions while one polls, so clients contending for a
/// lock through the same daemon all get through (a poll that held the thread
/// would stall every other session for a second after each message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_session_does_not_hold_up_the_others() {
    let cluster = Cluster::start_with(Transport::Framed, "[tuning]\npoll_us = 1000000\n");
    assert_eq!(cluster.options(1).poll, Duration::from_secs(1), "clients read the window from the configuration");
    let (ls, _) = cluster.join(1, "coop").await;
    let name = name_mastered_by(&ls, 1, "coop");
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (client, _) = cluster.join(1, "coop").await;
        let name = name.clone();
        clients.push(tokio::spawn(async move { lock_unlock(&client, &name, 200).await }));
    }
    for client in clients {
        crate::within("200 pairs by each of 4 clients", client).await.unwrap();
    }
    let status = cluster.admin(1).await.status().await.unwrap();
    let coop = status.lockspaces.iter().find(|l| l.name == "coop").expect("lockspace coop");
    let grants = coop.counters.iter().find(|c| c.name == "grants").map(|c| c.value);
    assert!(grants >= Some(800), "{coop:?}");
    drop(ls);
}
