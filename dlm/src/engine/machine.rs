//! The lock engine of one lockspace on a resource's master: a pure state machine.
//! Inputs (request, convert, unlock, cancel, purge) go in through [`Engine::apply`];
//! completions and blocking callbacks come out in a vector. No I/O, no clock, no
//! randomness: the same inputs always give the same outputs.
//!
//! The rules are the Linux DLM's; docs/dlm.md states them one by one (rules R2–R6).
//!
//! Invariants (checked by [`Engine::check_invariants`], which the tests call after every step):
//! - Every lock sits in exactly one queue of exactly one resource, the one it names.
//! - Grant queue: granted, nothing requested. Convert queue: granted and requested.
//!   Wait queue: requested, nothing granted.
//! - All granted modes of a resource (grant and convert queues) are pairwise compatible.
//! - Nothing grantable is left waiting: the head of the convert queue cannot be granted,
//!   no NOORDER conversion can, and while the convert queue is empty neither can the head
//!   of the wait queue; no NOORDER waiter can be granted.
//! - The convert queue holds no conversion deadlock (detected when a conversion is queued).
//! - No resource is empty: the last lock's departure forgets the resource and its LVB.
//! - Counts stay within [`Limits`].

use std::collections::{HashMap, VecDeque};

use super::flags::{Flags, SbFlags};
use super::lvb::{lvb_action, Lvb, LvbAction, LvbRead};
use super::mode::{Mode, ModeSet};
use super::name::ResourceName;

/// Identity of a lock: the node of its holder and a number unique on that node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockId {
    /// The holder's node id.
    pub node: u32,
    /// Unique among the holder node's locks.
    pub lock: u64,
}

/// Bounds on the engine's memory. Requests beyond them fail with [`OpError::Limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Locks in the lockspace (on this master).
    pub max_locks: usize,
    /// Resources in the lockspace (on this master).
    pub max_resources: usize,
    /// Locks on one resource, all queues together.
    pub max_locks_per_resource: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_locks: 1 << 20, max_resources: 1 << 20, max_locks_per_resource: 4096 }
    }
}

/// An event fed to the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// A new lock on `name`.
    Request { lock: LockId, name: ResourceName, mode: Mode, flags: Flags },
    /// Change the mode of a granted lock. `lvb` is the value written by a VALBLK
    /// down-conversion from PW/EX.
    Convert { lock: LockId, mode: Mode, flags: Flags, lvb: Option<Lvb> },
    /// Release a granted lock (VALBLK writes `lvb` if the lock is PW/EX; IVVALBLK invalidates).
    Unlock { lock: LockId, flags: Flags, lvb: Option<Lvb> },
    /// Cancel the lock's queued request or conversion.
    Cancel { lock: LockId },
    /// The holder is gone: remove the lock wherever it is, without callbacks to it.
    /// A purged PW/EX holder leaves the LVB invalid.
    Purge { lock: LockId },
    /// Recovery on a restarted master: install `lock`, which its holder says is granted
    /// in `mode`. Refused unless `mode` is compatible with every granted mode and nothing
    /// is queued on the resource (a rebuild comes before any other input). No outputs.
    /// `lvb` is the LVB as the holder knows it (it holds above CR, so nobody wrote it since):
    /// the resource takes the newest one vouched for; with none it stays invalid.
    Rebuild { lock: LockId, name: ResourceName, mode: Mode, lvb: Option<LvbRead> },
}

/// Outcome of an operation, reported by its completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Granted (request or conversion).
    Granted,
    /// NOQUEUE and not grantable at once (-EAGAIN).
    TryAgain,
    /// Unlocked (-DLM_EUNLOCK).
    Unlocked,
    /// The queued request or conversion was cancelled (-DLM_ECANCEL).
    Cancelled,
    /// The conversion would deadlock with another conversion (-EDEADLK).
    Deadlock,
}

/// The completion callback of one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The lock.
    pub lock: LockId,
    /// What happened.
    pub status: Status,
    /// The lock's granted mode afterwards; `None` if the lock no longer exists.
    pub mode: Option<Mode>,
    /// DEMOTED, VALNOTVALID, ALTMODE.
    pub sb_flags: SbFlags,
    /// The resource's LVB, when VALBLK was set and the transition reads it.
    pub lvb: Option<LvbRead>,
}

/// What the engine asks its caller to deliver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Deliver a completion to the lock's holder.
    Completion(Completion),
    /// Tell the holder of `lock` that a request for `mode` waits behind it.
    Blocking {
        /// The holder's lock.
        lock: LockId,
        /// The mode the waiter wants.
        mode: Mode,
    },
}

/// An operation refused at once: the engine is unchanged and no completion follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// Flags or modes that the rules forbid.
    #[error("invalid: {0}")]
    Invalid(&'static str),
    /// No lock with this id.
    #[error("unknown lock")]
    UnknownLock,
    /// A request with an id that is in use.
    #[error("lock id already in use")]
    DuplicateLock,
    /// The lock has an operation in flight (or, for a cancel, none).
    #[error("busy: {0}")]
    Busy(&'static str),
    /// A limit of [`Limits`] would be exceeded.
    #[error("limit reached: {0}")]
    Limit(&'static str),
}

/// Which queue of its resource a lock is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queue {
    /// Granted, nothing pending.
    Granted,
    /// Granted, conversion pending.
    Converting,
    /// New request pending.
    Waiting,
}

/// A snapshot of one lock, for dumps and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockView {
    /// The lock.
    pub id: LockId,
    /// Its resource.
    pub name: ResourceName,
    /// Granted mode.
    pub granted: Option<Mode>,
    /// Requested mode of the pending operation.
    pub requested: Option<Mode>,
    /// Flags of the last operation.
    pub flags: Flags,
    /// Queue.
    pub queue: Queue,
}

/// A snapshot of one resource, for dumps and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceView {
    /// The name.
    pub name: ResourceName,
    /// Grant queue.
    pub granted: Vec<LockView>,
    /// Convert queue, head first.
    pub converting: Vec<LockView>,
    /// Wait queue, head first.
    pub waiting: Vec<LockView>,
    /// The LVB.
    pub lvb: LvbRead,
}

#[derive(Clone, Debug)]
struct Lock {
    name: ResourceName,
    granted: Option<Mode>,
    requested: Option<Mode>,
    flags: Flags,
    queue: Queue,
    /// The value to write when the pending transition writes the LVB.
    lvb: Option<Lvb>,
    /// Flags gathered for the pending operation's completion (DEMOTED).
    op_sb_flags: SbFlags,
    /// Modes the holder may keep without being sent a new blocking callback: the
    /// intersection of the compatible sets of the modes it was already told about
    /// since its last grant.
    bast_allowed: ModeSet,
}

#[derive(Clone, Debug)]
struct Resource {
    granted: Vec<LockId>,
    converting: VecDeque<LockId>,
    waiting: VecDeque<LockId>,
    lvb: Lvb,
    lvb_seq: u32,
    lvb_valid: bool,
}

impl Resource {
    fn new() -> Resource {
        Resource {
            granted: Vec::new(),
            converting: VecDeque::new(),
            waiting: VecDeque::new(),
            lvb: Lvb::default(),
            lvb_seq: 0,
            lvb_valid: true,
        }
    }

    fn lock_count(&self) -> usize {
        self.granted.len() + self.converting.len() + self.waiting.len()
    }

    fn lvb_read(&self) -> LvbRead {
        LvbRead { value: self.lvb, seq: self.lvb_seq, valid: self.lvb_valid }
    }

    fn remove_from(&mut self, queue: Queue, id: LockId) {
        let found = match queue {
            Queue::Granted => self.granted.iter().position(|x| *x == id).map(|i| {
                self.granted.remove(i);
            }),
            Queue::Converting => self.converting.iter().position(|x| *x == id).map(|i| {
                self.converting.remove(i);
            }),
            Queue::Waiting => self.waiting.iter().position(|x| *x == id).map(|i| {
                self.waiting.remove(i);
            }),
        };
        debug_assert!(found.is_some(), "lock {id:?} missing from {queue:?}");
    }
}

/// The lock engine of one lockspace (the resources this node masters).
#[derive(Clone, Debug, Default)]
pub struct Engine {
    resources: HashMap<ResourceName, Resource>,
    locks: HashMap<LockId, Lock>,
    limits: Limits,
}

/// The modes in the order blocking callbacks are considered: most demanding first,
/// so one callback for EX covers the weaker modes waiting behind it.
const BAST_ORDER: [Mode; 6] = [Mode::EX, Mode::PW, Mode::PR, Mode::CW, Mode::CR, Mode::NL];

impl Engine {
    /// An empty engine with these limits.
    pub fn new(limits: Limits) -> Engine {
        Engine { resources: HashMap::new(), locks: HashMap::new(), limits }
    }

    /// Number of locks.
    pub fn lock_count(&self) -> usize {
        self.locks.len()
    }

    /// Number of resources.
    pub fn resource_count(&self) -> usize {
        self.resources.len()
    }

    /// Applies one input; outputs are appended to `out` in delivery order.
    /// On error nothing changed and nothing was appended.
    pub fn apply(&mut self, input: Input, out: &mut Vec<Output>) -> Result<(), OpError> {
        let name = match input {
            Input::Request { lock, name, mode, flags } => {
                self.request(lock, name, mode, flags, out)?;
                name
            }
            Input::Convert { lock, mode, flags, lvb } => self.convert(lock, mode, flags, lvb, out)?,
            Input::Unlock { lock, flags, lvb } => self.unlock(lock, flags, lvb, out)?,
            Input::Cancel { lock } => self.cancel(lock, out)?,
            Input::Purge { lock } => self.purge(lock, out)?,
            Input::Rebuild { lock, name, mode, lvb } => {
                self.rebuild(lock, name, mode, lvb)?;
                return Ok(());
            }
        };
        self.finish(&name, out);
        Ok(())
    }

    fn request(&mut self, id: LockId, name: ResourceName, mode: Mode, flags: Flags, out: &mut Vec<Output>) -> Result<(), OpError> {
        check_known(flags)?;
        if flags.intersects(Flags::CONVERT | Flags::CANCEL | Flags::QUECVT | Flags::CONVDEADLK) {
            return Err(OpError::Invalid("CONVERT, CANCEL, QUECVT and CONVDEADLK are not for new requests"));
        }
        if flags.contains(Flags::EXPEDITE) && (mode != Mode::NL || flags.contains(Flags::NOQUEUE)) {
            return Err(OpError::Invalid("EXPEDITE is only for new NL requests without NOQUEUE"));
        }
        check_common(flags)?;
        self.check_room(id, &name)?;

        let Engine { resources, locks, .. } = self;
        let res = resources.entry(name).or_insert_with(Resource::new);
        locks.insert(
            id,
            Lock {
                name,
                granted: None,
                requested: Some(mode),
                flags,
                queue: Queue::Waiting,
                lvb: None,
                op_sb_flags: SbFlags::NONE,
                bast_allowed: ModeSet::ALL,
            },
        );
        // Granted now if it would be first in line: nothing queued, or HEADQUE with no
        // conversion queued (a request at the head is granted as soon as compatible).
        let first_in_line = res.converting.is_empty() && (res.waiting.is_empty() || flags.contains(Flags::HEADQUE));
        let grantable = |m: Mode| {
            flags.contains(Flags::EXPEDITE)
                || (compatible_with_granted(res, locks, m, id) && (flags.contains(Flags::NOORDER) || first_in_line))
        };
        if let Some((granted, sb)) = choose_mode(mode, flags, grantable) {
            res.granted.push(id);
            grant(res, locks, id, granted, sb, out);
            return Ok(());
        }
        if flags.contains(Flags::NOQUEUE) {
            if flags.contains(Flags::NOQUEUEBAST) {
                blocking_for(res, locks, mode, id, out);
            }
            locks.remove(&id);
            complete(out, id, Status::TryAgain, None, SbFlags::NONE, None);
            return Ok(());
        }
        if flags.contains(Flags::HEADQUE) {
            res.waiting.push_front(id);
        } else {
            res.waiting.push_back(id);
        }
        Ok(())
    }

    fn check_room(&self, id: LockId, name: &ResourceName) -> Result<(), OpError> {
        if self.locks.contains_key(&id) {
            return Err(OpError::DuplicateLock);
        }
        if self.locks.len() >= self.limits.max_locks {
            return Err(OpError::Limit("locks in lockspace"));
        }
        match self.resources.get(name) {
            Some(res) if res.lock_count() >= self.limits.max_locks_per_resource => Err(OpError::Limit("locks on resource")),
            None if self.resources.len() >= self.limits.max_resources => Err(OpError::Limit("resources in lockspace")),
            _ => Ok(()),
        }
    }

    fn rebuild(&mut self, id: LockId, name: ResourceName, mode: Mode, lvb: Option<LvbRead>) -> Result<(), OpError> {
        self.check_room(id, &name)?;
        if let Some(res) = self.resources.get(&name) {
            if !res.converting.is_empty() || !res.waiting.is_empty() {
                return Err(OpError::Invalid("a rebuilt lock must come before any queued request"));
            }
            if !compatible_with_granted(res, &self.locks, mode, id) {
                return Err(OpError::Invalid("a rebuilt lock must be compatible with the granted locks"));
            }
        }
        let res = self.resources.entry(name).or_insert_with(|| Resource { lvb_valid: false, ..Resource::new() });
        if let Some(read) = lvb.filter(|read| !res.lvb_valid || read.seq > res.lvb_seq) {
            (res.lvb, res.lvb_seq, res.lvb_valid) = (read.value, read.seq, read.valid);
        }
        res.granted.push(id);
        let lock = Lock {
            name,
            granted: Some(mode),
            requested: None,
            flags: Flags::NONE,
            queue: Queue::Granted,
            lvb: None,
            op_sb_flags: SbFlags::NONE,
            bast_allowed: ModeSet::ALL,
        };
        self.locks.insert(id, lock);
        Ok(())
    }

    fn convert(&mut self, id: LockId, mode: Mode, flags: Flags, lvb: Option<Lvb>, out: &mut Vec<Output>) -> Result<ResourceName, OpError> {
        check_known(flags)?;
        let lock = self.locks.get(&id).ok_or(OpError::UnknownLock)?;
        let Some(granted) = lock.granted.filter(|_| lock.queue == Queue::Granted) else {
            return Err(OpError::Busy("the lock has a request or conversion in flight"));
        };
        if flags.intersects(Flags::CANCEL | Flags::EXPEDITE) {
            return Err(OpError::Invalid("CANCEL and EXPEDITE are not for conversions"));
        }
        if flags.contains(Flags::CONVDEADLK | Flags::NOQUEUE) {
            return Err(OpError::Invalid("CONVDEADLK cannot be combined with NOQUEUE"));
        }
        if flags.contains(Flags::QUECVT) && !granted.is_below(mode) {
            return Err(OpError::Invalid("QUECVT is only for up-conversions"));
        }
        check_common(flags)?;
        // The alternate mode of ALTPR/ALTCW may turn an up-conversion into a
        // down-conversion (PW -> EX granted as PR), which writes the LVB.
        let writes = [Some(mode), alternate_mode(mode, flags)]
            .into_iter()
            .flatten()
            .any(|m| lvb_action(Some(granted), Some(m)) == LvbAction::Write);
        if writes && flags.contains(Flags::VALBLK) && !flags.contains(Flags::IVVALBLK) && lvb.is_none() {
            return Err(OpError::Invalid("VALBLK on a conversion from PW/EX needs the value to write"));
        }
        let name = lock.name;

        let Engine { resources, locks, .. } = self;
        let res = resources.get_mut(&name).expect("a lock's resource exists");
        {
            let lock = locks.get_mut(&id).expect("checked above");
            lock.requested = Some(mode);
            lock.flags = flags;
            lock.lvb = lvb;
            lock.op_sb_flags = SbFlags::NONE;
        }
        if try_convert_now(res, locks, id, mode, flags, out) {
            grant_pending(res, locks, out);
            return Ok(name);
        }
        if flags.contains(Flags::NOQUEUE) {
            if flags.contains(Flags::NOQUEUEBAST) {
                blocking_for(res, locks, mode, id, out);
            }
            let lock = locks.get_mut(&id).expect("checked above");
            lock.requested = None;
            complete(out, id, Status::TryAgain, Some(granted), SbFlags::NONE, None);
            return Ok(name);
        }
        if would_deadlock(res, locks, id, mode, flags) {
            if !flags.contains(Flags::CONVDEADLK) {
                locks.get_mut(&id).expect("checked above").requested = None;
                complete(out, id, Status::Deadlock, Some(granted), SbFlags::NONE, None);
                return Ok(name);
            }
            // Give up the granted mode: others waiting for it may now go, and so may we.
            {
                let lock = locks.get_mut(&id).expect("checked above");
                lock.granted = Some(Mode::NL);
                lock.op_sb_flags = SbFlags::DEMOTED;
            }
            grant_pending(res, locks, out);
            if try_convert_now(res, locks, id, mode, flags, out) {
                grant_pending(res, locks, out);
                return Ok(name);
            }
            if would_deadlock(res, locks, id, mode, flags) {
                locks.get_mut(&id).expect("checked above").requested = None;
                complete(out, id, Status::Deadlock, Some(Mode::NL), SbFlags::DEMOTED, None);
                return Ok(name);
            }
        }
        res.remove_from(Queue::Granted, id);
        if flags.contains(Flags::HEADQUE) {
            res.converting.push_front(id);
        } else {
            res.converting.push_back(id);
        }
        locks.get_mut(&id).expect("checked above").queue = Queue::Converting;
        // A QUECVT conversion queued behind others may still be grantable on
        // the queue (NOORDER skips queue order); the grant pass the Linux DLM
        // runs later runs here at once, so nothing grantable is left waiting.
        grant_pending(res, locks, out);
        Ok(name)
    }

    fn unlock(&mut self, id: LockId, flags: Flags, lvb: Option<Lvb>, out: &mut Vec<Output>) -> Result<ResourceName, OpError> {
        check_known(flags)?;
        let lock = self.locks.get(&id).ok_or(OpError::UnknownLock)?;
        if lock.queue != Queue::Granted {
            return Err(OpError::Busy("the lock has a request or conversion in flight; cancel it first"));
        }
        if flags.intersects(Flags(!(Flags::VALBLK | Flags::IVVALBLK).0)) {
            return Err(OpError::Invalid("unlock takes only VALBLK and IVVALBLK"));
        }
        let granted = lock.granted.expect("grant queue locks are granted");
        let writes = lvb_action(Some(granted), None) == LvbAction::Write;
        if writes && flags.contains(Flags::VALBLK) && !flags.contains(Flags::IVVALBLK) && lvb.is_none() {
            return Err(OpError::Invalid("VALBLK on an unlock from PW/EX needs the value to write"));
        }
        let name = lock.name;
        let Engine { resources, locks, .. } = self;
        let res = resources.get_mut(&name).expect("a lock's resource exists");
        if writes {
            if flags.contains(Flags::IVVALBLK) {
                res.lvb_valid = false;
            } else if let (true, Some(value)) = (flags.contains(Flags::VALBLK), lvb) {
                write_lvb(res, value);
            }
        }
        res.remove_from(Queue::Granted, id);
        locks.remove(&id);
        complete(out, id, Status::Unlocked, None, SbFlags::NONE, None);
        grant_pending(res, locks, out);
        Ok(name)
    }

    fn cancel(&mut self, id: LockId, out: &mut Vec<Output>) -> Result<ResourceName, OpError> {
        let lock = self.locks.get(&id).ok_or(OpError::UnknownLock)?;
        let (name, queue) = (lock.name, lock.queue);
        let Engine { resources, locks, .. } = self;
        let res = resources.get_mut(&name).expect("a lock's resource exists");
        match queue {
            Queue::Granted => return Err(OpError::Busy("nothing to cancel")),
            Queue::Converting => {
                res.remove_from(Queue::Converting, id);
                res.granted.push(id);
                let lock = locks.get_mut(&id).expect("checked above");
                lock.queue = Queue::Granted;
                lock.requested = None;
                complete(out, id, Status::Cancelled, lock.granted, lock.op_sb_flags, None);
            }
            Queue::Waiting => {
                res.remove_from(Queue::Waiting, id);
                locks.remove(&id);
                complete(out, id, Status::Cancelled, None, SbFlags::NONE, None);
            }
        }
        grant_pending(res, locks, out);
        Ok(name)
    }

    fn purge(&mut self, id: LockId, out: &mut Vec<Output>) -> Result<ResourceName, OpError> {
        let lock = self.locks.remove(&id).ok_or(OpError::UnknownLock)?;
        let res = self.resources.get_mut(&lock.name).expect("a lock's resource exists");
        res.remove_from(lock.queue, id);
        if matches!(lock.granted, Some(Mode::PW | Mode::EX)) {
            res.lvb_valid = false;
        }
        grant_pending(res, &mut self.locks, out);
        Ok(lock.name)
    }

    /// Sends the blocking callbacks the new state calls for and forgets an empty resource.
    fn finish(&mut self, name: &ResourceName, out: &mut Vec<Output>) {
        let Some(res) = self.resources.get(name) else { return };
        if res.lock_count() == 0 {
            self.resources.remove(name);
            return;
        }
        send_blocking(res, &mut self.locks, out);
    }

    /// A snapshot of one lock.
    pub fn lock(&self, id: LockId) -> Option<LockView> {
        self.locks.get(&id).map(|lock| view(id, lock))
    }

    /// A snapshot of one resource.
    pub fn resource(&self, name: &ResourceName) -> Option<ResourceView> {
        let res = self.resources.get(name)?;
        let views = |ids: &mut dyn Iterator<Item = &LockId>| ids.map(|id| view(*id, &self.locks[id])).collect();
        Some(ResourceView {
            name: *name,
            granted: views(&mut res.granted.iter()),
            converting: views(&mut res.converting.iter()),
            waiting: views(&mut res.waiting.iter()),
            lvb: res.lvb_read(),
        })
    }

    /// The names of all resources, sorted.
    pub fn resource_names(&self) -> Vec<ResourceName> {
        let mut names: Vec<ResourceName> = self.resources.keys().copied().collect();
        names.sort();
        names
    }

    /// The ids of all locks, sorted.
    pub fn lock_ids(&self) -> Vec<LockId> {
        let mut ids: Vec<LockId> = self.locks.keys().copied().collect();
        ids.sort();
        ids
    }

    /// Checks every invariant listed at the top of this file; O(locks²) per resource,
    /// for tests.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut seen = 0usize;
        for (name, res) in &self.resources {
            if res.lock_count() == 0 {
                return Err(format!("{name}: empty resource kept"));
            }
            if res.lock_count() > self.limits.max_locks_per_resource {
                return Err(format!("{name}: over the per-resource limit"));
            }
            for (queue, ids) in [
                (Queue::Granted, res.granted.iter().collect::<Vec<_>>()),
                (Queue::Converting, res.converting.iter().collect()),
                (Queue::Waiting, res.waiting.iter().collect()),
            ] {
                for id in ids {
                    seen += 1;
                    let lock = self.locks.get(id).ok_or_else(|| format!("{name}: {id:?} queued but unknown"))?;
                    if lock.name != *name || lock.queue != queue {
                        return Err(format!("{name}: {id:?} is on {queue:?} but says {:?} of {}", lock.queue, lock.name));
                    }
                    let shape_ok = match queue {
                        Queue::Granted => lock.granted.is_some() && lock.requested.is_none(),
                        Queue::Converting => lock.granted.is_some() && lock.requested.is_some(),
                        Queue::Waiting => lock.granted.is_none() && lock.requested.is_some(),
                    };
                    if !shape_ok {
                        return Err(format!("{name}: {id:?} on {queue:?} with granted {:?} requested {:?}", lock.granted, lock.requested));
                    }
                }
            }
            let holders: Vec<(LockId, Mode)> =
                res.granted.iter().chain(res.converting.iter()).map(|id| (*id, self.locks[id].granted.expect("checked"))).collect();
            for (i, (a, ma)) in holders.iter().enumerate() {
                for (b, mb) in &holders[i + 1..] {
                    if !ma.compatible(*mb) {
                        return Err(format!("{name}: {a:?} {ma} and {b:?} {mb} granted together"));
                    }
                }
            }
            for (i, id) in res.converting.iter().enumerate() {
                let lock = &self.locks[id];
                let mode = lock.requested.expect("checked");
                let ordered_ok = i == 0 || lock.flags.contains(Flags::NOORDER);
                if ordered_ok && choose_mode(mode, lock.flags, |m| compatible_with_granted(res, &self.locks, m, *id)).is_some() {
                    return Err(format!("{name}: conversion {id:?} to {mode} left waiting though grantable"));
                }
            }
            for (j, id) in res.waiting.iter().enumerate() {
                let lock = &self.locks[id];
                let mode = lock.requested.expect("checked");
                let ordered_ok = lock.flags.contains(Flags::NOORDER) || (j == 0 && res.converting.is_empty());
                if ordered_ok && choose_mode(mode, lock.flags, |m| compatible_with_granted(res, &self.locks, m, *id)).is_some() {
                    return Err(format!("{name}: request {id:?} for {mode} left waiting though grantable"));
                }
            }
            for (i, ahead) in res.converting.iter().enumerate() {
                for behind in res.converting.iter().skip(i + 1) {
                    if waits_for(&self.locks[behind], &self.locks[ahead], true)
                        && waits_for(&self.locks[ahead], &self.locks[behind], false)
                    {
                        return Err(format!("{name}: conversions {ahead:?} and {behind:?} deadlock"));
                    }
                }
            }
        }
        if seen != self.locks.len() {
            return Err(format!("{} locks but {seen} queued", self.locks.len()));
        }
        if self.locks.len() > self.limits.max_locks || self.resources.len() > self.limits.max_resources {
            return Err("over the lockspace limits".into());
        }
        Ok(())
    }
}

fn view(id: LockId, lock: &Lock) -> LockView {
    LockView { id, name: lock.name, granted: lock.granted, requested: lock.requested, flags: lock.flags, queue: lock.queue }
}

fn check_known(flags: Flags) -> Result<(), OpError> {
    if flags.0 & !Flags::KNOWN.0 != 0 {
        return Err(OpError::Invalid("unsupported flag"));
    }
    Ok(())
}

fn check_common(flags: Flags) -> Result<(), OpError> {
    if flags.contains(Flags::ALTPR | Flags::ALTCW) {
        return Err(OpError::Invalid("ALTPR and ALTCW exclude each other"));
    }
    if flags.contains(Flags::NOQUEUEBAST) && !flags.contains(Flags::NOQUEUE) {
        return Err(OpError::Invalid("NOQUEUEBAST needs NOQUEUE"));
    }
    Ok(())
}

fn complete(out: &mut Vec<Output>, lock: LockId, status: Status, mode: Option<Mode>, sb_flags: SbFlags, lvb: Option<LvbRead>) {
    out.push(Output::Completion(Completion { lock, status, mode, sb_flags, lvb }));
}

/// Whether `mode` is compatible with the granted mode of every lock of `res` except `except`.
fn compatible_with_granted(res: &Resource, locks: &HashMap<LockId, Lock>, mode: Mode, except: LockId) -> bool {
    res.granted
        .iter()
        .chain(res.converting.iter())
        .filter(|id| **id != except)
        .all(|id| locks[id].granted.expect("holders are granted").compatible(mode))
}

/// The requested mode if `grantable` allows it, else the ALTPR/ALTCW alternate if that is.
fn choose_mode(mode: Mode, flags: Flags, grantable: impl Fn(Mode) -> bool) -> Option<(Mode, SbFlags)> {
    if grantable(mode) {
        return Some((mode, SbFlags::NONE));
    }
    let alternate = alternate_mode(mode, flags)?;
    grantable(alternate).then_some((alternate, SbFlags::ALTMODE))
}

/// The mode ALTPR/ALTCW offers instead of `mode`, if any.
fn alternate_mode(mode: Mode, flags: Flags) -> Option<Mode> {
    let alternate = if flags.contains(Flags::ALTPR) {
        Mode::PR
    } else if flags.contains(Flags::ALTCW) {
        Mode::CW
    } else {
        return None;
    };
    (alternate != mode).then_some(alternate)
}

/// Grants a conversion in place if the rules allow it now. `true` if granted.
fn try_convert_now(res: &mut Resource, locks: &mut HashMap<LockId, Lock>, id: LockId, mode: Mode, flags: Flags, out: &mut Vec<Output>) -> bool {
    // QUECVT queues behind existing conversions, unless HEADQUE puts it ahead of them.
    let queue_first = flags.contains(Flags::QUECVT) && !flags.contains(Flags::HEADQUE) && !res.converting.is_empty();
    if queue_first {
        return false;
    }
    match choose_mode(mode, flags, |m| compatible_with_granted(res, locks, m, id)) {
        Some((granted, sb)) => {
            grant(res, locks, id, granted, sb, out);
            true
        }
        None => false,
    }
}

/// Whether lock `a` waits for lock `b` on the convert queue: `b`'s granted mode
/// blocks `a`'s request, or `a` is behind `b` and must keep queue order.
fn waits_for(a: &Lock, b: &Lock, a_is_behind_b: bool) -> bool {
    let blocked = !b.granted.expect("converting").compatible(a.requested.expect("converting"));
    blocked || (a_is_behind_b && !a.flags.contains(Flags::NOORDER))
}

/// Whether queueing conversion `id` (at the head with HEADQUE, else the tail) closes a
/// cycle of conversions waiting for each other (docs/dlm.md, rule R6).
fn would_deadlock(res: &Resource, locks: &HashMap<LockId, Lock>, id: LockId, mode: Mode, flags: Flags) -> bool {
    let mut me = locks[&id].clone();
    me.requested = Some(mode);
    me.flags = flags;
    let at_head = flags.contains(Flags::HEADQUE);
    res.converting.iter().any(|other| {
        let other = &locks[other];
        if at_head {
            waits_for(&me, other, false) && waits_for(other, &me, true)
        } else {
            waits_for(&me, other, true) && waits_for(other, &me, false)
        }
    })
}

/// Grants `id` in `mode` (it must already be on the grant queue or be moved there by
/// the caller), moving the LVB as the transition says, and reports the completion.
fn grant(res: &mut Resource, locks: &mut HashMap<LockId, Lock>, id: LockId, mode: Mode, sb: SbFlags, out: &mut Vec<Output>) {
    let lock = locks.get_mut(&id).expect("granting a known lock");
    let mut sb_flags = lock.op_sb_flags | sb;
    let mut lvb = None;
    if lock.flags.contains(Flags::VALBLK) || lock.flags.contains(Flags::IVVALBLK) {
        match lvb_action(lock.granted, Some(mode)) {
            LvbAction::Read if lock.flags.contains(Flags::VALBLK) => {
                if !res.lvb_valid {
                    sb_flags = sb_flags | SbFlags::VALNOTVALID;
                }
                lvb = Some(res.lvb_read());
            }
            LvbAction::Write if lock.flags.contains(Flags::IVVALBLK) => res.lvb_valid = false,
            LvbAction::Write => write_lvb(res, lock.lvb.expect("checked when the conversion was accepted")),
            _ => {}
        }
    }
    lock.granted = Some(mode);
    lock.requested = None;
    lock.queue = Queue::Granted;
    lock.lvb = None;
    lock.op_sb_flags = SbFlags::NONE;
    lock.bast_allowed = ModeSet::ALL;
    complete(out, id, Status::Granted, Some(mode), sb_flags, lvb);
}

fn write_lvb(res: &mut Resource, value: Lvb) {
    res.lvb = value;
    res.lvb_seq = res.lvb_seq.wrapping_add(1);
    res.lvb_valid = true;
}

/// Grants whatever became grantable: the convert queue first (head, or NOORDER
/// conversions), rescanning after each grant, then the wait queue in order.
/// Each pass grants one lock or stops, so the loops run at most queue-length times.
fn grant_pending(res: &mut Resource, locks: &mut HashMap<LockId, Lock>, out: &mut Vec<Output>) {
    loop {
        let found = res.converting.iter().enumerate().find_map(|(i, id)| {
            let lock = &locks[id];
            let ordered_ok = i == 0 || lock.flags.contains(Flags::NOORDER);
            let mode = lock.requested.expect("converting");
            ordered_ok.then(|| choose_mode(mode, lock.flags, |m| compatible_with_granted(res, locks, m, *id)).map(|g| (i, *id, g)))?
        });
        let Some((i, id, (mode, sb))) = found else { break };
        res.converting.remove(i);
        res.granted.push(id);
        grant(res, locks, id, mode, sb, out);
    }
    loop {
        let convert_empty = res.converting.is_empty();
        let found = res.waiting.iter().enumerate().find_map(|(j, id)| {
            let lock = &locks[id];
            let ordered_ok = lock.flags.contains(Flags::NOORDER) || (j == 0 && convert_empty);
            let mode = lock.requested.expect("waiting");
            ordered_ok.then(|| choose_mode(mode, lock.flags, |m| compatible_with_granted(res, locks, m, *id)).map(|g| (j, *id, g)))?
        });
        let Some((j, id, (mode, sb))) = found else { break };
        res.waiting.remove(j);
        res.granted.push(id);
        grant(res, locks, id, mode, sb, out);
    }
}

/// Blocking callbacks for everything queued: each holder whose granted mode blocks a
/// queued mode is told, unless an earlier callback since its last grant already asked
/// it to give up at least as much (its `bast_allowed` set is within the mode's
/// compatible set).
fn send_blocking(res: &Resource, locks: &mut HashMap<LockId, Lock>, out: &mut Vec<Output>) {
    let mut waiting_by_mode = [0u32; 6];
    for id in res.converting.iter().chain(res.waiting.iter()) {
        waiting_by_mode[locks[id].requested.expect("queued") as usize] += 1;
    }
    if waiting_by_mode == [0; 6] {
        return;
    }
    for id in res.granted.iter().chain(res.converting.iter()) {
        let lock = locks.get_mut(id).expect("queued locks are known");
        for mode in BAST_ORDER {
            let own = u32::from(lock.requested == Some(mode));
            if waiting_by_mode[mode as usize] > own {
                notify_holder(*id, lock, mode, out);
            }
        }
    }
}

/// Blocking callbacks for a NOQUEUE|NOQUEUEBAST request for `mode` that is refused.
fn blocking_for(res: &Resource, locks: &mut HashMap<LockId, Lock>, mode: Mode, except: LockId, out: &mut Vec<Output>) {
    for id in res.granted.iter().chain(res.converting.iter()).filter(|id| **id != except) {
        notify_holder(*id, locks.get_mut(id).expect("queued locks are known"), mode, out);
    }
}

fn notify_holder(id: LockId, lock: &mut Lock, mode: Mode, out: &mut Vec<Output>) {
    let granted = lock.granted.expect("holders are granted");
    if granted.compatible(mode) || lock.bast_allowed.is_subset(mode.compatible_set()) {
        return;
    }
    lock.bast_allowed = lock.bast_allowed.intersect(mode.compatible_set());
    out.push(Output::Blocking { lock: id, mode });
}

#[cfg(test)]
mod rebuild_tests {
    use super::*;

    fn id(node: u32, lock: u64) -> LockId {
        LockId { node, lock }
    }

    fn rebuild(engine: &mut Engine, lock: LockId, name: &[u8], mode: Mode) -> Result<Vec<Output>, OpError> {
        let mut out = Vec::new();
        engine.apply(Input::Rebuild { lock, name: ResourceName::new(name).unwrap(), mode, lvb: None }, &mut out)?;
        engine.check_invariants().unwrap();
        Ok(out)
    }

    fn apply(engine: &mut Engine, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        engine.apply(input, &mut out).unwrap();
        engine.check_invariants().unwrap();
        out
    }

    #[test]
    fn a_rebuilt_lock_is_granted_and_blocks_others_until_unlocked() {
        let mut engine = Engine::new(Limits::default());
        let name = ResourceName::new(b"r1").unwrap();
        assert_eq!(rebuild(&mut engine, id(1, 7), b"r1", Mode::EX), Ok(vec![]), "a rebuild sends nothing");
        let view = engine.lock(id(1, 7)).unwrap();
        assert_eq!((view.granted, view.queue), (Some(Mode::EX), Queue::Granted));
        // The LVB of a rebuilt resource is invalid: no holder vouched for it.
        assert!(!engine.resource(&name).unwrap().lvb.valid);
        let out = apply(&mut engine, Input::Request { lock: id(3, 1), name, mode: Mode::EX, flags: Flags::NOQUEUE });
        assert!(matches!(out[..], [Output::Completion(Completion { status: Status::TryAgain, .. })]), "{out:?}");
        apply(&mut engine, Input::Request { lock: id(3, 2), name, mode: Mode::EX, flags: Flags::NONE });
        let out = apply(&mut engine, Input::Unlock { lock: id(1, 7), flags: Flags::NONE, lvb: None });
        let grants: Vec<_> = out.iter().filter_map(|o| match o { Output::Completion(c) => Some((c.lock, c.status)), _ => None }).collect();
        assert_eq!(grants, vec![(id(1, 7), Status::Unlocked), (id(3, 2), Status::Granted)]);
    }

    #[test]
    fn compatible_rebuilt_locks_share_a_resource_and_conflicts_are_refused() {
        let mut engine = Engine::new(Limits::default());
        rebuild(&mut engine, id(1, 1), b"r", Mode::PR).unwrap();
        rebuild(&mut engine, id(3, 1), b"r", Mode::PR).unwrap();
        assert!(matches!(rebuild(&mut engine, id(3, 2), b"r", Mode::EX), Err(OpError::Invalid(_))));
        assert_eq!(rebuild(&mut engine, id(1, 1), b"other", Mode::NL), Err(OpError::DuplicateLock));
        assert_eq!(engine.lock_count(), 2);
        // Once something waits, a rebuild would jump the queue: refused.
        let name = ResourceName::new(b"r").unwrap();
        apply(&mut engine, Input::Request { lock: id(2, 1), name, mode: Mode::EX, flags: Flags::NONE });
        assert!(matches!(rebuild(&mut engine, id(2, 2), b"r", Mode::NL), Err(OpError::Invalid(_))));
    }

    #[test]
    fn a_rebuilt_resource_takes_the_newest_lvb_vouched_for() {
        let mut engine = Engine::new(Limits::default());
        let name = ResourceName::new(b"r").unwrap();
        let read = |byte: u8, seq: u32| Some(LvbRead { value: Lvb([byte; 32]), seq, valid: true });
        let mut out = Vec::new();
        engine.apply(Input::Rebuild { lock: id(1, 1), name, mode: Mode::PR, lvb: None }, &mut out).unwrap();
        assert!(!engine.resource(&name).unwrap().lvb.valid);
        engine.apply(Input::Rebuild { lock: id(2, 1), name, mode: Mode::PR, lvb: read(7, 4) }, &mut out).unwrap();
        engine.apply(Input::Rebuild { lock: id(3, 1), name, mode: Mode::PR, lvb: read(6, 3) }, &mut out).unwrap();
        assert_eq!(engine.resource(&name).unwrap().lvb, read(7, 4).unwrap());
        engine.check_invariants().unwrap();
        // A reader gets it as the holders knew it.
        let out = apply(&mut engine, Input::Request { lock: id(3, 2), name, mode: Mode::CR, flags: Flags::VALBLK });
        assert!(matches!(out[..], [Output::Completion(Completion { lvb: Some(l), .. })] if l == read(7, 4).unwrap()), "{out:?}");
    }

    #[test]
    fn rebuilds_respect_the_limits() {
        let mut engine = Engine::new(Limits { max_locks: 1, max_resources: 1, max_locks_per_resource: 1 });
        rebuild(&mut engine, id(1, 1), b"a", Mode::NL).unwrap();
        assert!(matches!(rebuild(&mut engine, id(1, 2), b"a", Mode::NL), Err(OpError::Limit(_))));
        assert!(matches!(rebuild(&mut engine, id(1, 3), b"b", Mode::NL), Err(OpError::Limit(_))));
    }
}
