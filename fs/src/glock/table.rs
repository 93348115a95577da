//! The glocks of one node: one [`Machine`] per lock name behind its own
//! mutex, driven by holder requests, lock module events and a worker thread
//! that runs demote work and the minimum-hold timers.
//!
//! Invariants:
//! - neither the table's map lock nor a glock's mutex is held while calling
//!   the lock module or running demote work (the module may complete a
//!   request inline, from inside `request`);
//! - demote work runs on the worker thread, never on the thread that
//!   delivered the blocking callback;
//! - a holder waits on its glock's condition variable with a deadline
//!   (`GlockConfig::wait_timeout`); a timed-out holder leaves the queue;
//! - a blocking acquisition is refused on a thread that holds a lock demote
//!   work needs (`order.rs`).

use std::collections::{BinaryHeap, HashMap};
use std::cmp::Reverse;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::holder::Holder;
use super::module::{Granted, LockError, LockEvents, LockModule, LockRequest};
use super::state::{Action, HolderFlags, HolderId, Machine, Refusal, Reply};
use super::{order, DlmMode, GlockState, LockName, LockType, Lvb};
use crate::error::{Error, Result};

/// Tunables of the glock layer.
#[derive(Clone, Copy, Debug)]
pub struct GlockConfig {
    /// How long after a state change a blocking callback on an inode glock
    /// is held back while local holders are queued or granted. The kernel
    /// starts at HZ/5 (200 ms) and adapts between 10 ms and 200 ms; rgfs
    /// uses the starting value, fixed.
    pub min_hold: Duration,
    /// How long a holder waits for its glock before failing with
    /// [`Error::Lock`].
    pub wait_timeout: Duration,
}

impl Default for GlockConfig {
    fn default() -> Self {
        GlockConfig { min_hold: Duration::from_millis(200), wait_timeout: Duration::from_secs(60) }
    }
}

/// The filesystem side of a demote, run on the table's worker thread.
pub trait Demoter: Send + Sync {
    /// Before the lock manager is told: make what is cached under `from`
    /// durable and, for `to` weaker than it, forget it. No holder of the
    /// glock is granted meanwhile. An error keeps the glock (see state.rs).
    fn sync(&self, name: LockName, from: GlockState, to: GlockState) -> Result<()>;
    /// After the lock manager confirmed the demote to `to` (holders may
    /// be granted again meanwhile): drop what others may have cached of it,
    /// such as the kernel's caches.
    fn demoted(&self, name: LockName, to: GlockState);
}

pub(crate) struct Entry {
    name: LockName,
    /// The table, for a release that has actions to carry out.
    table: Weak<Inner>,
    st: Mutex<EntryState>,
    cv: Condvar,
}

struct EntryState {
    m: Machine,
    /// Grants and refusals not yet picked up by their waiting holder.
    outcomes: HashMap<HolderId, std::result::Result<(), Refusal>>,
    lvb: Lvb,
    /// Demotes completed, `demoted` hook included.
    demotes: u64,
    /// `demoted` hooks queued and not yet run.
    finishing: u32,
}

enum Job {
    Sync { name: LockName, from: GlockState, to: GlockState },
    Demoted { name: LockName, to: GlockState },
    Timer { name: LockName, due: Duration },
}

pub(crate) struct Inner {
    module: Arc<dyn LockModule>,
    map: Mutex<HashMap<LockName, Arc<Entry>>>,
    jobs: Mutex<mpsc::Sender<Job>>,
    demoter: Mutex<Option<Arc<dyn Demoter>>>,
    config: GlockConfig,
    epoch: Instant,
    next_id: AtomicU64,
    recovery: Mutex<Vec<u32>>,
}

/// The glocks this node holds or caches.
pub struct GlockTable {
    inner: Arc<Inner>,
}

impl GlockTable {
    /// A table over `module`; registers itself for the module's events and
    /// starts the worker thread (it ends when the table is dropped).
    pub fn new(module: Arc<dyn LockModule>, config: GlockConfig) -> Self {
        let (tx, rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            module: module.clone(),
            map: Mutex::new(HashMap::new()),
            jobs: Mutex::new(tx),
            demoter: Mutex::new(None),
            config,
            epoch: Instant::now(),
            next_id: AtomicU64::new(1),
            recovery: Mutex::new(Vec::new()),
        });
        module.set_events(Arc::new(Sink(Arc::downgrade(&inner))));
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("rgfs-glock".into())
            .spawn(move || worker(weak, rx))
            .expect("spawn the glock worker thread");
        GlockTable { inner }
    }

    pub fn module(&self) -> &Arc<dyn LockModule> {
        &self.inner.module
    }

    /// Where demote work goes (the mounted filesystem).
    pub fn set_demoter(&self, d: Arc<dyn Demoter>) {
        *self.inner.demoter.lock() = Some(d);
    }

    /// Takes a holder on `name` in `mode`, waiting (up to the configured
    /// timeout) for other holders, demotes and the lock manager. With
    /// `flags.try_lock`, a holder that would wait fails instead (see
    /// [`GlockTable::try_acquire`]).
    pub fn acquire(&self, name: LockName, mode: GlockState, flags: HolderFlags) -> Result<Holder> {
        if !flags.try_lock {
            order::check_may_wait(name)?;
        }
        match self.inner.acquire(name, mode, flags)? {
            Ok(h) => Ok(h),
            Err(Refusal::TryFailed) => Err(Error::Lock(format!("glock {name}: held elsewhere (try lock)"))),
            Err(Refusal::Error(e)) => Err(Error::Lock(format!("glock {name}: {e}"))),
        }
    }

    /// A try-lock: never waits for another holder or a demote. `None` when
    /// the glock is busy here or (after one no-queue request) elsewhere.
    pub fn try_acquire(&self, name: LockName, mode: GlockState, flags: HolderFlags) -> Result<Option<Holder>> {
        match self.inner.acquire(name, mode, HolderFlags { try_lock: true, ..flags })? {
            Ok(h) => Ok(Some(h)),
            Err(Refusal::TryFailed) => Ok(None),
            Err(Refusal::Error(e)) => Err(Error::Lock(format!("glock {name}: {e}"))),
        }
    }

    /// The state this node holds `name` in.
    pub fn state(&self, name: LockName) -> GlockState {
        self.inner.get(name).map(|e| e.st.lock().m.state()).unwrap_or(GlockState::Unlocked)
    }

    /// Granted holders of `name`.
    pub fn holders(&self, name: LockName) -> u32 {
        self.inner.get(name).map(|e| e.st.lock().m.holders()).unwrap_or(0)
    }

    /// Demotes of `name` completed (statistics, tests).
    pub fn demotes(&self, name: LockName) -> u64 {
        self.inner.get(name).map(|e| e.st.lock().demotes).unwrap_or(0)
    }

    /// The value block of `name` as last read or set.
    pub fn lvb(&self, name: LockName) -> Lvb {
        self.inner.get(name).map(|e| e.st.lock().lvb).unwrap_or([0; 32])
    }

    /// Waits until `name` has nothing queued, in flight or pending (a
    /// demote's hooks included); false on timeout.
    pub fn wait_settled(&self, name: LockName, timeout: Duration) -> bool {
        let Some(e) = self.inner.get(name) else { return true };
        let deadline = Instant::now() + timeout;
        let mut st = e.st.lock();
        while !(st.m.is_settled() && st.finishing == 0) {
            if e.cv.wait_until(&mut st, deadline).timed_out() {
                return st.m.is_settled() && st.finishing == 0;
            }
        }
        true
    }

    /// Journals the lock module reported as needing recovery (the seam for
    /// recovery of other nodes' journals; nothing consumes it yet).
    pub fn journals_needing_recovery(&self) -> Vec<u32> {
        self.inner.recovery.lock().clone()
    }

    /// Tells the lock module journal `jid` has been replayed.
    pub fn journal_recovered(&self, jid: u32) {
        self.inner.recovery.lock().retain(|&j| j != jid);
        self.inner.module.recovery_done(jid);
    }
}

impl Entry {
    /// A granted holder drops (called by [`Holder`]'s drop). The common
    /// case touches only this glock's mutex and counter.
    pub(crate) fn release(self: &Arc<Self>, held: GlockState, node_scope: bool) {
        let mut st = self.st.lock();
        let actions = st.m.release(held, node_scope);
        if !actions.is_empty() {
            if let Some(table) = self.table.upgrade() {
                table.apply(self, st, actions);
            }
        }
    }
}

impl Inner {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn get(&self, name: LockName) -> Option<Arc<Entry>> {
        self.map.lock().get(&name).cloned()
    }

    fn entry(self: &Arc<Self>, name: LockName) -> Arc<Entry> {
        let mut map = self.map.lock();
        map.entry(name)
            .or_insert_with(|| {
                // The minimum hold time is the kernel's for inode glocks only.
                let hold = if name.ty == LockType::Inode { self.config.min_hold } else { Duration::ZERO };
                Arc::new(Entry {
                    name,
                    table: Arc::downgrade(self),
                    st: Mutex::new(EntryState {
                        m: Machine::new(hold),
                        outcomes: HashMap::new(),
                        lvb: [0; 32],
                        demotes: 0,
                        finishing: 0,
                    }),
                    cv: Condvar::new(),
                })
            })
            .clone()
    }

    fn acquire(
        self: &Arc<Self>,
        name: LockName,
        mode: GlockState,
        flags: HolderFlags,
    ) -> Result<std::result::Result<Holder, Refusal>> {
        let e = self.entry(name);
        let mut st = e.st.lock();
        // The fast path: a cached, compatible glock is a counter increment.
        if st.m.grant_now(mode, flags) {
            let held = st.m.held_mode_of(mode, flags);
            drop(st);
            return Ok(Ok(Holder::new(e, held, flags.node_scope)));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let actions = st.m.request(id, mode, flags);
        self.apply(&e, st, actions);
        let deadline = Instant::now() + self.config.wait_timeout;
        let mut st = e.st.lock();
        loop {
            if let Some(r) = st.outcomes.remove(&id) {
                return Ok(match r {
                    Ok(()) => {
                        let held = st.m.held_mode_of(mode, flags);
                        drop(st);
                        Ok(Holder::new(e, held, flags.node_scope))
                    }
                    Err(refusal) => Err(refusal),
                });
            }
            if e.cv.wait_until(&mut st, deadline).timed_out() && !st.outcomes.contains_key(&id) {
                let (_, actions) = st.m.cancel(id);
                self.apply(&e, st, actions);
                return Err(Error::Lock(format!(
                    "glock {name}: not granted within {:?} (state {:?})",
                    self.config.wait_timeout,
                    self.get(name).map(|e| e.st.lock().m.state())
                )));
            }
        }
    }


    /// Runs one event on `name`'s machine and its actions.
    fn event(&self, name: LockName, f: impl FnOnce(&mut EntryState, Duration) -> Vec<Action>) {
        let Some(e) = self.get(name) else { return };
        let mut st = e.st.lock();
        let actions = f(&mut st, self.now());
        self.apply(&e, st, actions);
    }

    /// Carries out actions: grants and refusals under the glock's mutex;
    /// lock module requests and jobs after releasing it.
    fn apply(&self, e: &Arc<Entry>, mut st: MutexGuard<'_, EntryState>, actions: Vec<Action>) {
        let mut requests = Vec::new();
        let mut wake = false;
        for a in actions {
            match a {
                Action::Grant(id) => {
                    st.outcomes.insert(id, Ok(()));
                    wake = true;
                }
                Action::Refuse(id, r) => {
                    st.outcomes.insert(id, Err(r));
                    wake = true;
                }
                Action::Request { to, flags } => {
                    let from = st.m.state();
                    let lvb = (from == GlockState::Exclusive).then_some(st.lvb);
                    requests.push(LockRequest { name: e.name, from, to, flags, lvb });
                }
                Action::DemoteWork { from, to } => self.job(Job::Sync { name: e.name, from, to }),
                Action::Demoted { to } => {
                    st.finishing += 1;
                    self.job(Job::Demoted { name: e.name, to });
                }
                Action::Timer(due) => self.job(Job::Timer { name: e.name, due }),
            }
        }
        let settled = st.m.is_settled();
        drop(st);
        if wake || settled {
            e.cv.notify_all();
        }
        for r in requests {
            let name = r.name;
            if let Some(done) = self.module.request(r) {
                self.completed(name, done);
            }
        }
    }

    fn job(&self, j: Job) {
        // The worker only ends with the table; a send cannot fail before.
        let _ = self.jobs.lock().send(j);
    }

    fn completed(&self, name: LockName, result: std::result::Result<Granted, LockError>) {
        self.event(name, |st, now| {
            let reply = match result {
                Ok(g) => {
                    if let Some(lvb) = g.lvb {
                        st.lvb = lvb;
                    }
                    Reply::Granted(g.state)
                }
                Err(LockError::TryFailed(_)) => Reply::TryFailed,
                Err(e) => Reply::Failed(e.to_string()),
            };
            st.m.reply(reply, now)
        });
    }

    fn run_job(&self, j: Job, timers: &mut BinaryHeap<Reverse<(Duration, LockName)>>) {
        match j {
            Job::Sync { name, from, to } => {
                let d = self.demoter.lock().clone();
                let r = d.map_or(Ok(()), |d| d.sync(name, from, to)).map_err(|e| e.to_string());
                if let Err(e) = &r {
                    tracing::error!("demote of glock {name} failed, keeping it: {e}");
                }
                self.event(name, |st, _| st.m.demote_done(r));
            }
            Job::Demoted { name, to } => {
                if let Some(d) = self.demoter.lock().clone() {
                    d.demoted(name, to);
                }
                self.event(name, |st, _| {
                    st.finishing -= 1;
                    st.demotes += 1;
                    Vec::new()
                });
            }
            Job::Timer { name, due } => timers.push(Reverse((due, name))),
        }
    }
}

/// The worker: demote work, `demoted` hooks and minimum-hold timers, in the
/// order they were asked for.
fn worker(inner: Weak<Inner>, rx: mpsc::Receiver<Job>) {
    let mut timers: BinaryHeap<Reverse<(Duration, LockName)>> = BinaryHeap::new();
    loop {
        let wait = match (timers.peek(), inner.upgrade()) {
            (_, None) => return,
            (Some(Reverse((due, _))), Some(i)) => due.saturating_sub(i.now()),
            (None, Some(_)) => Duration::from_secs(3600),
        };
        let job = match rx.recv_timeout(wait) {
            Ok(j) => Some(j),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let Some(i) = inner.upgrade() else { return };
        if let Some(j) = job {
            i.run_job(j, &mut timers);
        }
        let now = i.now();
        while let Some(&Reverse((due, name))) = timers.peek() {
            if due > now {
                break;
            }
            timers.pop();
            i.event(name, |st, now| st.m.timer(now));
        }
    }
}

/// The module's events, delivered to the table while it exists.
struct Sink(Weak<Inner>);

impl LockEvents for Sink {
    fn completed(&self, name: LockName, result: std::result::Result<Granted, LockError>) {
        if let Some(i) = self.0.upgrade() {
            i.completed(name, result);
        }
    }
    fn blocking(&self, name: LockName, mode: DlmMode) {
        if let Some(i) = self.0.upgrade() {
            // Only recorded here; the demote runs on the worker.
            i.event(name, |st, now| st.m.callback(GlockState::demote_target(mode), now));
        }
    }
    fn recovery_needed(&self, jid: u32) {
        if let Some(i) = self.0.upgrade() {
            let mut r = i.recovery.lock();
            if !r.contains(&jid) {
                r.push(jid);
            }
        }
    }
}
