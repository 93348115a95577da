//! Model-based property test of the glock state machine: random
//! interleavings of holder requests and releases from several simulated
//! threads (try-locks among them), blocking callbacks with random modes at
//! random moments, lock manager replies delayed and sometimes refused, time
//! passing. The model keeps the holders and what the lock manager believes
//! this node holds; the invariants are checked after every step, and at the
//! end everything is let run to quiescence to check that nothing is lost.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;

use super::state::{compatible, covers, Action, Busy, HolderFlags, HolderId, Machine, Refusal, Reply};
use super::{DlmMode, GlockState};

/// The state a demote for `to` leaves (as the machine computes it).
fn demote_to(state: GlockState, to: GlockState) -> GlockState {
    if state.covers(to) {
        to
    } else {
        GlockState::Unlocked
    }
}

const THREADS: usize = 4;
const HOLD: Duration = Duration::from_millis(50);

#[derive(Clone, Debug)]
enum Op {
    Request { thread: usize, mode: GlockState, node_scope: bool, try_lock: bool, any: bool },
    Release { thread: usize },
    /// The lock manager answers: 0 grant, 1 try failed (if a try), 2 error.
    Reply { kind: u8 },
    Callback(DlmMode),
    DemoteDone,
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let mode = prop_oneof![Just(GlockState::Shared), Just(GlockState::Exclusive), Just(GlockState::Deferred)];
    let dlm = prop_oneof![Just(DlmMode::Ex), Just(DlmMode::Pr), Just(DlmMode::Cw)];
    prop_oneof![
        4 => (0..THREADS, mode, any::<bool>(), prop::bool::weighted(0.25), prop::bool::weighted(0.1)).prop_map(
            |(thread, mode, node_scope, try_lock, any)| Op::Request { thread, mode, node_scope, try_lock, any }
        ),
        3 => (0..THREADS).prop_map(|thread| Op::Release { thread }),
        3 => prop_oneof![8 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)].prop_map(|kind| Op::Reply { kind }),
        1 => dlm.prop_map(Op::Callback),
        2 => Just(Op::DemoteDone),
        1 => (0u64..80).prop_map(Op::Advance),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Waiting,
    Granted(GlockState),
}

#[derive(Clone, Copy, Debug)]
struct ModelHolder {
    thread: usize,
    mode: GlockState,
    flags: HolderFlags,
    status: Status,
}

struct World {
    m: Machine,
    now: Duration,
    holders: HashMap<HolderId, ModelHolder>,
    next_id: HolderId,
    /// What the lock manager believes we hold.
    module_state: GlockState,
    /// The request in flight: target and flags.
    request: Option<(GlockState, HolderFlags)>,
    demote_work: Option<(GlockState, GlockState)>,
    timers: Vec<Duration>,
    /// The weakest state a callback still asks for (not yet honoured).
    owed: Option<GlockState>,
    /// A try holder whose fate waits on the request in flight.
    try_in_flight: Option<HolderId>,
}

impl World {
    fn new() -> Self {
        World {
            m: Machine::new(HOLD),
            now: Duration::ZERO,
            holders: HashMap::new(),
            next_id: 1,
            module_state: GlockState::Unlocked,
            request: None,
            demote_work: None,
            timers: Vec::new(),
            owed: None,
            try_in_flight: None,
        }
    }

    fn apply(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Grant(id) => {
                    let h = self.holders.get_mut(&id).expect("grant of an unknown holder");
                    assert_eq!(h.status, Status::Waiting, "holder {id} granted twice");
                    h.status = Status::Granted(self.m.held_mode_of(h.mode, h.flags));
                    if self.try_in_flight == Some(id) {
                        self.try_in_flight = None;
                    }
                }
                Action::Refuse(id, r) => {
                    let h = self.holders.remove(&id).expect("refusal of an unknown holder");
                    assert_eq!(h.status, Status::Waiting, "refusal of a granted holder");
                    if r == Refusal::TryFailed {
                        assert!(h.flags.try_lock, "TryFailed for a holder that is not a try");
                    }
                    if self.try_in_flight == Some(id) {
                        self.try_in_flight = None;
                    }
                }
                Action::Request { to, flags } => {
                    assert!(self.request.is_none(), "two lock manager requests in flight");
                    assert!(self.demote_work.is_none(), "a request during demote work");
                    self.request = Some((to, flags));
                }
                Action::DemoteWork { from, to } => {
                    assert!(self.request.is_none() && self.demote_work.is_none(), "demote work while busy");
                    assert_eq!(from, self.module_state);
                    assert!(from.covers(to) && from != to, "demote {from:?} → {to:?} is no demote");
                    assert_eq!(self.granted().count(), 0, "demote work with holders granted");
                    self.demote_work = Some((from, to));
                }
                Action::Demoted { to } => {
                    if let Some(o) = self.owed {
                        if o.covers(to) || to == GlockState::Unlocked {
                            self.owed = None;
                        }
                    }
                }
                Action::Timer(due) => self.timers.push(due),
            }
        }
    }

    fn granted(&self) -> impl Iterator<Item = (GlockState, HolderFlags)> + '_ {
        self.holders.values().filter_map(|h| match h.status {
            Status::Granted(m) => Some((m, h.flags)),
            Status::Waiting => None,
        })
    }

    fn thread_holder(&self, t: usize) -> Option<(HolderId, ModelHolder)> {
        self.holders.iter().find(|(_, h)| h.thread == t).map(|(&id, &h)| (id, h))
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Request { thread, mode, node_scope, try_lock, any } => {
                if self.thread_holder(thread).is_some() {
                    return;
                }
                let id = self.next_id;
                self.next_id += 1;
                let flags = HolderFlags { try_lock, any, node_scope, noexp: false };
                self.holders.insert(id, ModelHolder { thread, mode, flags, status: Status::Waiting });
                let out = self.m.request(id, mode, flags);
                self.apply(out);
                // Try-locks never wait for other holders or a demote: resolved
                // now, or only the no-queue request is outstanding.
                if try_lock && self.holders.get(&id).is_some_and(|h| h.status == Status::Waiting) {
                    assert!(
                        matches!(self.m.busy(), Busy::Promoting { try_lock: true, .. })
                            && self.request.is_some_and(|(_, f)| f.try_lock),
                        "a try holder waits without a no-queue request of its own"
                    );
                    self.try_in_flight = Some(id);
                }
            }
            Op::Release { thread } => {
                let Some((id, h)) = self.thread_holder(thread) else { return };
                match h.status {
                    Status::Granted(held) => {
                        self.holders.remove(&id);
                        let out = self.m.release(held, h.flags.node_scope);
                        self.apply(out);
                    }
                    Status::Waiting => {
                        let (queued, out) = self.m.cancel(id);
                        assert!(queued, "a waiting holder is not queued");
                        self.holders.remove(&id);
                        if self.try_in_flight == Some(id) {
                            self.try_in_flight = None;
                        }
                        self.apply(out);
                    }
                }
            }
            Op::Reply { kind } => {
                let Some((to, flags)) = self.request.take() else { return };
                let demoting = matches!(self.m.busy(), Busy::Demoting { .. });
                let reply = match kind {
                    1 if flags.try_lock => Reply::TryFailed,
                    2 if !demoting => Reply::Failed("refused".into()),
                    _ => {
                        // With ANY the manager may hand out the other shared mode.
                        let granted = if flags.any && to == GlockState::Shared { GlockState::Deferred } else { to };
                        self.module_state = granted;
                        Reply::Granted(granted)
                    }
                };
                let out = self.m.reply(reply, self.now);
                // The state changes only here: a demand met by the new state
                // is honoured, even if a new request follows at once.
                if let Some(o) = self.owed {
                    if demote_to(self.m.state(), o) == self.m.state() {
                        self.owed = None;
                    }
                }
                self.apply(out);
                assert!(self.try_in_flight.is_none(), "a try holder outlived its request's reply");
            }
            Op::Callback(mode) => {
                let to = GlockState::demote_target(mode);
                let state = self.m.state();
                let needs = demote_to(state, to) != state;
                if needs || self.request.is_some() {
                    self.owed = Some(match self.owed {
                        Some(o) if o != to => GlockState::Unlocked,
                        _ => to,
                    });
                }
                let out = self.m.callback(to, self.now);
                self.apply(out);
            }
            Op::DemoteDone => {
                if self.demote_work.take().is_some() {
                    let out = self.m.demote_done(Ok(()));
                    self.apply(out);
                }
            }
            Op::Advance(ms) => {
                self.now += Duration::from_millis(ms);
                let due: Vec<Duration> = self.timers.iter().copied().filter(|&t| t <= self.now).collect();
                self.timers.retain(|&t| t > self.now);
                for _ in due {
                    let out = self.m.timer(self.now);
                    self.apply(out);
                }
            }
        }
        // A demand is met once the state is compatible with it, whether a
        // demote or a later grant got it there.
        if let (Some(o), None) = (self.owed, self.request) {
            if demote_to(self.m.state(), o) == self.m.state() {
                self.owed = None;
            }
        }
        self.check();
    }

    fn check(&self) {
        let granted: Vec<_> = self.granted().collect();
        assert_eq!(self.m.holders() as usize, granted.len(), "holder count differs from the model");
        for (i, &(a, fa)) in granted.iter().enumerate() {
            assert!(covers(self.m.state(), a, fa), "holder in {a:?} not covered by {:?}", self.m.state());
            for &(b, fb) in &granted[i + 1..] {
                assert!(compatible((a, fa.node_scope), (b, fb.node_scope)), "incompatible holders {a:?} and {b:?}");
            }
        }
        if matches!(self.m.busy(), Busy::Syncing { .. } | Busy::Demoting { .. }) {
            assert!(granted.is_empty(), "holders granted during a demote");
        }
        if self.request.is_none() {
            assert_eq!(self.m.state(), self.module_state, "the lock manager and the glock disagree");
        }
        let waiting = self.holders.values().filter(|h| h.status == Status::Waiting).count();
        assert_eq!(self.m.waiting(), waiting, "queued holders differ from the model");
    }

    /// Everyone releases, the lock manager grants everything, time passes:
    /// every waiter must be granted, every callback honoured.
    fn quiesce(&mut self) {
        for _ in 0..200 {
            let granted: Vec<usize> =
                self.holders.values().filter(|h| matches!(h.status, Status::Granted(_))).map(|h| h.thread).collect();
            for t in granted {
                self.step(&Op::Release { thread: t });
            }
            if self.request.is_some() {
                self.step(&Op::Reply { kind: 0 });
            }
            self.step(&Op::DemoteDone);
            self.step(&Op::Advance(HOLD.as_millis() as u64 + 1));
            if self.holders.is_empty() && self.m.is_settled() && self.request.is_none() && self.demote_work.is_none() {
                break;
            }
        }
        assert!(self.holders.is_empty(), "lost wake-up: holders left waiting: {:?}", self.holders);
        if self.m.failure().is_none() {
            assert!(self.m.is_settled(), "not settled: {:?}", self.m);
            let state = self.m.state();
            let honoured = self.owed.is_none_or(|o| demote_to(state, o) == state);
            assert!(honoured, "a callback for {:?} was never honoured (state {state:?})", self.owed);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn glock_machine_matches_the_model(ops in prop::collection::vec(op(), 1..80)) {
        let mut w = World::new();
        for op in &ops {
            w.step(op);
        }
        w.quiesce();
    }
}
