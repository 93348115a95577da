//! Lock modes and the compatibility matrix of the Linux DLM (docs/dlm.md §A.2).
//!
//! Invariants:
//! - `compatible` is symmetric and NL is compatible with every mode.
//! - Compatibility is monotone along the mode lattice NL < CR < {CW, PR} < PW < EX:
//!   a mode lower in the lattice is compatible with at least the modes a higher one is.

use std::fmt;

/// A lock mode. Numbered as in the Linux DLM (NL 0 .. EX 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Mode {
    /// Null: interest only; pins the resource and its LVB.
    NL = 0,
    /// Concurrent read.
    CR = 1,
    /// Concurrent write.
    CW = 2,
    /// Protected read (shared).
    PR = 3,
    /// Protected write (one writer, CR readers allowed).
    PW = 4,
    /// Exclusive.
    EX = 5,
}

/// Row = one mode, bit n = compatible with the mode numbered n.
const COMPAT_BITS: [u8; 6] = [
    0b11_1111, // NL: everything
    0b01_1111, // CR: all but EX
    0b00_0111, // CW: NL CR CW
    0b00_1011, // PR: NL CR PR
    0b00_0011, // PW: NL CR
    0b00_0001, // EX: NL
];

impl Mode {
    /// All modes, lowest number first.
    pub const ALL: [Mode; 6] = [Mode::NL, Mode::CR, Mode::CW, Mode::PR, Mode::PW, Mode::EX];

    /// The mode with DLM number `n`, if any.
    pub fn from_number(n: u32) -> Option<Mode> {
        Mode::ALL.get(n as usize).copied()
    }

    /// The DLM number of the mode.
    pub fn number(self) -> u32 {
        self as u32
    }

    /// Whether a lock granted in `self` lets another be granted in `other`.
    pub fn compatible(self, other: Mode) -> bool {
        COMPAT_BITS[self as usize] & (1 << other as u8) != 0
    }

    /// The set of modes compatible with this one.
    pub fn compatible_set(self) -> ModeSet {
        ModeSet(COMPAT_BITS[self as usize])
    }

    /// Whether `to` is strictly above `self` in the lattice NL < CR < {CW, PR} < PW < EX.
    /// PR and CW are not ordered: PR->CW and CW->PR are "middle" conversions.
    pub fn is_below(self, to: Mode) -> bool {
        self != to && !matches!((self, to), (Mode::PR, Mode::CW) | (Mode::CW, Mode::PR)) && self < to
    }

    /// Parses "NL", "CR", "CW", "PR", "PW" or "EX" (any case).
    pub fn parse(text: &str) -> Option<Mode> {
        Some(match text.to_ascii_uppercase().as_str() {
            "NL" => Mode::NL,
            "CR" => Mode::CR,
            "CW" => Mode::CW,
            "PR" => Mode::PR,
            "PW" => Mode::PW,
            "EX" => Mode::EX,
            _ => return None,
        })
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::NL => "NL",
            Mode::CR => "CR",
            Mode::CW => "CW",
            Mode::PR => "PR",
            Mode::PW => "PW",
            Mode::EX => "EX",
        })
    }
}

/// A set of modes, bit n = the mode numbered n.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModeSet(u8);

impl ModeSet {
    /// Every mode.
    pub const ALL: ModeSet = ModeSet(0b11_1111);

    /// Whether every mode of `self` is in `other`.
    pub fn is_subset(self, other: ModeSet) -> bool {
        self.0 & !other.0 == 0
    }

    /// The modes in both sets.
    pub fn intersect(self, other: ModeSet) -> ModeSet {
        ModeSet(self.0 & other.0)
    }

    /// Whether `mode` is in the set.
    pub fn contains(self, mode: Mode) -> bool {
        self.0 & (1 << mode as u8) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_is_symmetric_and_nl_is_universal() {
        for a in Mode::ALL {
            assert!(Mode::NL.compatible(a));
            for b in Mode::ALL {
                assert_eq!(a.compatible(b), b.compatible(a), "{a} {b}");
            }
        }
    }

    #[test]
    fn compatibility_is_monotone_in_the_lattice() {
        for low in Mode::ALL {
            for high in Mode::ALL {
                if low.is_below(high) {
                    assert!(high.compatible_set().is_subset(low.compatible_set()), "{low} < {high}");
                }
            }
        }
    }

    #[test]
    fn middle_conversions_are_neither_up_nor_down() {
        assert!(!Mode::PR.is_below(Mode::CW));
        assert!(!Mode::CW.is_below(Mode::PR));
        assert!(Mode::CR.is_below(Mode::CW));
        assert!(Mode::CW.is_below(Mode::PW));
    }
}
