//! Conversions between wire messages and engine types. Everything that comes from
//! the network is checked here and turned into a typed error, never a panic.

use super::generated as pb;
use crate::engine::{Completion, Lvb, Mode, OpError, ResourceName, Status, LVB_MAX_BYTES};

/// The engine mode of a wire mode.
pub fn mode_from_wire(value: i32) -> Option<Mode> {
    u32::try_from(value).ok().and_then(Mode::from_number)
}

/// The wire mode of an engine mode.
pub fn mode_to_wire(mode: Mode) -> i32 {
    mode as i32
}

/// The wire status of an engine status.
pub fn status_to_wire(status: Status) -> pb::Status {
    match status {
        Status::Granted => pb::Status::Granted,
        Status::TryAgain => pb::Status::TryAgain,
        Status::Unlocked => pb::Status::Unlocked,
        Status::Cancelled => pb::Status::Cancelled,
        Status::Deadlock => pb::Status::Deadlock,
    }
}

/// The engine status of a wire status.
pub fn status_from_wire(value: i32) -> Option<Status> {
    Some(match pb::Status::try_from(value).ok()? {
        pb::Status::Granted => Status::Granted,
        pb::Status::TryAgain => Status::TryAgain,
        pb::Status::Unlocked => Status::Unlocked,
        pb::Status::Cancelled => Status::Cancelled,
        pb::Status::Deadlock => Status::Deadlock,
    })
}

/// Stable error codes of `OpFailed.error`.
pub mod codes {
    /// Flags or modes the rules forbid.
    pub const INVALID: &str = "invalid";
    /// No lock with that id.
    pub const UNKNOWN_LOCK: &str = "unknown-lock";
    /// The id is in use.
    pub const DUPLICATE_LOCK: &str = "duplicate-lock";
    /// An operation is in flight on the lock, or nothing to cancel.
    pub const BUSY: &str = "busy";
    /// A limit was reached.
    pub const LIMIT: &str = "limit";
    /// Resource name empty or longer than 64 bytes.
    pub const BAD_NAME: &str = "bad-name";
    /// LVB of the wrong length.
    pub const BAD_LVB: &str = "bad-lvb";
    /// The resource's master cannot be reached.
    pub const UNREACHABLE: &str = "unreachable";
    /// The message is not allowed here.
    pub const PROTOCOL: &str = "protocol";
}

/// The wire code of an engine error.
pub fn op_error_code(error: &OpError) -> &'static str {
    match error {
        OpError::Invalid(_) => codes::INVALID,
        OpError::UnknownLock => codes::UNKNOWN_LOCK,
        OpError::DuplicateLock => codes::DUPLICATE_LOCK,
        OpError::Busy(_) => codes::BUSY,
        OpError::Limit(_) => codes::LIMIT,
    }
}

/// A wire-level refusal: code and detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireError {
    /// One of [`codes`].
    pub code: &'static str,
    /// For people.
    pub detail: String,
}

impl WireError {
    /// A refusal.
    pub fn new(code: &'static str, detail: impl Into<String>) -> WireError {
        WireError { code, detail: detail.into() }
    }
}

/// Checks a wire mode.
pub fn check_mode(value: i32) -> Result<Mode, WireError> {
    mode_from_wire(value).ok_or_else(|| WireError::new(codes::INVALID, format!("no mode numbered {value}")))
}

/// Checks a resource name.
pub fn check_name(bytes: &[u8]) -> Result<ResourceName, WireError> {
    ResourceName::new(bytes).map_err(|e| WireError::new(codes::BAD_NAME, e.to_string()))
}

/// Checks an LVB: empty (none) or exactly `lvb_len` bytes.
pub fn check_lvb(bytes: &[u8], lvb_len: u32) -> Result<Option<Lvb>, WireError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    if bytes.len() != lvb_len as usize || bytes.len() > LVB_MAX_BYTES {
        return Err(WireError::new(codes::BAD_LVB, format!("LVB of {} bytes in a lockspace of {lvb_len}", bytes.len())));
    }
    Ok(Lvb::from_slice(bytes))
}

/// Whether `lvb_len` is a valid lockspace LVB length (8, 16, 24 or 32).
pub fn valid_lvb_len(lvb_len: u32) -> bool {
    lvb_len.is_multiple_of(8) && (8..=LVB_MAX_BYTES as u32).contains(&lvb_len)
}

fn event(kind: pb::event::Kind) -> pb::Event {
    pb::Event { kind: Some(kind) }
}

/// The wire event of an engine completion, with the LVB cut to `lvb_len`.
pub fn completion_event(c: &Completion, lvb_len: u32) -> pb::Event {
    let lock_gone = c.mode.is_none();
    event(pb::event::Kind::Completion(pb::Completion {
        client_lock_id: 0,
        status: status_to_wire(c.status) as i32,
        granted_mode: c.mode.map(mode_to_wire).unwrap_or(0),
        sb_flags: c.sb_flags.0,
        has_lvb: c.lvb.is_some(),
        lvb: c.lvb.map(|l| l.value.0[..lvb_len as usize].to_vec()).unwrap_or_default(),
        lvb_seq: c.lvb.map(|l| l.seq).unwrap_or(0),
        lock_gone,
    }))
}

/// The wire event of a blocking callback.
pub fn blocking_event(mode: Mode) -> pb::Event {
    event(pb::event::Kind::Blocking(pb::Blocking { client_lock_id: 0, mode: mode_to_wire(mode) }))
}

/// The wire event of a refused operation.
pub fn failed_event(op: pb::OpKind, error: &WireError) -> pb::Event {
    event(pb::event::Kind::Failed(pb::OpFailed {
        client_lock_id: 0,
        op: op as i32,
        error: error.code.to_string(),
        detail: error.detail.clone(),
    }))
}

/// Sets the client lock id inside an event.
pub fn set_event_lock_id(event: &mut pb::Event, id: u64) {
    match event.kind.as_mut() {
        Some(pb::event::Kind::Completion(c)) => c.client_lock_id = id,
        Some(pb::event::Kind::Blocking(b)) => b.client_lock_id = id,
        Some(pb::event::Kind::Failed(f)) => f.client_lock_id = id,
        None => {}
    }
}

/// The client lock id inside an op, and its kind.
pub fn op_lock_id(op: &pb::Op) -> Option<(u64, pb::OpKind)> {
    Some(match op.kind.as_ref()? {
        pb::op::Kind::Request(r) => (r.client_lock_id, pb::OpKind::OpRequest),
        pb::op::Kind::Convert(c) => (c.client_lock_id, pb::OpKind::OpConvert),
        pb::op::Kind::Unlock(u) => (u.client_lock_id, pb::OpKind::OpUnlock),
        pb::op::Kind::Cancel(c) => (c.client_lock_id, pb::OpKind::OpCancel),
        pb::op::Kind::Purge(p) => (p.client_lock_id, pb::OpKind::OpPurge),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_statuses_round_trip() {
        for mode in Mode::ALL {
            assert_eq!(mode_from_wire(mode_to_wire(mode)), Some(mode));
        }
        assert_eq!(mode_from_wire(6), None);
        assert_eq!(mode_from_wire(-1), None);
        for status in [Status::Granted, Status::TryAgain, Status::Unlocked, Status::Cancelled, Status::Deadlock] {
            assert_eq!(status_from_wire(status_to_wire(status) as i32), Some(status));
        }
        assert_eq!(status_from_wire(99), None);
    }

    #[test]
    fn lvb_lengths_are_checked() {
        assert_eq!(check_lvb(&[], 32), Ok(None));
        assert!(check_lvb(&[1; 32], 32).unwrap().is_some());
        assert_eq!(check_lvb(&[1; 16], 32).unwrap_err().code, codes::BAD_LVB);
        assert!(valid_lvb_len(8) && valid_lvb_len(32) && !valid_lvb_len(0) && !valid_lvb_len(12) && !valid_lvb_len(40));
    }
}
