//! The state machine of one glock, pure: events in (holder requests and
//! releases, lock manager replies, blocking callbacks, timer expiries, the
//! end of demote work), actions out (ask the lock manager for a state, start
//! demote work, wake a holder, arm a timer). No I/O, no threads, no clock:
//! the caller passes the time. `table.rs` drives one machine per glock.
//!
//! It follows the kernel's glock rules (`docs/glocks.md`):
//! - holders are granted strictly in queue order; a holder is granted when
//!   the glock's state covers its mode and it is compatible with every
//!   granted holder;
//! - at most one lock manager request or demote is in flight per glock;
//! - a demote asked for by a blocking callback waits for the granted holders
//!   to drop, and once it is due no new holder is granted before it is done
//!   (the other node gets its turn);
//! - the minimum hold time: a callback that arrives while holders are queued
//!   or granted is honoured no earlier than `min_hold` after the last state
//!   change (or `min_hold` from now while a request is in flight);
//! - a try holder never waits for another holder or a demote: it is granted
//!   or failed at once, or, when only the lock manager stands between it and
//!   the grant, by the reply to its own (no-queue) request.
//!
//! Invariants (checked by the property test in `proptests.rs`): granted
//! holders are pairwise compatible and covered by the state; the state never
//! leaves a mode while a granted holder needs it; after a reply every holder
//! that can be granted is.

use std::collections::VecDeque;
use std::time::Duration;

use super::GlockState;

/// A holder request's identity, unique per table.
pub type HolderId = u64;

/// Holder flags, named for the kernel's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HolderFlags {
    /// LM_FLAG_TRY: fail instead of waiting for other holders or a demote;
    /// the lock manager request is made without queueing (NOQUEUE).
    pub try_lock: bool,
    /// LM_FLAG_ANY: any state but UN will do (SH or DF).
    pub any: bool,
    /// LM_FLAG_NODE_SCOPE: the caller serialises local users itself, so
    /// node-scope holders share the glock in any mode (rgfs: the core mutex).
    pub node_scope: bool,
    /// LM_FLAG_NOEXP: may be granted while the lock manager holds ordinary
    /// requests back for journal recovery (passed on to the lock module).
    pub noexp: bool,
}

/// Why a holder was not granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A try holder that would have had to wait.
    TryFailed,
    /// The lock manager failed, or this glock failed earlier.
    Error(String),
}

/// The lock manager's answer to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Granted in this state (with `any`, SH may come back as DF).
    Granted(GlockState),
    /// A no-queue request met a conflicting lock elsewhere.
    TryFailed,
    /// The request failed.
    Failed(String),
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Ask the lock manager to move this glock from its state to `to`.
    Request { to: GlockState, flags: HolderFlags },
    /// Write back (and for `to` weaker than SH, forget) what is cached
    /// under `from`; report with [`Machine::demote_done`].
    DemoteWork { from: GlockState, to: GlockState },
    /// The lock manager confirmed a demote to `to` (the kernel's caches may
    /// now be invalidated without blocking any holder).
    Demoted { to: GlockState },
    /// Holder `id` is granted.
    Grant(HolderId),
    /// Holder `id` is refused.
    Refuse(HolderId, Refusal),
    /// Call [`Machine::timer`] at (or after) this time.
    Timer(Duration),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Waiter {
    id: HolderId,
    mode: GlockState,
    flags: HolderFlags,
}

/// What is in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Busy {
    Idle,
    /// A request for a stronger state, for the first waiter.
    Promoting { to: GlockState, try_lock: bool },
    /// Demote work runs (the fs's write-back).
    Syncing { to: GlockState },
    /// The lock manager is converting down to `to`.
    Demoting { to: GlockState },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Demote {
    to: GlockState,
    /// Due: honoured as soon as the granted holders have dropped.
    ready: bool,
    due: Duration,
}

/// Granted holders, counted per (mode, node scope): taking a holder on a
/// cached compatible glock is a counter increment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Granted([u32; 8]);

fn slot(mode: GlockState, node_scope: bool) -> usize {
    mode as usize * 2 + node_scope as usize
}

const MODES: [GlockState; 4] = [GlockState::Unlocked, GlockState::Deferred, GlockState::Shared, GlockState::Exclusive];

impl Granted {
    fn total(&self) -> u32 {
        self.0.iter().sum()
    }
    fn classes(&self) -> impl Iterator<Item = (GlockState, bool)> + '_ {
        (0..8).filter(|&i| self.0[i] > 0).map(|i| (MODES[i / 2], i % 2 == 1))
    }
}

/// Whether two holders may be granted at the same time on this node.
pub fn compatible(a: (GlockState, bool), b: (GlockState, bool)) -> bool {
    (a.1 && b.1) || (a.0 == b.0 && a.0 != GlockState::Exclusive)
}

/// Whether a glock in `state` may serve a holder wanting `mode`.
pub fn covers(state: GlockState, mode: GlockState, flags: HolderFlags) -> bool {
    state.covers(mode) || (flags.any && state != GlockState::Unlocked)
}

/// The state a demote really goes to: `to` if the current state covers it,
/// UN otherwise (DF and SH exclude each other).
fn demote_to(state: GlockState, to: GlockState) -> GlockState {
    if state.covers(to) {
        to
    } else {
        GlockState::Unlocked
    }
}

/// One glock's state machine.
#[derive(Clone, Debug)]
pub struct Machine {
    state: GlockState,
    granted: Granted,
    waiters: VecDeque<Waiter>,
    busy: Busy,
    demote: Option<Demote>,
    last_change: Duration,
    min_hold: Duration,
    failed: Option<String>,
}

impl Machine {
    /// A glock held in no mode; callbacks arriving while holders are queued
    /// or granted wait until `min_hold` after the last state change.
    pub fn new(min_hold: Duration) -> Self {
        Machine {
            state: GlockState::Unlocked,
            granted: Granted::default(),
            waiters: VecDeque::new(),
            busy: Busy::Idle,
            demote: None,
            last_change: Duration::ZERO,
            min_hold,
            failed: None,
        }
    }

    pub fn state(&self) -> GlockState {
        self.state
    }
    pub fn busy(&self) -> Busy {
        self.busy
    }
    /// Granted holders.
    pub fn holders(&self) -> u32 {
        self.granted.total()
    }
    /// Queued (not yet granted) holders.
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }
    /// The demote asked for and not yet done, and whether it is due.
    pub fn pending_demote(&self) -> Option<(GlockState, bool)> {
        self.demote.map(|d| (d.to, d.ready))
    }
    /// Nothing in flight, nothing queued, no demote pending.
    pub fn is_settled(&self) -> bool {
        self.busy == Busy::Idle && self.waiters.is_empty() && self.demote.is_none()
    }
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    fn demote_due(&self) -> bool {
        self.demote.is_some_and(|d| d.ready)
    }

    /// Whether `w` may be granted now, ignoring the queue ahead of it.
    fn grantable(&self, mode: GlockState, flags: HolderFlags) -> bool {
        // During a promotion the state will change: the holder must be
        // covered by the state asked for too (DF → SH is no upgrade).
        let busy_ok = match self.busy {
            Busy::Idle => true,
            Busy::Promoting { to, .. } => covers(to, mode, flags),
            Busy::Syncing { .. } | Busy::Demoting { .. } => false,
        };
        busy_ok
            && covers(self.state, mode, flags)
            && self.granted.classes().all(|c| compatible(c, (self.held_mode(mode, flags), flags.node_scope)))
    }

    /// The mode a holder is counted in: its own, or with `any` the state.
    fn held_mode(&self, mode: GlockState, flags: HolderFlags) -> GlockState {
        if self.state.covers(mode) || !flags.any {
            mode
        } else {
            self.state
        }
    }

    fn grant(&mut self, w: Waiter, out: &mut Vec<Action>) {
        let m = self.held_mode(w.mode, w.flags);
        self.granted.0[slot(m, w.flags.node_scope)] += 1;
        out.push(Action::Grant(w.id));
    }

    /// A holder asks for the glock in `mode`. The mode it was granted in is
    /// what [`Machine::release`] must be given back (see [`Machine::held_mode_of`]).
    pub fn request(&mut self, id: HolderId, mode: GlockState, flags: HolderFlags) -> Vec<Action> {
        let mut out = Vec::new();
        let w = Waiter { id, mode, flags };
        if let Some(f) = &self.failed {
            out.push(Action::Refuse(id, Refusal::Error(f.clone())));
            return out;
        }
        if mode == GlockState::Unlocked {
            out.push(Action::Refuse(id, Refusal::Error("a holder needs SH, DF or EX".into())));
            return out;
        }
        if self.grant_now(mode, flags) {
            out.push(Action::Grant(id));
            return out;
        }
        if flags.try_lock {
            // Only the lock manager may stand between a try holder and its grant.
            let alone = self.waiters.is_empty() && self.granted.total() == 0 && self.busy == Busy::Idle && !self.demote_due();
            if !alone {
                out.push(Action::Refuse(id, Refusal::TryFailed));
                return out;
            }
        }
        self.waiters.push_back(w);
        self.run(&mut out);
        out
    }

    /// The fast path of [`Machine::request`]: grants and counts a holder
    /// if nobody is queued, no demote is due, the state covers `mode` and
    /// the holder is compatible with the granted ones. No allocation.
    pub fn grant_now(&mut self, mode: GlockState, flags: HolderFlags) -> bool {
        let usable = mode != GlockState::Unlocked && self.failed.is_none();
        if usable && self.waiters.is_empty() && !self.demote_due() && self.grantable(mode, flags) {
            let m = self.held_mode(mode, flags);
            self.granted.0[slot(m, flags.node_scope)] += 1;
            true
        } else {
            false
        }
    }

    /// The mode holder `(mode, flags)` is counted in if granted now (a
    /// granted holder's state cannot change while it is held).
    pub fn held_mode_of(&self, mode: GlockState, flags: HolderFlags) -> GlockState {
        self.held_mode(mode, flags)
    }

    /// A granted holder, counted in `held` (the mode `Grant` gave it), drops.
    pub fn release(&mut self, held: GlockState, node_scope: bool) -> Vec<Action> {
        let s = &mut self.granted.0[slot(held, node_scope)];
        debug_assert!(*s > 0, "release of a holder that is not granted");
        *s = s.saturating_sub(1);
        let mut out = Vec::new();
        self.run(&mut out);
        out
    }

    /// A queued holder gives up waiting (timeout). Returns false if it was
    /// not queued (already granted or refused: the caller must release it).
    pub fn cancel(&mut self, id: HolderId) -> (bool, Vec<Action>) {
        let mut out = Vec::new();
        let Some(i) = self.waiters.iter().position(|w| w.id == id) else { return (false, out) };
        self.waiters.remove(i);
        self.run(&mut out);
        (true, out)
    }

    /// Another node wants this glock in a mode that needs ours to drop to
    /// `to` (see [`GlockState::demote_target`]).
    pub fn callback(&mut self, to: GlockState, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        if self.failed.is_some() {
            return out;
        }
        // Two different demands: give up everything (the kernel's rule).
        let to = match self.demote {
            Some(d) if d.to != to => GlockState::Unlocked,
            _ => to,
        };
        let in_use = self.granted.total() > 0 || !self.waiters.is_empty();
        let due = if self.min_hold.is_zero() || !in_use {
            now
        } else if matches!(self.busy, Busy::Promoting { .. }) {
            now + self.min_hold
        } else {
            self.last_change + self.min_hold
        };
        let ready = self.demote.is_some_and(|d| d.ready) || now >= due;
        self.demote = Some(Demote { to, ready, due });
        if !ready {
            out.push(Action::Timer(due));
        }
        self.run(&mut out);
        out
    }

    /// The timer armed by a [`Action::Timer`] fired.
    pub fn timer(&mut self, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(d) = &mut self.demote {
            if !d.ready {
                if now >= d.due {
                    d.ready = true;
                } else {
                    out.push(Action::Timer(d.due));
                }
            }
        }
        self.run(&mut out);
        out
    }

    /// The lock manager answered the request in flight.
    pub fn reply(&mut self, reply: Reply, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        match (self.busy, reply) {
            (Busy::Promoting { .. }, Reply::Granted(s)) => {
                self.busy = Busy::Idle;
                self.set_state(s, now);
                // Those who asked get it at least once, even if a demote
                // is due (else a glock could bounce with no progress).
                while let Some(&w) = self.waiters.front() {
                    if !self.grantable(w.mode, w.flags) {
                        break;
                    }
                    self.waiters.pop_front();
                    self.grant(w, &mut out);
                }
            }
            (Busy::Promoting { try_lock, .. }, Reply::TryFailed) => {
                self.busy = Busy::Idle;
                if try_lock {
                    if let Some(i) = self.waiters.iter().position(|w| w.flags.try_lock) {
                        let w = self.waiters.remove(i).expect("found");
                        out.push(Action::Refuse(w.id, Refusal::TryFailed));
                    }
                }
            }
            (Busy::Promoting { .. }, Reply::Failed(e)) => {
                self.busy = Busy::Idle;
                for w in std::mem::take(&mut self.waiters) {
                    out.push(Action::Refuse(w.id, Refusal::Error(e.clone())));
                }
            }
            (Busy::Demoting { .. }, Reply::Granted(s)) => {
                self.busy = Busy::Idle;
                self.set_state(s, now);
                if let Some(d) = self.demote {
                    if demote_to(self.state, d.to) == self.state {
                        self.demote = None;
                    }
                }
                out.push(Action::Demoted { to: s });
            }
            (Busy::Demoting { .. }, Reply::TryFailed | Reply::Failed(_)) => {
                self.fail("the lock manager refused a demote", &mut out);
            }
            // A reply with nothing in flight: a misbehaving module; ignored.
            (Busy::Idle | Busy::Syncing { .. }, _) => return out,
        }
        self.run(&mut out);
        out
    }

    /// The demote work started by [`Action::DemoteWork`] ended.
    pub fn demote_done(&mut self, result: Result<(), String>) -> Vec<Action> {
        let mut out = Vec::new();
        let Busy::Syncing { to } = self.busy else { return out };
        match result {
            Ok(()) => {
                self.busy = Busy::Demoting { to };
                out.push(Action::Request { to, flags: HolderFlags::default() });
            }
            // Nothing may be given up that was not written back: the glock
            // stays held (other nodes wait for this node's journal recovery).
            Err(e) => self.fail(&format!("demote failed: {e}"), &mut out),
        }
        out
    }

    fn fail(&mut self, why: &str, out: &mut Vec<Action>) {
        self.busy = Busy::Idle;
        self.failed = Some(why.to_string());
        self.demote = None;
        for w in std::mem::take(&mut self.waiters) {
            out.push(Action::Refuse(w.id, Refusal::Error(why.to_string())));
        }
    }

    fn set_state(&mut self, s: GlockState, now: Duration) {
        if s != self.state {
            self.state = s;
            self.last_change = now;
        }
    }

    /// The kernel's run_queue: a due demote first (once holders are gone),
    /// then promotions in queue order, then a request for the first waiter.
    fn run(&mut self, out: &mut Vec<Action>) {
        if self.busy != Busy::Idle || self.failed.is_some() {
            return;
        }
        if let Some(d) = self.demote {
            let to = demote_to(self.state, d.to);
            if to == self.state {
                self.demote = None;
            } else if d.ready {
                if self.granted.total() > 0 {
                    return;
                }
                self.busy = Busy::Syncing { to };
                out.push(Action::DemoteWork { from: self.state, to });
                return;
            }
        }
        while let Some(&w) = self.waiters.front() {
            if !self.grantable(w.mode, w.flags) {
                break;
            }
            self.waiters.pop_front();
            self.grant(w, out);
        }
        let Some(&w) = self.waiters.front() else { return };
        if self.granted.total() > 0 {
            // Blocked behind local holders; they will run us again.
            return;
        }
        self.busy = Busy::Promoting { to: w.mode, try_lock: w.flags.try_lock };
        out.push(Action::Request { to: w.mode, flags: w.flags });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GlockState::{Exclusive as EX, Shared as SH, Unlocked as UN};

    const T0: Duration = Duration::ZERO;
    const NS: HolderFlags = HolderFlags { try_lock: false, any: false, node_scope: true, noexp: false };
    const PLAIN: HolderFlags = HolderFlags { try_lock: false, any: false, node_scope: false, noexp: false };
    const TRY: HolderFlags = HolderFlags { try_lock: true, any: false, node_scope: false, noexp: false };
    const HOLD: Duration = Duration::from_millis(200);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A machine holding `state` with nothing in flight.
    fn cached(state: GlockState) -> Machine {
        let mut m = Machine::new(HOLD);
        if state != UN {
            m.request(0, state, PLAIN);
            m.reply(Reply::Granted(state), T0);
            m.release(state, false);
        }
        m
    }

    #[test]
    fn first_request_asks_the_lock_manager_and_the_reply_grants() {
        let mut m = Machine::new(HOLD);
        assert_eq!(m.request(1, EX, PLAIN), vec![Action::Request { to: EX, flags: PLAIN }]);
        assert_eq!(m.busy(), Busy::Promoting { to: EX, try_lock: false });
        assert_eq!(m.reply(Reply::Granted(EX), ms(1)), vec![Action::Grant(1)]);
        assert_eq!((m.state(), m.holders()), (EX, 1));
    }

    #[test]
    fn a_cached_glock_grants_at_once_and_node_scope_holders_share_ex() {
        let mut m = cached(EX);
        assert_eq!(m.request(1, EX, NS), vec![Action::Grant(1)]);
        assert_eq!(m.request(2, EX, NS), vec![Action::Grant(2)]);
        assert_eq!(m.request(3, SH, NS), vec![Action::Grant(3)]);
        assert_eq!(m.holders(), 3);
    }

    #[test]
    fn plain_ex_holders_exclude_each_other_and_sh_holders_share() {
        let mut m = cached(EX);
        assert_eq!(m.request(1, EX, PLAIN), vec![Action::Grant(1)]);
        assert_eq!(m.request(2, EX, PLAIN), vec![]);
        assert_eq!(m.release(EX, false), vec![Action::Grant(2)]);
        m.release(EX, false);
        assert_eq!(m.request(3, SH, PLAIN), vec![Action::Grant(3)]);
        assert_eq!(m.request(4, SH, PLAIN), vec![Action::Grant(4)]);
    }

    #[test]
    fn an_upgrade_waits_for_holders_then_converts() {
        let mut m = cached(SH);
        assert_eq!(m.request(1, SH, PLAIN), vec![Action::Grant(1)]);
        assert_eq!(m.request(2, EX, PLAIN), vec![]);
        assert_eq!(m.release(SH, false), vec![Action::Request { to: EX, flags: PLAIN }]);
        assert_eq!(m.reply(Reply::Granted(EX), T0), vec![Action::Grant(2)]);
    }

    #[test]
    fn queue_order_is_kept() {
        let mut m = cached(SH);
        m.request(1, SH, PLAIN);
        m.request(2, EX, PLAIN);
        // Compatible with holder 1 but queued behind 2.
        assert_eq!(m.request(3, SH, PLAIN), vec![]);
        assert_eq!(m.waiting(), 2);
    }

    #[test]
    fn a_callback_without_holders_demotes_at_once_and_off_the_callers_thread() {
        let mut m = cached(EX);
        assert_eq!(m.callback(UN, ms(1)), vec![Action::DemoteWork { from: EX, to: UN }]);
        assert_eq!(m.busy(), Busy::Syncing { to: UN });
        assert_eq!(m.demote_done(Ok(())), vec![Action::Request { to: UN, flags: HolderFlags::default() }]);
        assert_eq!(m.reply(Reply::Granted(UN), ms(3)), vec![Action::Demoted { to: UN }]);
        assert!(m.is_settled());
        assert_eq!(m.state(), UN);
    }

    #[test]
    fn a_demote_waits_for_granted_holders_and_blocks_new_ones() {
        let mut m = Machine::new(Duration::ZERO);
        m.request(1, EX, NS);
        m.reply(Reply::Granted(EX), T0);
        assert_eq!(m.callback(UN, T0), vec![]);
        // Due: a new holder waits behind the demote.
        assert_eq!(m.request(2, EX, NS), vec![]);
        assert_eq!(m.release(EX, true), vec![Action::DemoteWork { from: EX, to: UN }]);
        m.demote_done(Ok(()));
        // After the demote the waiter asks again.
        assert_eq!(m.reply(Reply::Granted(UN), T0), vec![Action::Demoted { to: UN }, Action::Request { to: EX, flags: NS }]);
        assert_eq!(m.reply(Reply::Granted(EX), T0), vec![Action::Grant(2)]);
    }

    #[test]
    fn the_minimum_hold_time_delays_a_callback_while_holders_are_queued_or_granted() {
        let mut m = Machine::new(HOLD);
        m.request(1, EX, NS);
        m.reply(Reply::Granted(EX), ms(10));
        assert_eq!(m.callback(SH, ms(20)), vec![Action::Timer(ms(210))]);
        // Not due: compatible holders are still granted.
        assert_eq!(m.request(2, EX, NS), vec![Action::Grant(2)]);
        m.release(EX, true);
        assert_eq!(m.release(EX, true), vec![]);
        assert_eq!(m.timer(ms(100)), vec![Action::Timer(ms(210))]);
        assert_eq!(m.timer(ms(210)), vec![Action::DemoteWork { from: EX, to: SH }]);
    }

    #[test]
    fn no_minimum_hold_time_when_nothing_is_queued_or_granted() {
        let mut m = cached(EX);
        assert_eq!(m.callback(SH, ms(1)), vec![Action::DemoteWork { from: EX, to: SH }]);
    }

    #[test]
    fn a_callback_during_a_request_waits_a_full_hold_time() {
        let mut m = Machine::new(HOLD);
        m.request(1, EX, NS);
        assert_eq!(m.callback(UN, ms(5)), vec![Action::Timer(ms(205))]);
        // The holder gets the glock once, then the demote waits for it.
        assert_eq!(m.reply(Reply::Granted(EX), ms(6)), vec![Action::Grant(1)]);
        assert_eq!(m.timer(ms(205)), vec![]);
        assert_eq!(m.release(EX, true), vec![Action::DemoteWork { from: EX, to: UN }]);
    }

    #[test]
    fn two_different_demands_demote_to_unlocked() {
        let mut m = Machine::new(HOLD);
        m.request(1, EX, NS);
        m.reply(Reply::Granted(EX), T0);
        m.callback(SH, T0);
        m.callback(GlockState::Deferred, T0);
        assert_eq!(m.pending_demote(), Some((UN, false)));
    }

    #[test]
    fn a_callback_already_satisfied_is_dropped() {
        let mut m = cached(SH);
        assert_eq!(m.callback(SH, T0), vec![]);
        assert!(m.is_settled());
    }

    #[test]
    fn try_locks_never_wait() {
        let mut m = cached(SH);
        m.request(1, SH, PLAIN);
        // Blocked by a holder: refused at once.
        assert_eq!(m.request(2, EX, TRY), vec![Action::Refuse(2, Refusal::TryFailed)]);
        m.release(SH, false);
        // Only the lock manager in the way: a no-queue request.
        assert_eq!(m.request(3, EX, TRY), vec![Action::Request { to: EX, flags: TRY }]);
        assert_eq!(m.request(4, EX, TRY), vec![Action::Refuse(4, Refusal::TryFailed)]);
        assert_eq!(m.reply(Reply::TryFailed, T0), vec![Action::Refuse(3, Refusal::TryFailed)]);
        assert_eq!(m.state(), SH);
        // A due demote blocks: refused.
        let mut m = Machine::new(Duration::ZERO);
        m.request(1, EX, NS);
        m.reply(Reply::Granted(EX), T0);
        m.callback(UN, T0);
        assert_eq!(m.request(2, EX, HolderFlags { try_lock: true, ..NS }), vec![Action::Refuse(2, Refusal::TryFailed)]);
    }

    #[test]
    fn any_accepts_the_other_shared_mode() {
        let any = HolderFlags { any: true, ..PLAIN };
        let mut m = Machine::new(HOLD);
        m.request(1, SH, any);
        assert_eq!(m.reply(Reply::Granted(GlockState::Deferred), T0), vec![Action::Grant(1)]);
        assert_eq!(m.held_mode_of(SH, any), GlockState::Deferred);
        m.release(GlockState::Deferred, false);
        assert_eq!(m.holders(), 0);
    }

    #[test]
    fn lock_manager_errors_refuse_the_waiters() {
        let mut m = Machine::new(HOLD);
        m.request(1, EX, PLAIN);
        m.request(2, EX, PLAIN);
        let out = m.reply(Reply::Failed("gone".into()), T0);
        assert_eq!(out, vec![Action::Refuse(1, Refusal::Error("gone".into())), Action::Refuse(2, Refusal::Error("gone".into()))]);
        assert_eq!(m.state(), UN);
    }

    #[test]
    fn a_failed_demote_keeps_the_glock_and_refuses_everyone() {
        let mut m = cached(EX);
        m.callback(UN, T0);
        assert!(matches!(m.demote_done(Err("withdrawn".into()))[..], []));
        assert_eq!(m.state(), EX);
        assert!(matches!(m.request(1, EX, NS)[..], [Action::Refuse(1, Refusal::Error(_))]));
        assert_eq!(m.callback(UN, T0), vec![]);
    }

    #[test]
    fn a_cancelled_waiter_lets_the_next_one_through() {
        let mut m = cached(EX);
        m.request(1, EX, PLAIN);
        m.request(2, EX, PLAIN);
        m.request(3, SH, PLAIN);
        assert_eq!(m.cancel(2), (true, vec![]));
        assert_eq!(m.release(EX, false), vec![Action::Grant(3)]);
        assert!(!m.cancel(3).0);
    }

    #[test]
    fn stray_replies_are_ignored() {
        let mut m = cached(EX);
        assert_eq!(m.reply(Reply::Granted(UN), T0), vec![]);
        assert_eq!(m.state(), EX);
    }
}
