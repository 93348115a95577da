//! Lock value blocks: 32 bytes kept by the resource, with a sequence number and a
//! validity flag (docs/dlm.md §A.5).
//!
//! Invariants:
//! - A resource's LVB sequence number only grows, by one per write.
//! - The LVB becomes valid only by a write from a PW/EX holder, and invalid only by
//!   IVVALBLK or by the purge of a PW/EX holder.

use super::mode::Mode;

/// Largest LVB in bytes (the Linux DLM's user LVB length; GFS2 uses 32).
pub const LVB_MAX_BYTES: usize = 32;

/// The contents of a lock value block. Lockspaces with a shorter LVB use a prefix;
/// the rest stays zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Lvb(pub [u8; LVB_MAX_BYTES]);

impl Lvb {
    /// Builds an LVB from up to 32 bytes, zero-padded; `None` if longer.
    pub fn from_slice(bytes: &[u8]) -> Option<Lvb> {
        if bytes.len() > LVB_MAX_BYTES {
            return None;
        }
        let mut value = [0u8; LVB_MAX_BYTES];
        value[..bytes.len()].copy_from_slice(bytes);
        Some(Lvb(value))
    }
}

/// An LVB handed back to a lock holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LvbRead {
    /// The resource's value.
    pub value: Lvb,
    /// Number of writes since the resource was created.
    pub seq: u32,
    /// False after IVVALBLK or the purge of a PW/EX holder, until the next write.
    pub valid: bool,
}

/// What a transition from one mode to another does with the LVB (when VALBLK is set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LvbAction {
    /// The resource's LVB is returned to the holder.
    Read,
    /// The holder's LVB is written to the resource (or invalidated with IVVALBLK).
    Write,
    /// Nothing moves.
    Nothing,
}

/// The LVB rule of a transition: `from` is the granted mode (None for a new
/// request), `to` the requested mode (None for an unlock).
/// - new requests and conversions that are not downward from NL/CR/CW/PR read;
/// - from PW or EX, anything except PW->EX writes (PW->EX reads);
/// - downward conversions among NL/CR/CW/PR and unlocks below PW do nothing.
pub fn lvb_action(from: Option<Mode>, to: Option<Mode>) -> LvbAction {
    match (from, to) {
        (None, _) => LvbAction::Read,
        (Some(Mode::PW), Some(Mode::EX)) => LvbAction::Read,
        (Some(Mode::PW | Mode::EX), _) => LvbAction::Write,
        (Some(_), None) => LvbAction::Nothing,
        (Some(from), Some(to)) if to.is_below(from) => LvbAction::Nothing,
        (Some(_), Some(_)) => LvbAction::Read,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_only_from_pw_or_ex() {
        for from in Mode::ALL {
            for to in Mode::ALL.map(Some).into_iter().chain([None]) {
                let action = lvb_action(Some(from), to);
                let pw_to_ex = from == Mode::PW && to == Some(Mode::EX);
                assert_eq!(action == LvbAction::Write, from >= Mode::PW && !pw_to_ex, "{from} {to:?}");
            }
        }
    }

    #[test]
    fn up_and_middle_conversions_read() {
        assert_eq!(lvb_action(Some(Mode::NL), Some(Mode::EX)), LvbAction::Read);
        assert_eq!(lvb_action(Some(Mode::PR), Some(Mode::CW)), LvbAction::Read);
        assert_eq!(lvb_action(Some(Mode::PR), Some(Mode::NL)), LvbAction::Nothing);
        assert_eq!(lvb_action(Some(Mode::PW), Some(Mode::EX)), LvbAction::Read);
        assert_eq!(lvb_action(None, Some(Mode::NL)), LvbAction::Read);
    }

    #[test]
    fn from_slice_pads_and_bounds() {
        assert_eq!(Lvb::from_slice(&[1, 2]).unwrap().0[..3], [1, 2, 0]);
        assert!(Lvb::from_slice(&[0; 33]).is_none());
    }
}
