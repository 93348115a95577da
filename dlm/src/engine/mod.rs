//! The pure lock engine: the Linux DLM's rules as a state machine, no I/O.
//!
//! One [`Engine`] holds the resources of one lockspace that this node masters. The
//! daemon feeds it [`Input`]s and delivers the [`Output`]s; the rules are listed in
//! docs/dlm.md and tested by `dlm/tests/cases/*.txt` and a model-based property test.

mod flags;
mod lvb;
mod machine;
mod mode;
mod name;

pub use flags::{Flags, SbFlags};
pub use lvb::{lvb_action, Lvb, LvbAction, LvbRead, LVB_MAX_BYTES};
pub use machine::{Completion, Engine, Input, Limits, LockId, LockView, OpError, Output, Queue, ResourceView, Status};
pub use mode::{Mode, ModeSet};
pub use name::{BadNameLength, ResourceName, RESOURCE_NAME_MAX_BYTES};
