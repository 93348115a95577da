//! A granted glock holder: while it lives, the glock stays in a state that
//! covers it (no demote runs); dropping it releases it.

use std::sync::Arc;

use super::table::Entry;
use super::GlockState;

/// One granted holder (the kernel's `gfs2_holder` once granted).
#[must_use = "a holder releases its glock when dropped"]
pub struct Holder {
    entry: Arc<Entry>,
    /// The mode it is counted in.
    held: GlockState,
    node_scope: bool,
}

impl Holder {
    pub(crate) fn new(entry: Arc<Entry>, held: GlockState, node_scope: bool) -> Self {
        Holder { entry, held, node_scope }
    }

    /// The mode this holder has the glock in.
    pub fn mode(&self) -> GlockState {
        self.held
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.entry.release(self.held, self.node_scope);
    }
}

impl std::fmt::Debug for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Holder").field("held", &self.held).finish()
    }
}
