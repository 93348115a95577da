//! Multi-process tests: three real `rgfs-dlmd` daemons on 127.0.0.1 and real clients
//! (the client library, the `rgfs-dlm` CLI, and raw sessions for bad input). Every
//! test runs over both client transports (`framed::*`, `grpc::*`); `framed_only.rs`
//! has what only the framed transport can be sent.

mod framed_only;
mod harness;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use harness::{within, Cluster, RawSession};
use rgfs_dlm::client::{ClientError, ConnectOptions, JoinOptions, Lockspace, Transport};
use rgfs_dlm::cluster::auth::ClusterKey;
use rgfs_dlm::engine::{Flags, Mode, SbFlags, Status};
use rgfs_dlm::proto as pb;

/// R1 EX excludes everything: many clients on all nodes increment a counter kept
/// in a file, read-modify-write under an EX lock; no two are ever inside together and
/// no increment is lost.
async fn ex_holders_never_overlap(transport: Transport) {
    let cluster = Cluster::start(transport);
    let counter_path = cluster.dir.path().join("counter");
    std::fs::write(&counter_path, "0").unwrap();
    let inside = Arc::new(AtomicU32::new(0));
    const CLIENTS: u32 = 6;
    const ROUNDS: u32 = 25;
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let (ls, _blocking) = cluster.join(client % 3 + 1, "counter").await;
        let (inside, path) = (inside.clone(), counter_path.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let (lock, granted) = ls.lock(b"the counter", Mode::EX, Flags::NONE).await.expect("lock");
                assert_eq!(granted.status, Status::Granted);
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two EX holders at once");
                let value: u64 = std::fs::read_to_string(&path).unwrap().trim().parse().unwrap();
                tokio::task::yield_now().await;
                std::fs::write(&path, (value + 1).to_string()).unwrap();
                inside.fetch_sub(1, Ordering::SeqCst);
                let released = ls.unlock(lock, Flags::NONE, None).unwrap().await.expect("unlock");
                assert_eq!(released.status, Status::Unlocked);
            }
        }));
    }
    for task in tasks {
        within("the counting clients", task).await.unwrap();
    }
    let total: u32 = std::fs::read_to_string(&counter_path).unwrap().trim().parse().unwrap();
    assert_eq!(total, CLIENTS * ROUNDS);
}

/// R5 A holder gets a blocking callback carrying the mode of the request that
/// waits behind it; when it lets go, the waiter is granted.
async fn holder_receives_blocking_callback_when_a_conflicting_request_waits(transport: Transport) {
    let cluster = Cluster::start(transport);
    let (holder, mut blocking) = cluster.join(1, "bast").await;
    let (waiter, _) = cluster.join(2, "bast").await;
    let (lock, granted) = holder.lock(b"shared file", Mode::EX, Flags::NONE).await.unwrap();
    assert_eq!(granted.mode, Some(Mode::EX));
    let pending = waiter.request(b"shared file", Mode::PR, Flags::NONE).unwrap();
    let callback = within("the blocking callback", blocking.recv()).await.expect("blocking channel open");
    assert_eq!((callback.lock, callback.mode), (lock, Mode::PR));
    let demoted = holder.convert(lock, Mode::PR, Flags::NONE, None).unwrap().await.unwrap();
    assert_eq!((demoted.status, demoted.mode), (Status::Granted, Some(Mode::PR)));
    let waiter_granted = within("the waiter's grant", pending).await.unwrap();
    assert_eq!((waiter_granted.status, waiter_granted.mode), (Status::Granted, Some(Mode::PR)));
}

/// R4 The LVB written by a down-conversion from EX is what the next
/// up-conversion reads, on the writer's node and on another node.
async fn lvb_written_on_down_conversion_is_read_by_the_next_up_conversion(transport: Transport) {
    let cluster = Cluster::start(transport);
    let (writer, _) = cluster.join(2, "lvb").await;
    let (reader, _) = cluster.join(3, "lvb").await;
    let (lock, first) = writer.lock(b"rgrp 7", Mode::EX, Flags::VALBLK).await.unwrap();
    assert_eq!(first.lvb.as_ref().map(|l| (l.seq, l.valid)), Some((0, true)));
    let value: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(7)).collect();
    let down = writer.convert(lock, Mode::NL, Flags::VALBLK, Some(&value)).unwrap().await.unwrap();
    assert_eq!(down.mode, Some(Mode::NL));
    let up = writer.convert(lock, Mode::PR, Flags::VALBLK, None).unwrap().await.unwrap();
    let lvb = up.lvb.expect("an up-conversion with VALBLK returns the LVB");
    assert_eq!((lvb.bytes.as_slice(), lvb.seq, lvb.valid), (value.as_slice(), 1, true));
    let (_, other) = reader.lock(b"rgrp 7", Mode::PR, Flags::VALBLK).await.unwrap();
    assert_eq!(other.lvb.map(|l| l.bytes), Some(value));
}

/// R3 NOQUEUE is refused while a conflicting lock is held, through the library
/// and through `rgfs-dlm lock --noqueue` (exit code 3); granted once it is released.
async fn noqueue_is_refused_while_a_conflicting_lock_is_held(transport: Transport) {
    let cluster = Cluster::start(transport);
    let (holder, _) = cluster.join(1, "try").await;
    let (other, _) = cluster.join(3, "try").await;
    let (lock, _) = holder.lock(b"journal 0", Mode::EX, Flags::NONE).await.unwrap();
    let (_, refused) = other.lock(b"journal 0", Mode::PR, Flags::NOQUEUE).await.unwrap();
    assert_eq!((refused.status, refused.mode), (Status::TryAgain, None));
    let cli = |node: u32| {
        let mut command = cluster.cli(node);
        command.args(["lock", "try", "journal 0", "EX", "--noqueue"]).stdout(Stdio::null()).stderr(Stdio::null());
        command
    };
    let status = tokio::task::spawn_blocking({
        let mut command = cli(2);
        move || command.status().unwrap()
    });
    assert_eq!(within("rgfs-dlm lock", status).await.unwrap().code(), Some(3));
    holder.unlock(lock, Flags::NONE, None).unwrap().await.unwrap();
    let status = tokio::task::spawn_blocking({
        let mut command = cli(2);
        move || command.status().unwrap()
    });
    assert_eq!(within("rgfs-dlm lock", status).await.unwrap().code(), Some(0));
}

/// R2 Waiters are granted in the order their requests reached the master, across
/// clients on different nodes.
async fn waiters_are_granted_in_fifo_order(transport: Transport) {
    let cluster = Cluster::start(transport);
    let name = b"directory 1";
    let (holder, _) = cluster.join(1, "fifo").await;
    let master = holder.master_of(name);
    let (lock, _) = holder.lock(name, Mode::EX, Flags::NONE).await.unwrap();
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (index, node) in [2u32, 3, 1, 2].into_iter().enumerate() {
        let (ls, _) = cluster.join(node, "fifo").await;
        let pending = ls.request(name, Mode::EX, Flags::NONE).unwrap();
        let handle = pending.lock;
        cluster
            .wait_for_dump(master, "fifo", "the request to be queued", |d| {
                d.resources.iter().any(|r| r.name == name && r.waiting.len() == index + 1)
            })
            .await;
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            let granted = pending.await.unwrap();
            assert_eq!(granted.status, Status::Granted);
            order.lock().push(index);
            ls.unlock(handle, Flags::NONE, None).unwrap().await.unwrap();
        }));
    }
    holder.unlock(lock, Flags::NONE, None).unwrap().await.unwrap();
    for task in tasks {
        within("the waiters", task).await.unwrap();
    }
    assert_eq!(*order.lock(), vec![0, 1, 2, 3]);
}

/// R6 Two PR holders converting to EX: the second conversion is refused with a
/// deadlock and keeps PR; with CONVDEADLK it is demoted to NL and goes through.
async fn conversion_deadlock_is_detected(transport: Transport) {
    let cluster = Cluster::start(transport);
    let (a, _) = cluster.join(1, "deadlock").await;
    let (b, mut b_blocking) = cluster.join(2, "deadlock").await;
    let (lock_a, _) = a.lock(b"inode 9", Mode::PR, Flags::NONE).await.unwrap();
    let (lock_b, _) = b.lock(b"inode 9", Mode::PR, Flags::NONE).await.unwrap();
    let a_up = a.convert(lock_a, Mode::EX, Flags::NONE, None).unwrap();
    // A's conversion is queued once B, in its way, is told about it.
    let callback = within("B's blocking callback", b_blocking.recv()).await.unwrap();
    assert_eq!(callback.mode, Mode::EX);
    let refused = b.convert(lock_b, Mode::EX, Flags::NONE, None).unwrap().await.unwrap();
    assert_eq!((refused.status, refused.mode), (Status::Deadlock, Some(Mode::PR)));
    let demoted = b.convert(lock_b, Mode::EX, Flags::CONVDEADLK, None).unwrap();
    let a_granted = within("A's conversion", a_up).await.unwrap();
    assert_eq!((a_granted.status, a_granted.mode), (Status::Granted, Some(Mode::EX)));
    a.unlock(lock_a, Flags::NONE, None).unwrap().await.unwrap();
    let b_granted = within("B's conversion", demoted).await.unwrap();
    assert_eq!((b_granted.status, b_granted.mode), (Status::Granted, Some(Mode::EX)));
    assert!(b_granted.sb_flags.contains(SbFlags::DEMOTED));
}

/// R7 Resources are mastered on each of the three daemons, each where the
/// mastering function says.
async fn resources_are_mastered_on_each_daemon(transport: Transport) {
    let cluster = Cluster::start(transport);
    let (ls, _) = cluster.join(1, "spread").await;
    let names: Vec<Vec<u8>> = (0..60).map(|i| format!("inode {i}").into_bytes()).collect();
    for name in &names {
        let (_, granted) = ls.lock(name, Mode::NL, Flags::NONE).await.unwrap();
        assert_eq!(granted.status, Status::Granted);
    }
    let mut seen = 0;
    for node in 1..=3 {
        let dump = cluster.admin(node).await.lockdump("spread").await.unwrap();
        assert!(!dump.resources.is_empty(), "node {node} masters nothing");
        for resource in &dump.resources {
            assert_eq!(ls.master_of(&resource.name), node, "{:?} is on the wrong master", resource.name);
            assert_eq!(resource.granted.len(), 1);
        }
        seen += dump.resources.len();
    }
    assert_eq!(seen, names.len());
}

/// A client killed with SIGKILL loses its locks and the waiters behind them are
/// granted: a client of the unix socket (node 1) and one of TCP (node 2).
async fn killed_client_releases_its_locks_and_waiters_are_granted(transport: Transport) {
    let cluster = Cluster::start(transport);
    for (node, lockspace) in [(1, "killed-unix"), (2, "killed-tcp")] {
        let mut child = harness::KillOnDrop(
            cluster
                .cli(node)
                .args(["lock", lockspace, "journal 3", "EX", "--hold-ms", "600000"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let child = &mut child.0;
        let (line_tx, mut line_rx) = tokio::sync::mpsc::unbounded_channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = line_tx.send(line);
            }
        });
        assert_eq!(within("the CLI's grant", line_rx.recv()).await.as_deref(), Some("granted journal 3 EX"));
        let (waiter, _) = cluster.join(3, lockspace).await;
        let pending = waiter.request(b"journal 3", Mode::EX, Flags::NONE).unwrap();
        assert_eq!(within("the CLI's blocking callback", line_rx.recv()).await.as_deref(), Some("blocking journal 3 EX"));
        child.kill().unwrap();
        child.wait().unwrap();
        let granted = within("the waiter's grant", pending).await.unwrap();
        assert_eq!((granted.status, granted.mode), (Status::Granted, Some(Mode::EX)));
        let status = cluster.admin(node).await.status().await.unwrap();
        let counters = &status.lockspaces.iter().find(|l| l.name == lockspace).unwrap().counters;
        assert_eq!(counters.iter().find(|c| c.name == "purged").map(|c| c.value), Some(1), "node {node}");
    }
}

/// Dropping the last clone of a `Lockspace` ends its session: the daemon releases
/// its locks and the waiter behind them is granted (unix socket client, node 1).
async fn dropping_a_lockspace_releases_its_locks(transport: Transport) {
    let cluster = Cluster::start(transport);
    let (holder, _blocking) = cluster.join(1, "dropped").await;
    let (_, granted) = holder.lock(b"inode 5", Mode::EX, Flags::NONE).await.unwrap();
    assert_eq!(granted.status, Status::Granted);
    let (waiter, _) = cluster.join(2, "dropped").await;
    let pending = waiter.request(b"inode 5", Mode::EX, Flags::NONE).unwrap();
    let master = waiter.master_of(b"inode 5");
    cluster.wait_for_dump(master, "dropped", "the request to wait", |d| d.resources.iter().any(|r| r.waiting.len() == 1)).await;
    drop(holder);
    let granted = within("the waiter's grant", pending).await.unwrap();
    assert_eq!((granted.status, granted.mode), (Status::Granted, Some(Mode::EX)));
}

/// A client with the wrong key is refused before anything else and counted.
async fn client_with_the_wrong_key_is_refused(transport: Transport) {
    let cluster = Cluster::start(transport);
    let mut options: ConnectOptions = cluster.options(2);
    options.key = ClusterKey::new(vec![42; 32]).unwrap();
    let refused = within("the refusal", Lockspace::join(&options, "secure", JoinOptions::default())).await;
    assert!(matches!(refused, Err(ClientError::Refused(ref r)) if r.contains("authentication")), "{:?}", refused.err());
    let status = cluster.admin(2).await.status().await.unwrap();
    assert_eq!(status.refused_connections, 1);
    assert!(status.lockspaces.iter().all(|l| l.name != "secure"), "a refused client created a lockspace");
}

/// Malformed and out-of-order messages are answered with errors and the daemon keeps
/// serving everyone, the misbehaving client included.
async fn bad_input_is_answered_with_errors_and_the_daemon_keeps_serving(transport: Transport) {
    let cluster = Cluster::start(transport);

    // A session whose first message is not a hello is refused.
    let mut raw = RawSession::open(&cluster, 3).await;
    assert!(matches!(raw.recv_kind().await, pb::server_message::Kind::Challenge(_)));
    raw.send(ops_message(vec![])).await.unwrap();
    let refused = raw.recv_kind().await;
    assert!(matches!(refused, pb::server_message::Kind::Refused(_)), "{refused:?}");

    // An authenticated session sending garbage gets one error per operation.
    let mut raw = harness::authenticated(&cluster, 3, "bad").await;
    let request_with = |id: u64, name: &[u8], mode: i32, flags: u32| pb::Op {
        kind: Some(pb::op::Kind::Request(pb::LockRequest { client_lock_id: id, name: name.to_vec(), mode, flags, lvb: vec![] })),
    };
    let request = |id: u64, name: &[u8], mode: i32| request_with(id, name, mode, 0);
    let bad = vec![
        request(1, &[b'x'; 65], 5),
        request(2, b"ok", 9),
        request(3, b"", 5),
        pb::Op { kind: Some(pb::op::Kind::Convert(pb::ConvertRequest { client_lock_id: 77, mode: 0, flags: 0, lvb: vec![] })) },
        request(4, b"ok", 5),
        pb::Op { kind: Some(pb::op::Kind::Convert(pb::ConvertRequest { client_lock_id: 4, mode: 0, flags: 0, lvb: vec![1; 5] })) },
        pb::Op { kind: Some(pb::op::Kind::Purge(pb::PurgeRequest { client_lock_id: 4 })) },
        request_with(5, b"ok2", 5, 0x8000_0000),
        pb::Op { kind: None },
    ];
    raw.send(ops_message(bad)).await.unwrap();
    let mut failures = std::collections::BTreeMap::new();
    let mut grants = 0;
    while failures.len() < 8 || grants < 1 {
        let pb::server_message::Kind::Events(batch) = raw.recv_kind().await else { continue };
        for event in batch.events {
            match event.kind {
                Some(pb::event::Kind::Failed(f)) => {
                    failures.insert(f.client_lock_id * 10 + u64::from(f.op as u32), f.error);
                }
                Some(pb::event::Kind::Completion(c)) if c.status == pb::Status::Granted as i32 => grants += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let code = |id: u64, op: pb::OpKind| failures.get(&(id * 10 + op as u64)).map(String::as_str);
    assert_eq!(code(1, pb::OpKind::OpRequest), Some("bad-name"));
    assert_eq!(code(2, pb::OpKind::OpRequest), Some("invalid"));
    assert_eq!(code(3, pb::OpKind::OpRequest), Some("bad-name"));
    assert_eq!(code(77, pb::OpKind::OpConvert), Some("unknown-lock"));
    assert_eq!(code(4, pb::OpKind::OpConvert), Some("bad-lvb"));
    assert_eq!(code(4, pb::OpKind::OpPurge), Some("protocol"));
    assert_eq!(code(5, pb::OpKind::OpRequest), Some("invalid"));
    assert_eq!(code(0, pb::OpKind::OpRequest), Some("protocol"));

    // Everyone, including the misbehaving session, is still served.
    let (ls, _) = cluster.join(3, "bad").await;
    let (_, granted) = ls.lock(b"after the garbage", Mode::EX, Flags::NONE).await.unwrap();
    assert_eq!(granted.status, Status::Granted);
    raw.send(ops_message(vec![request(6, b"still here", 3)])).await.unwrap();
    loop {
        let pb::server_message::Kind::Events(batch) = raw.recv_kind().await else { continue };
        if batch.events.iter().any(|e| matches!(&e.kind, Some(pb::event::Kind::Completion(c)) if c.client_lock_id == 6)) {
            break;
        }
    }
}

/// A dead master does not stop the others: its resources fail as `unreachable`
/// (until the recovery issue remasters them), everything else keeps working.
async fn a_dead_master_fails_its_operations_and_the_rest_keeps_working(transport: Transport) {
    let mut cluster = Cluster::start(transport);
    let (ls, _) = cluster.join(1, "dead").await;
    let name_on = |node: u32| (0..).map(|i| format!("inode {i}").into_bytes()).find(|n| ls.master_of(n) == node).unwrap();
    let (held, _) = ls.lock(&name_on(3), Mode::EX, Flags::NONE).await.unwrap();
    cluster.kill_node(3);
    let mut admin = cluster.admin(1).await;
    within("node 1 to see the link to node 3 go down", async {
        while admin.status().await.unwrap().peers.iter().any(|p| p.node_id == 3 && p.outgoing_connected) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let other_on_3 = (0..).map(|i| format!("file {i}").into_bytes()).find(|n| ls.master_of(n) == 3).unwrap();
    let failed = within("the refusal", ls.lock(&other_on_3, Mode::EX, Flags::NONE)).await;
    assert!(matches!(failed, Err(ClientError::Op { ref code, .. }) if code == "unreachable"), "{failed:?}");
    let unlock = within("the unlock refusal", ls.unlock(held, Flags::NONE, None).unwrap()).await;
    assert!(matches!(unlock, Err(ClientError::Op { ref code, .. }) if code == "unreachable"), "{unlock:?}");
    for node in [1, 2] {
        let (_, granted) = within("a lock mastered on a live node", ls.lock(&name_on(node), Mode::EX, Flags::NONE)).await.unwrap();
        assert_eq!(granted.status, Status::Granted);
    }
}

/// Waits until `node` sees its outgoing link to `peer` in state `up`.
async fn wait_for_link(cluster: &Cluster, node: u32, peer: u32, up: bool) {
    let mut admin = cluster.admin(node).await;
    within(&format!("node {node} to see its link to node {peer} {}", if up { "up" } else { "down" }), async {
        while !admin.status().await.unwrap().peers.iter().any(|p| p.node_id == peer && p.outgoing_connected == up) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Issue 15, first defect: a master daemon killed and restarted comes back as a new
/// incarnation that grants nothing it masters until the holders re-sent their locks.
/// A's EX lock survives the restart (still blocking, usable, unlockable), a NOQUEUE EX
/// from node 3 is refused, and node 3's queued request is granted once A unlocks.
async fn a_restarted_master_rebuilds_the_locks_its_peers_hold(transport: Transport) {
    let mut cluster = Cluster::start(transport);
    let (a, mut a_blocking) = cluster.join(1, "restart").await;
    let name = (0..).map(|i| format!("r{i}").into_bytes()).find(|n| a.master_of(n) == 2).unwrap();
    let (held, granted) = within("A's lock", a.lock(&name, Mode::EX, Flags::NONE)).await.unwrap();
    assert_eq!(granted.status, Status::Granted);
    // A second lock of A, kept at PR after writing the LVB: the rebuild carries the value.
    let lvb_name = (0..).map(|i| format!("lvb{i}").into_bytes()).find(|n| a.master_of(n) == 2).unwrap();
    let (with_lvb, _) = within("A's LVB lock", a.lock(&lvb_name, Mode::EX, Flags::VALBLK)).await.unwrap();
    let value = [0x5a; 32];
    let written = within("A's LVB write", a.convert(with_lvb, Mode::PR, Flags::VALBLK, Some(&value[..])).unwrap()).await.unwrap();
    assert_eq!(written.status, Status::Granted);
    cluster.kill_node(2);
    wait_for_link(&cluster, 1, 2, false).await;
    wait_for_link(&cluster, 3, 2, false).await;
    cluster.restart_node(2);
    wait_for_link(&cluster, 3, 2, true).await;

    // The exact report: `rgfs-dlm --node-id 3 lock LS NAME EX --noqueue` must not grant.
    let output = tokio::task::spawn_blocking({
        let mut command = cluster.cli(3);
        command.args(["lock", "restart", std::str::from_utf8(&name).unwrap(), "EX", "--noqueue"]);
        move || command.output().unwrap()
    });
    let output = within("rgfs-dlm lock --noqueue on node 3", output).await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("granted"), "granted while A holds it: {stdout}\nnode 2: {}", cluster.log(2));
    assert_eq!(output.status.code(), Some(3), "{stdout} {}", String::from_utf8_lossy(&output.stderr));

    // A's lock is still held where it is mastered: a waiter from node 3 makes node 2 call A back.
    let (waiter, _) = cluster.join(3, "restart").await;
    let (_, read) = within("a PR reader of the LVB", waiter.lock(&lvb_name, Mode::PR, Flags::VALBLK)).await.unwrap();
    let lvb = read.lvb.clone().expect("VALBLK returns the LVB");
    assert_eq!((lvb.bytes.as_slice(), lvb.seq, lvb.valid), (&value[..], 1, true), "{read:?}");
    let pending = waiter.request(&name, Mode::EX, Flags::NONE).unwrap();
    let blocking = within("the blocking callback to A", a_blocking.recv()).await.unwrap();
    assert_eq!((blocking.lock, blocking.mode), (held, Mode::EX));
    wait_for_link(&cluster, 1, 2, true).await;
    let down = within("A's down-conversion", a.convert(held, Mode::PR, Flags::NONE, None).unwrap()).await.unwrap();
    assert_eq!((down.status, down.mode), (Status::Granted, Some(Mode::PR)));
    let unlocked = within("A's unlock", a.unlock(held, Flags::NONE, None).unwrap()).await.unwrap();
    assert_eq!(unlocked.status, Status::Unlocked);
    let completion = within("node 3's lock after A's unlock", pending).await.unwrap();
    assert_eq!((completion.status, completion.mode), (Status::Granted, Some(Mode::EX)));
    assert!(cluster.log(1).contains("node restarted (new incarnation)"), "{}", cluster.log(1));
    let status = within("node 2's status", cluster.admin(2).await.status()).await.unwrap();
    assert!(!status.recovering && status.awaiting_rebuild.is_empty(), "{status:?}");
    let output = tokio::task::spawn_blocking({
        let mut command = cluster.cli(2);
        command.arg("status");
        move || command.output().unwrap()
    });
    let text = String::from_utf8(within("rgfs-dlm status", output).await.unwrap().stdout).unwrap();
    assert!(text.contains(" recovery done"), "{text}");
}

/// R2 Cancel through the library: a waiting request completes with `Cancelled`
/// and its cancel reports `true`; cancelling a granted lock reports `false`. The
/// counters of `rgfs-dlm status` show what happened.
async fn cancel_and_status_counters(transport: Transport) {
    let cluster = Cluster::start(transport);
    let (holder, _) = cluster.join(2, "cancel").await;
    let (waiter, _) = cluster.join(1, "cancel").await;
    let (lock, _) = holder.lock(b"rename lock", Mode::EX, Flags::NONE).await.unwrap();
    let pending = waiter.request(b"rename lock", Mode::EX, Flags::NONE).unwrap();
    let waiting = pending.lock;
    let cancelled = within("the cancel", waiter.cancel(waiting).unwrap()).await.unwrap();
    assert!(cancelled);
    let completion = within("the cancelled request", pending).await.unwrap();
    assert_eq!((completion.status, completion.mode), (Status::Cancelled, None));
    assert!(!within("a cancel with nothing to cancel", holder.cancel(lock).unwrap()).await.unwrap());

    let output = tokio::task::spawn_blocking({
        let mut command = cluster.cli(1);
        command.arg("status");
        move || command.output().unwrap()
    });
    let output = within("rgfs-dlm status", output).await.unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("lockspace cancel lvb_len 32 sessions 1 held_locks 0"), "{text}");
    assert!(text.contains("requests 1 ") && text.contains("cancels 1 ") && text.contains("grants 0 "), "{text}");
    assert!(text.contains("peer node 2 n2") && text.contains("outgoing up"), "{text}");
}

/// A stream that never says hello is refused after `hello_timeout_ms`, and counted.
async fn a_silent_connection_is_refused_after_the_hello_timeout(transport: Transport) {
    let cluster = Cluster::start_with(transport, "[limits]\nhello_timeout_ms = 300\n");
    let mut raw = RawSession::open(&cluster, 2).await;
    assert!(matches!(raw.recv_kind().await, pb::server_message::Kind::Challenge(_)));
    let refused = raw.recv_kind().await;
    assert!(matches!(refused, pb::server_message::Kind::Refused(ref r) if r.reason.contains("hello")), "{refused:?}");
    assert!(raw.recv().await.is_none());
    assert_eq!(cluster.admin(2).await.status().await.unwrap().refused_connections, 1);
}

pub fn ops_message(ops: Vec<pb::Op>) -> pb::ClientMessage {
    pb::ClientMessage { kind: Some(pb::client_message::Kind::Ops(pb::OpBatch { ops })) }
}

over_both_transports!(
    ex_holders_never_overlap,
    holder_receives_blocking_callback_when_a_conflicting_request_waits,
    lvb_written_on_down_conversion_is_read_by_the_next_up_conversion,
    noqueue_is_refused_while_a_conflicting_lock_is_held,
    waiters_are_granted_in_fifo_order,
    conversion_deadlock_is_detected,
    resources_are_mastered_on_each_daemon,
    killed_client_releases_its_locks_and_waiters_are_granted,
    dropping_a_lockspace_releases_its_locks,
    client_with_the_wrong_key_is_refused,
    bad_input_is_answered_with_errors_and_the_daemon_keeps_serving,
    a_dead_master_fails_its_operations_and_the_rest_keeps_working,
    a_restarted_master_rebuilds_the_locks_its_peers_hold,
    cancel_and_status_counters,
    a_silent_connection_is_refused_after_the_hello_timeout,
);
