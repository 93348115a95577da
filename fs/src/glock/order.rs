//! The rule that keeps demotes from deadlocking: no thread waits for a
//! glock while holding a lock that demote work needs (the core mutex). The
//! locks a demote needs mark the thread while held ([`DemoteLockMark`]);
//! a blocking glock acquisition on a marked thread is refused with
//! [`Error::Lock`] instead of risking the deadlock. Try-locks never wait,
//! so they are allowed (the allocator takes rgrp glocks that way).

use std::cell::Cell;

use crate::error::{Error, Result};

use super::LockName;

thread_local! {
    static HELD: Cell<u32> = const { Cell::new(0) };
}

/// Marks this thread as holding a lock that demote work needs, until dropped.
pub struct DemoteLockMark(());

impl DemoteLockMark {
    pub fn new() -> Self {
        HELD.with(|h| h.set(h.get() + 1));
        DemoteLockMark(())
    }
}

impl Default for DemoteLockMark {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for DemoteLockMark {
    fn drop(&mut self) {
        HELD.with(|h| h.set(h.get() - 1));
    }
}

/// Whether this thread holds a lock that demote work needs.
pub fn holds_demote_lock() -> bool {
    HELD.with(|h| h.get() > 0)
}

/// Refuses a blocking acquisition of `name` on a marked thread.
pub fn check_may_wait(name: LockName) -> Result<()> {
    if holds_demote_lock() {
        return Err(Error::Lock(format!(
            "glock {name}: blocking acquisition while holding the core mutex (lock order: glocks first)"
        )));
    }
    Ok(())
}
