//! Property test: the lock engine against an independent, deliberately simple model of
//! the DLM rules (docs/dlm.md §A.2–A.7).
//!
//! The model keeps every lock in one flat list with a queue letter and an arrival
//! ticket (HEADQUE takes a ticket below all others), recomputes queue order by
//! sorting, finds conversion deadlocks as cycles in a waits-for graph (the engine uses
//! a pairwise test), decides LVB transfers from lattice ranks (the engine uses a
//! transition table) and blocking-callback de-duplication from the list of modes a
//! holder was told about (the engine keeps a bit set).
//!
//! Covered: requests, conversions, unlocks, cancels and purges with every implemented
//! flag, on 3 resources and 6 lock ids; after every step the outputs (as a multiset),
//! each lock's granted/requested mode and queue, queue order, the LVB and the engine's
//! own invariants must agree. Not covered here: limits (see tests/cases), resource
//! names longer than one byte, several nodes (LockId.node is always 1).
//! proptest prints the failing seed and the shrunk sequence of operations.

use std::collections::BTreeMap;

use proptest::prelude::*;
use rgfs_dlm::engine::{Engine, Flags, Input, Limits, LockId, Lvb, Mode, OpError, Output, ResourceName, SbFlags, Status};

#[derive(Clone, Debug)]
enum Op {
    Request { id: u64, res: u8, mode: Mode, flags: Flags },
    Convert { id: u64, mode: Mode, flags: Flags, lvb: Option<u8> },
    Unlock { id: u64, flags: Flags, lvb: Option<u8> },
    Cancel { id: u64 },
    Purge { id: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Q {
    G,
    C,
    W,
}

#[derive(Clone, Debug)]
struct MLock {
    id: u64,
    res: u8,
    gr: Option<Mode>,
    rq: Option<Mode>,
    flags: Flags,
    q: Q,
    ticket: i64,
    lvb: Option<u8>,
    demoted: bool,
    told: Vec<Mode>,
}

#[derive(Clone, Debug, Default)]
struct MRes {
    value: u8,
    seq: u32,
    invalid: bool,
}

#[derive(Default)]
struct Model {
    locks: Vec<MLock>,
    res: BTreeMap<u8, MRes>,
    tail: i64,
    head: i64,
    out: Vec<String>,
}

/// Position in the lattice NL < CR < CW = PR < PW < EX.
fn rank(m: Mode) -> u8 {
    match m {
        Mode::NL => 0,
        Mode::CR => 1,
        Mode::CW | Mode::PR => 2,
        Mode::PW => 3,
        Mode::EX => 4,
    }
}

fn strong(m: Option<Mode>) -> bool {
    matches!(m, Some(Mode::PW) | Some(Mode::EX))
}

fn lvb_value(byte: u8) -> Lvb {
    Lvb([byte; 32])
}

impl Model {
    fn find(&self, id: u64) -> Option<usize> {
        self.locks.iter().position(|l| l.id == id)
    }

    fn on(&self, res: u8, q: Q) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.locks.len()).filter(|&i| self.locks[i].res == res && self.locks[i].q == q).collect();
        v.sort_by_key(|&i| self.locks[i].ticket);
        v
    }

    fn fits(&self, res: u8, mode: Mode, except: u64) -> bool {
        self.locks.iter().filter(|l| l.res == res && l.id != except).filter_map(|l| l.gr).all(|g| g.compatible(mode))
    }

    fn pick(&self, i: usize, fits: impl Fn(Mode) -> bool) -> Option<(Mode, bool)> {
        let l = &self.locks[i];
        let mode = l.rq.unwrap();
        if fits(mode) {
            return Some((mode, false));
        }
        let alt = if l.flags.contains(Flags::ALTPR) {
            Mode::PR
        } else if l.flags.contains(Flags::ALTCW) {
            Mode::CW
        } else {
            return None;
        };
        (alt != mode && fits(alt)).then_some((alt, true))
    }

    fn ticket(&mut self, headque: bool) -> i64 {
        if headque {
            self.head -= 1;
            self.head
        } else {
            self.tail += 1;
            self.tail
        }
    }

    fn do_grant(&mut self, i: usize, mode: Mode, alt: bool) {
        let res = self.locks[i].res;
        let l = self.locks[i].clone();
        let r = self.res.get_mut(&res).unwrap();
        let writes = strong(l.gr) && !(l.gr == Some(Mode::PW) && mode == Mode::EX);
        let reads = !writes && (l.gr.is_none() || rank(mode) >= rank(l.gr.unwrap()));
        let mut text = format!("grant {} {mode}", l.id);
        let mut sb = SbFlags::NONE;
        if l.demoted {
            sb = sb | SbFlags::DEMOTED;
        }
        if alt {
            sb = sb | SbFlags::ALTMODE;
        }
        let mut lvb = None;
        if writes && l.flags.contains(Flags::IVVALBLK) {
            r.invalid = true;
        } else if writes && l.flags.contains(Flags::VALBLK) {
            r.value = l.lvb.unwrap();
            r.seq += 1;
            r.invalid = false;
        } else if reads && l.flags.contains(Flags::VALBLK) {
            if r.invalid {
                sb = sb | SbFlags::VALNOTVALID;
            }
            lvb = Some((r.value, r.seq));
        }
        if sb.0 != 0 {
            text += &format!(" sb={}", sb.0);
        }
        if let Some((v, s)) = lvb {
            text += &format!(" lvb={v}#{s}");
        }
        self.out.push(text);
        let l = &mut self.locks[i];
        l.gr = Some(mode);
        l.rq = None;
        l.q = Q::G;
        l.demoted = false;
        l.told.clear();
        l.lvb = None;
    }

    fn grant_pending(&mut self, res: u8) {
        for _ in 0..64 {
            let conv = self.on(res, Q::C);
            let mut chosen = None;
            for (k, &i) in conv.iter().enumerate() {
                if k == 0 || self.locks[i].flags.contains(Flags::NOORDER) {
                    let id = self.locks[i].id;
                    if let Some(g) = self.pick(i, |m| self.fits(res, m, id)) {
                        chosen = Some((i, g));
                        break;
                    }
                }
            }
            if chosen.is_none() {
                for (k, &i) in self.on(res, Q::W).iter().enumerate() {
                    if self.locks[i].flags.contains(Flags::NOORDER) || (k == 0 && conv.is_empty()) {
                        let id = self.locks[i].id;
                        if let Some(g) = self.pick(i, |m| self.fits(res, m, id)) {
                            chosen = Some((i, g));
                            break;
                        }
                    }
                }
            }
            match chosen {
                Some((i, (mode, alt))) => self.do_grant(i, mode, alt),
                None => return,
            }
        }
        panic!("model grant loop did not settle");
    }

    /// Is there a cycle in the waits-for graph of the convert queue of `res`?
    fn has_cycle(&self, res: u8) -> bool {
        let conv = self.on(res, Q::C);
        let waits = |a: usize, b: usize| {
            let (la, lb) = (&self.locks[conv[a]], &self.locks[conv[b]]);
            !lb.gr.unwrap().compatible(la.rq.unwrap()) || (b < a && !la.flags.contains(Flags::NOORDER))
        };
        let n = conv.len();
        // reach[a][b]: a waits (transitively) for b. Floyd–Warshall on at most 6 nodes.
        let mut reach: Vec<Vec<bool>> = (0..n).map(|a| (0..n).map(|b| a != b && waits(a, b)).collect()).collect();
        for k in 0..n {
            for a in 0..n {
                for b in 0..n {
                    if reach[a][k] && reach[k][b] {
                        reach[a][b] = true;
                    }
                }
            }
        }
        (0..n).any(|a| reach[a][a])
    }

    fn tell(&mut self, res: u8, blocked: &[(u64, Mode)]) {
        let holders: Vec<usize> = (0..self.locks.len()).filter(|&i| self.locks[i].res == res && self.locks[i].gr.is_some()).collect();
        for i in holders {
            let mut modes: Vec<Mode> =
                blocked.iter().filter(|(id, _)| *id != self.locks[i].id).map(|(_, m)| *m).collect();
            modes.sort_by(|a, b| b.cmp(a));
            modes.dedup();
            for m in modes {
                let l = &self.locks[i];
                if l.gr.unwrap().compatible(m) {
                    continue;
                }
                // Already covered: every mode allowed by what it was told is allowed by m.
                let covered = !l.told.is_empty()
                    && Mode::ALL.iter().all(|k| !l.told.iter().all(|t| k.compatible(*t)) || k.compatible(m));
                if !covered {
                    self.out.push(format!("bast {} {m}", l.id));
                    self.locks[i].told.push(m);
                }
            }
        }
    }

    fn finish(&mut self, res: u8) {
        if !self.locks.iter().any(|l| l.res == res) {
            self.res.remove(&res);
            return;
        }
        let blocked: Vec<(u64, Mode)> = self.locks.iter().filter(|l| l.res == res && l.rq.is_some() && l.q != Q::G).map(|l| (l.id, l.rq.unwrap())).collect();
        self.tell(res, &blocked);
    }

    fn apply(&mut self, op: &Op) -> Result<(), &'static str> {
        self.out.clear();
        let res = match *op {
            Op::Request { id, res, mode, flags } => {
                let bad = flags.intersects(Flags::QUECVT | Flags::CONVDEADLK)
                    || (flags.contains(Flags::EXPEDITE) && (mode != Mode::NL || flags.contains(Flags::NOQUEUE)))
                    || flags.contains(Flags::ALTPR | Flags::ALTCW)
                    || (flags.contains(Flags::NOQUEUEBAST) && !flags.contains(Flags::NOQUEUE));
                if bad {
                    return Err("invalid");
                }
                if self.find(id).is_some() {
                    return Err("duplicate");
                }
                self.res.entry(res).or_default();
                let fits_now = |m: Mode| {
                    flags.contains(Flags::EXPEDITE)
                        || (self.fits(res, m, id)
                            && (flags.contains(Flags::NOORDER)
                                || self.locks.iter().all(|l| l.res != res || l.q == Q::G)
                                || (flags.contains(Flags::HEADQUE) && self.locks.iter().all(|l| l.res != res || l.q != Q::C))))
                };
                let choice = if fits_now(mode) {
                    Some((mode, false))
                } else if flags.contains(Flags::ALTPR) && mode != Mode::PR && fits_now(Mode::PR) {
                    Some((Mode::PR, true))
                } else if flags.contains(Flags::ALTCW) && mode != Mode::CW && fits_now(Mode::CW) {
                    Some((Mode::CW, true))
                } else {
                    None
                };
                let ticket = self.ticket(flags.contains(Flags::HEADQUE));
                self.locks.push(MLock { id, res, gr: None, rq: Some(mode), flags, q: Q::W, ticket, lvb: None, demoted: false, told: vec![] });
                let i = self.locks.len() - 1;
                if let Some((m, alt)) = choice {
                    self.do_grant(i, m, alt);
                } else if flags.contains(Flags::NOQUEUE) {
                    if flags.contains(Flags::NOQUEUEBAST) {
                        self.tell(res, &[(id, mode)]);
                    }
                    self.locks.remove(i);
                    self.out.push(format!("tryagain {id}"));
                }
                res
            }
            Op::Convert { id, mode, flags, lvb } => {
                let i = self.find(id).ok_or("unknown")?;
                if self.locks[i].q != Q::G {
                    return Err("busy");
                }
                let gr = self.locks[i].gr.unwrap();
                let up = rank(mode) > rank(gr);
                // An alternate mode (PR/CW) granted from PW/EX is a down-conversion.
                let alt = (flags.contains(Flags::ALTPR) && mode != Mode::PR)
                    || (!flags.contains(Flags::ALTPR) && flags.contains(Flags::ALTCW) && mode != Mode::CW);
                let writes = strong(Some(gr)) && (!(gr == Mode::PW && mode == Mode::EX) || alt);
                let bad = flags.contains(Flags::EXPEDITE)
                    || flags.contains(Flags::CONVDEADLK | Flags::NOQUEUE)
                    || (flags.contains(Flags::QUECVT) && !up)
                    || flags.contains(Flags::ALTPR | Flags::ALTCW)
                    || (flags.contains(Flags::NOQUEUEBAST) && !flags.contains(Flags::NOQUEUE))
                    || (writes && flags.contains(Flags::VALBLK) && !flags.contains(Flags::IVVALBLK) && lvb.is_none());
                if bad {
                    return Err("invalid");
                }
                let res = self.locks[i].res;
                {
                    let l = &mut self.locks[i];
                    l.rq = Some(mode);
                    l.flags = flags;
                    l.lvb = lvb;
                }
                if self.convert_now(i) {
                    self.grant_pending(res);
                    return self.done(res);
                }
                if flags.contains(Flags::NOQUEUE) {
                    if flags.contains(Flags::NOQUEUEBAST) {
                        self.tell(res, &[(id, mode)]);
                    }
                    self.locks[i].rq = None;
                    self.out.push(format!("tryagain {id} {gr}"));
                    return self.done(res);
                }
                if self.cycle_if_queued(i) {
                    if !flags.contains(Flags::CONVDEADLK) {
                        self.locks[i].rq = None;
                        self.out.push(format!("deadlock {id} {gr}"));
                        return self.done(res);
                    }
                    self.locks[i].gr = Some(Mode::NL);
                    self.locks[i].demoted = true;
                    self.grant_pending(res);
                    if self.convert_now(i) {
                        self.grant_pending(res);
                        return self.done(res);
                    }
                    if self.cycle_if_queued(i) {
                        self.locks[i].rq = None;
                        self.locks[i].demoted = false;
                        self.out.push(format!("deadlock {id} NL sb=1"));
                        return self.done(res);
                    }
                }
                self.locks[i].q = Q::C;
                self.locks[i].ticket = self.ticket(flags.contains(Flags::HEADQUE));
                // Queued behind others by QUECVT, a NOORDER conversion may be
                // grantable on the queue: the grant pass runs at once.
                self.grant_pending(res);
                res
            }
            Op::Unlock { id, flags, lvb } => {
                let i = self.find(id).ok_or("unknown")?;
                if self.locks[i].q != Q::G {
                    return Err("busy");
                }
                let writes = strong(self.locks[i].gr);
                if flags.intersects(Flags(!(Flags::VALBLK | Flags::IVVALBLK).0))
                    || (writes && flags.contains(Flags::VALBLK) && !flags.contains(Flags::IVVALBLK) && lvb.is_none())
                {
                    return Err("invalid");
                }
                let l = self.locks.remove(i);
                let r = self.res.get_mut(&l.res).unwrap();
                if writes && flags.contains(Flags::IVVALBLK) {
                    r.invalid = true;
                } else if writes && flags.contains(Flags::VALBLK) {
                    r.value = lvb.unwrap();
                    r.seq += 1;
                    r.invalid = false;
                }
                self.out.push(format!("unlock {id}"));
                self.grant_pending(l.res);
                l.res
            }
            Op::Cancel { id } => {
                let i = self.find(id).ok_or("unknown")?;
                let res = self.locks[i].res;
                match self.locks[i].q {
                    Q::G => return Err("busy"),
                    Q::C => {
                        let l = &mut self.locks[i];
                        l.q = Q::G;
                        l.rq = None;
                        let sb = if l.demoted { " sb=1" } else { "" };
                        self.out.push(format!("cancel {id} {}{sb}", l.gr.unwrap()));
                        l.demoted = false;
                    }
                    Q::W => {
                        self.locks.remove(i);
                        self.out.push(format!("cancel {id}"));
                    }
                }
                self.grant_pending(res);
                res
            }
            Op::Purge { id } => {
                let i = self.find(id).ok_or("unknown")?;
                let l = self.locks.remove(i);
                if strong(l.gr) {
                    self.res.get_mut(&l.res).unwrap().invalid = true;
                }
                self.grant_pending(l.res);
                l.res
            }
        };
        self.done(res)
    }

    fn done(&mut self, res: u8) -> Result<(), &'static str> {
        self.finish(res);
        Ok(())
    }

    /// Grants conversion `i` in place if allowed now.
    fn convert_now(&mut self, i: usize) -> bool {
        let l = &self.locks[i];
        let res = l.res;
        if l.flags.contains(Flags::QUECVT) && !l.flags.contains(Flags::HEADQUE) && !self.on(res, Q::C).is_empty() {
            return false;
        }
        let id = l.id;
        match self.pick(i, |m| self.fits(res, m, id)) {
            Some((m, alt)) => {
                self.do_grant(i, m, alt);
                true
            }
            None => false,
        }
    }

    /// Would queueing conversion `i` close a cycle? Tries it and undoes.
    fn cycle_if_queued(&mut self, i: usize) -> bool {
        let saved = (self.locks[i].q, self.locks[i].ticket, self.head, self.tail);
        self.locks[i].q = Q::C;
        self.locks[i].ticket = self.ticket(self.locks[i].flags.contains(Flags::HEADQUE));
        let cycle = self.has_cycle(self.locks[i].res);
        (self.locks[i].q, self.locks[i].ticket, self.head, self.tail) = saved;
        cycle
    }
}

fn render(output: &Output) -> String {
    match output {
        Output::Blocking { lock, mode } => format!("bast {} {mode}", lock.lock),
        Output::Completion(c) => {
            let id = c.lock.lock;
            let mut text = match c.status {
                Status::Granted => format!("grant {id} {}", c.mode.unwrap()),
                Status::TryAgain => format!("tryagain {id}{}", c.mode.map(|m| format!(" {m}")).unwrap_or_default()),
                Status::Deadlock => format!("deadlock {id} {}", c.mode.unwrap()),
                Status::Cancelled => format!("cancel {id}{}", c.mode.map(|m| format!(" {m}")).unwrap_or_default()),
                Status::Unlocked => format!("unlock {id}"),
            };
            if c.sb_flags.0 != 0 {
                text += &format!(" sb={}", c.sb_flags.0);
            }
            if let Some(lvb) = c.lvb {
                text += &format!(" lvb={}#{}", lvb.value.0[0], lvb.seq);
            }
            text
        }
    }
}

fn error_kind(error: &OpError) -> &'static str {
    match error {
        OpError::Invalid(_) => "invalid",
        OpError::UnknownLock => "unknown",
        OpError::DuplicateLock => "duplicate",
        OpError::Busy(_) => "busy",
        OpError::Limit(_) => "limit",
    }
}

fn name(res: u8) -> ResourceName {
    ResourceName::new(&[b'a' + res]).unwrap()
}

fn to_input(op: &Op) -> Input {
    let lock = |id: u64| LockId { node: 1, lock: id };
    match *op {
        Op::Request { id, res, mode, flags } => Input::Request { lock: lock(id), name: name(res), mode, flags },
        Op::Convert { id, mode, flags, lvb } => Input::Convert { lock: lock(id), mode, flags, lvb: lvb.map(lvb_value) },
        Op::Unlock { id, flags, lvb } => Input::Unlock { lock: lock(id), flags, lvb: lvb.map(lvb_value) },
        Op::Cancel { id } => Input::Cancel { lock: lock(id) },
        Op::Purge { id } => Input::Purge { lock: lock(id) },
    }
}

fn compare_state(engine: &Engine, model: &Model) -> Result<(), String> {
    if engine.lock_count() != model.locks.len() {
        return Err(format!("engine has {} locks, model {}", engine.lock_count(), model.locks.len()));
    }
    for l in &model.locks {
        let v = engine.lock(LockId { node: 1, lock: l.id }).ok_or(format!("lock {} missing", l.id))?;
        let q = match v.queue {
            rgfs_dlm::engine::Queue::Granted => Q::G,
            rgfs_dlm::engine::Queue::Converting => Q::C,
            rgfs_dlm::engine::Queue::Waiting => Q::W,
        };
        if (v.granted, v.requested, q) != (l.gr, l.rq, l.q) {
            return Err(format!("lock {}: engine {:?} {:?} {q:?}, model {:?} {:?} {:?}", l.id, v.granted, v.requested, l.gr, l.rq, l.q));
        }
    }
    if engine.resource_count() != model.res.len() {
        return Err(format!("engine has {} resources, model {}", engine.resource_count(), model.res.len()));
    }
    for (res, mr) in &model.res {
        let view = engine.resource(&name(*res)).ok_or(format!("resource {res} missing"))?;
        let order = |ids: Vec<u64>| ids;
        let conv = order(view.converting.iter().map(|l| l.id.lock).collect());
        let wait = order(view.waiting.iter().map(|l| l.id.lock).collect());
        let mconv: Vec<u64> = model.on(*res, Q::C).iter().map(|&i| model.locks[i].id).collect();
        let mwait: Vec<u64> = model.on(*res, Q::W).iter().map(|&i| model.locks[i].id).collect();
        if conv != mconv || wait != mwait {
            return Err(format!("resource {res}: queues {conv:?} {wait:?}, model {mconv:?} {mwait:?}"));
        }
        let lvb = (view.lvb.value.0[0], view.lvb.seq, !view.lvb.valid);
        if lvb != (mr.value, mr.seq, mr.invalid) {
            return Err(format!("resource {res}: lvb {lvb:?}, model {:?}", (mr.value, mr.seq, mr.invalid)));
        }
    }
    Ok(())
}

fn flags_strategy() -> impl Strategy<Value = Flags> {
    let pool = [
        Flags::NOQUEUE,
        Flags::VALBLK,
        Flags::QUECVT,
        Flags::IVVALBLK,
        Flags::CONVDEADLK,
        Flags::EXPEDITE,
        Flags::NOQUEUEBAST,
        Flags::HEADQUE,
        Flags::NOORDER,
        Flags::ALTPR,
        Flags::ALTCW,
    ];
    proptest::collection::vec(0..40usize, 0..3).prop_map(move |picks| {
        picks.into_iter().filter(|&p| p < pool.len()).fold(Flags::NONE, |acc, p| acc | pool[p])
    })
}

fn mode_strategy() -> impl Strategy<Value = Mode> {
    (0..6u32).prop_map(|n| Mode::from_number(n).unwrap())
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let id = 0..6u64;
    let lvb = proptest::option::weighted(0.7, 1..255u8);
    prop_oneof![
        4 => (id.clone(), 0..3u8, mode_strategy(), flags_strategy()).prop_map(|(id, res, mode, flags)| Op::Request { id, res, mode, flags }),
        4 => (id.clone(), mode_strategy(), flags_strategy(), lvb.clone()).prop_map(|(id, mode, flags, lvb)| Op::Convert { id, mode, flags, lvb }),
        2 => (id.clone(), flags_strategy(), lvb).prop_map(|(id, flags, lvb)| Op::Unlock { id, flags, lvb }),
        1 => id.clone().prop_map(|id| Op::Cancel { id }),
        1 => id.prop_map(|id| Op::Purge { id }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(4096),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_matches_model(ops in proptest::collection::vec(op_strategy(), 1..80)) {
        let mut engine = Engine::new(Limits::default());
        let mut model = Model::default();
        for (step, op) in ops.iter().enumerate() {
            let mut out = Vec::new();
            let engine_result = engine.apply(to_input(op), &mut out).map_err(|e| error_kind(&e));
            let model_result = model.apply(op);
            prop_assert_eq!(engine_result, model_result, "step {} {:?}", step, op);
            let mut actual: Vec<String> = out.iter().map(render).collect();
            let mut expected = model.out.clone();
            actual.sort();
            expected.sort();
            prop_assert_eq!(actual, expected, "step {} {:?}", step, op);
            if let Err(e) = engine.check_invariants() {
                prop_assert!(false, "step {} {:?}: invariant: {}", step, op, e);
            }
            if let Err(e) = compare_state(&engine, &model) {
                prop_assert!(false, "step {} {:?}: {}", step, op, e);
            }
        }
    }
}
