//! Request flags (DLM_LKF_*) and completion flags (DLM_SBF_*), with the values of
//! the Linux DLM so tools and docs can share them (docs/dlm.md §A.4).
//!
//! Invariants: `Flags::KNOWN` is exactly the union of `Flags::NAMED` (unit-tested);
//! any other bit makes the engine refuse the operation as invalid.

use std::fmt;
use std::ops::BitOr;

/// Flags of a request, conversion or unlock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(pub u32);

impl Flags {
    /// No flags.
    pub const NONE: Flags = Flags(0);
    /// Fail with TryAgain instead of queueing.
    pub const NOQUEUE: Flags = Flags(0x1);
    /// Marks a cancel (wire compatibility only; cancels are their own operation here).
    pub const CANCEL: Flags = Flags(0x2);
    /// Marks a conversion (wire compatibility only; conversions are their own operation here).
    pub const CONVERT: Flags = Flags(0x4);
    /// Exchange the lock value block.
    pub const VALBLK: Flags = Flags(0x8);
    /// Queue an up-conversion behind existing conversions even if compatible.
    pub const QUECVT: Flags = Flags(0x10);
    /// On a PW/EX down-conversion or unlock, mark the LVB invalid instead of writing it.
    pub const IVVALBLK: Flags = Flags(0x20);
    /// On conversion deadlock, demote this lock's granted mode to NL instead of failing.
    pub const CONVDEADLK: Flags = Flags(0x40);
    /// New NL requests only: grant at once, ignoring queued requests.
    pub const EXPEDITE: Flags = Flags(0x400);
    /// With NOQUEUE: still send blocking callbacks to the holders in the way.
    pub const NOQUEUEBAST: Flags = Flags(0x800);
    /// Queue at the head instead of the tail.
    pub const HEADQUE: Flags = Flags(0x1000);
    /// Grant as soon as compatible with the granted modes, ignoring queue order.
    pub const NOORDER: Flags = Flags(0x2000);
    /// If the requested mode cannot be granted, try PR.
    pub const ALTPR: Flags = Flags(0x8000);
    /// If the requested mode cannot be granted, try CW.
    pub const ALTCW: Flags = Flags(0x10000);

    /// Every flag this lock manager implements, with its name.
    pub const NAMED: [(Flags, &'static str); 14] = [
        (Flags::NOQUEUE, "NOQUEUE"),
        (Flags::CANCEL, "CANCEL"),
        (Flags::CONVERT, "CONVERT"),
        (Flags::VALBLK, "VALBLK"),
        (Flags::QUECVT, "QUECVT"),
        (Flags::IVVALBLK, "IVVALBLK"),
        (Flags::CONVDEADLK, "CONVDEADLK"),
        (Flags::EXPEDITE, "EXPEDITE"),
        (Flags::NOQUEUEBAST, "NOQUEUEBAST"),
        (Flags::HEADQUE, "HEADQUE"),
        (Flags::NOORDER, "NOORDER"),
        (Flags::ALTPR, "ALTPR"),
        (Flags::ALTCW, "ALTCW"),
        (Flags(0), ""),
    ];

    /// The union of all implemented flags.
    pub const KNOWN: Flags = Flags(0x1_bc7f);

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any flag of `other` is set.
    pub fn intersects(self, other: Flags) -> bool {
        self.0 & other.0 != 0
    }

    /// Parses flag names separated by `,` or `|` (e.g. "NOQUEUE|VALBLK"); "" and "-" are no flags.
    pub fn parse(text: &str) -> Option<Flags> {
        let mut flags = Flags::NONE;
        for word in text.split([',', '|']).map(str::trim).filter(|w| !w.is_empty() && *w != "-") {
            let upper = word.to_ascii_uppercase();
            let (flag, _) = Flags::NAMED.iter().find(|(f, name)| f.0 != 0 && *name == upper)?;
            flags = flags | *flag;
        }
        Some(flags)
    }
}

impl BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (flag, name) in Flags::NAMED.iter().filter(|(flag, _)| flag.0 != 0) {
            if self.contains(*flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        let unknown = self.0 & !Flags::KNOWN.0;
        if unknown != 0 {
            write!(f, "{}0x{unknown:x}", if first { "" } else { "|" })?;
            first = false;
        }
        if first {
            f.write_str("-")?;
        }
        Ok(())
    }
}

/// Flags reported with a completion (DLM_SBF_*).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SbFlags(pub u32);

impl SbFlags {
    /// No flags.
    pub const NONE: SbFlags = SbFlags(0);
    /// CONVDEADLK demoted the lock's granted mode to NL.
    pub const DEMOTED: SbFlags = SbFlags(0x1);
    /// The returned LVB is not valid (a PW/EX holder went away without writing it, or IVVALBLK).
    pub const VALNOTVALID: SbFlags = SbFlags(0x2);
    /// The alternate mode (ALTPR/ALTCW) was granted.
    pub const ALTMODE: SbFlags = SbFlags(0x4);

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: SbFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for SbFlags {
    type Output = SbFlags;
    fn bitor(self, rhs: SbFlags) -> SbFlags {
        SbFlags(self.0 | rhs.0)
    }
}

impl fmt::Display for SbFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [(SbFlags::DEMOTED, "DEMOTED"), (SbFlags::VALNOTVALID, "VALNOTVALID"), (SbFlags::ALTMODE, "ALTMODE")];
        let set: Vec<&str> = names.iter().filter(|(flag, _)| self.contains(*flag)).map(|(_, name)| *name).collect();
        if set.is_empty() {
            f.write_str("-")
        } else {
            f.write_str(&set.join("|"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_is_the_union_of_named_flags() {
        let union = Flags::NAMED.iter().fold(0, |acc, (flag, _)| acc | flag.0);
        assert_eq!(union, Flags::KNOWN.0);
    }

    #[test]
    fn parse_and_display_round_trip() {
        let flags = Flags::parse("noqueue|VALBLK,headque").unwrap();
        assert_eq!(flags, Flags::NOQUEUE | Flags::VALBLK | Flags::HEADQUE);
        assert_eq!(Flags::parse(&flags.to_string()), Some(flags));
        assert_eq!(Flags::parse("-"), Some(Flags::NONE));
        assert_eq!(Flags::parse("BOGUS"), None);
    }
}
