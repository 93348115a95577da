//! The report: what each pass found, with the object's identity, and
//! whether it was repaired. It decides, from the mode, which repairs may be
//! made, and it computes the exit code.
//!
//! The report is deterministic (no timestamps, paths or random numbers) so
//! the catalog tests can compare it with a snapshot.
//!
//! Invariants: `found == fixed + left`; a repair is made only after
//! [`Report::problem`] returned `true` for it.

use std::fmt::Display;

use crate::options::{Answer, Asker, Mode};

/// How risky a repair is, which decides whether preen mode may make it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fix {
    /// Loses nothing: recomputed counts, bitmap states of blocks in use,
    /// checksums, fields with one right value. Preen makes these.
    Safe,
    /// May lose something (an entry, an inode, a pointer, an xattr), or
    /// changes the tree's shape. Only `-y` makes these.
    Risky,
    /// fsck.rgfs knows no repair.
    None,
}

/// The passes, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pass {
    Superblock,
    ResourceGroups,
    Journals,
    SystemFiles,
    Pass1,
    Pass1b,
    Pass2,
    Pass3,
    Pass4,
    Pass5,
    Statfs,
}

impl Pass {
    pub const ALL: [Pass; 11] = [
        Pass::Superblock,
        Pass::ResourceGroups,
        Pass::Journals,
        Pass::SystemFiles,
        Pass::Pass1,
        Pass::Pass1b,
        Pass::Pass2,
        Pass::Pass3,
        Pass::Pass4,
        Pass::Pass5,
        Pass::Statfs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Pass::Superblock => "superblock",
            Pass::ResourceGroups => "rgrps",
            Pass::Journals => "journals",
            Pass::SystemFiles => "system",
            Pass::Pass1 => "pass1",
            Pass::Pass1b => "pass1b",
            Pass::Pass2 => "pass2",
            Pass::Pass3 => "pass3",
            Pass::Pass4 => "pass4",
            Pass::Pass5 => "pass5",
            Pass::Statfs => "statfs",
        }
    }

    /// What the pass checks, for the progress bar and `-v`.
    pub fn title(self) -> &'static str {
        match self {
            Pass::Superblock => "checking the superblock",
            Pass::ResourceGroups => "checking resource groups",
            Pass::Journals => "checking journals",
            Pass::SystemFiles => "checking system files",
            Pass::Pass1 => "checking inodes and their blocks",
            Pass::Pass1b => "resolving blocks referenced twice",
            Pass::Pass2 => "checking directory entries",
            Pass::Pass3 => "checking directory connectivity",
            Pass::Pass4 => "checking link counts",
            Pass::Pass5 => "checking bitmaps and resource group counts",
            Pass::Statfs => "checking statfs",
        }
    }
}

/// The exit codes of fsck(8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    Clean = 0,
    Corrected = 1,
    Uncorrected = 4,
    Operational = 8,
    Usage = 16,
}

/// Where report lines go as they are made (besides the kept text).
pub type Echo = Box<dyn FnMut(&str) + Send>;

pub struct Report {
    mode: Mode,
    pass: Pass,
    lines: Vec<String>,
    verbose: bool,
    echo: Option<Echo>,
    /// [`Mode::Ask`]: who answers, and a standing answer once the user
    /// said "all" or "never".
    ask: Option<Asker>,
    standing: Option<bool>,
    pub found: u64,
    pub fixed: u64,
    pub left: u64,
}

/// At most this many lines of one kind per object group are reported; the
/// rest are counted (a badly damaged bitmap could otherwise print millions).
pub const MAX_LINES_PER_KIND: usize = 20;

impl Report {
    pub fn new(mode: Mode, verbose: bool, echo: Option<Echo>) -> Self {
        Report {
            mode,
            pass: Pass::Superblock,
            lines: Vec::new(),
            verbose,
            echo,
            ask: None,
            standing: None,
            found: 0,
            fixed: 0,
            left: 0,
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Who answers the questions of [`Mode::Ask`]; without one every
    /// answer is no.
    pub fn set_asker(&mut self, ask: Option<Asker>) {
        self.ask = ask;
    }

    pub fn set_pass(&mut self, pass: Pass) {
        self.pass = pass;
        if self.verbose {
            self.push(format!("{}: {}", pass.name(), pass.title()));
        }
    }

    pub fn pass(&self) -> Pass {
        self.pass
    }

    fn push(&mut self, line: String) {
        if let Some(echo) = self.echo.as_mut() {
            echo(&line);
        }
        self.lines.push(line);
    }

    /// Whether a repair of this kind is allowed without asking, in the
    /// current mode.
    pub fn allows(&self, fix: Fix) -> bool {
        match (self.mode, fix) {
            (_, Fix::None) => false,
            (Mode::Yes, _) => true,
            (Mode::Preen, Fix::Safe) => true,
            (Mode::Ask, _) => self.standing == Some(true),
            _ => false,
        }
    }

    /// Whether to repair: the mode decides, or in [`Mode::Ask`] the user.
    fn decide(&mut self, question: &str, fix: Fix) -> bool {
        if self.mode != Mode::Ask || fix == Fix::None {
            return self.allows(fix);
        }
        if let Some(standing) = self.standing {
            return standing;
        }
        let Some(ask) = self.ask.as_mut() else {
            return false;
        };
        match ask(question) {
            Answer::Yes => true,
            Answer::No => false,
            Answer::All => {
                self.standing = Some(true);
                true
            }
            Answer::Never => {
                self.standing = Some(false);
                false
            }
        }
    }

    /// Records a problem with `object`. Returns whether the caller must
    /// repair it now (the report already says "fixed").
    pub fn problem(&mut self, object: impl Display, message: impl Display, fix: Fix) -> bool {
        self.found += 1;
        let question = self.line(object.to_string(), message.to_string());
        let repair = self.decide(&question, fix);
        let outcome = if repair {
            self.fixed += 1;
            "fixed"
        } else {
            self.left += 1;
            match fix {
                Fix::None => "cannot fix",
                _ => "not fixed",
            }
        };
        let line = self.line(object.to_string(), format!("{message}: {outcome}"));
        self.push(line);
        repair
    }

    /// A note that is part of the report whatever the verbosity (something
    /// done as a consequence of an earlier repair, or an oracle-relevant
    /// fact such as a dirty journal).
    pub fn note(&mut self, object: impl Display, message: impl Display) {
        let line = self.line(object.to_string(), message.to_string());
        self.push(line);
    }

    /// "pass: object: message", without repeating an object named like the
    /// pass ("statfs: statfs: ...").
    fn line(&self, object: String, message: String) -> String {
        if object == self.pass.name() {
            format!("{object}: {message}")
        } else {
            format!("{}: {object}: {message}", self.pass.name())
        }
    }

    /// A line shown only with `-v` (and never in snapshots).
    pub fn info(&mut self, message: impl Display) {
        if self.verbose {
            self.push(format!("{}: {message}", self.pass.name()));
        }
    }

    /// An operational failure (the check could not go on).
    pub fn fatal(&mut self, message: impl Display) {
        self.push(format!("{}: error: {message}", self.pass.name()));
    }

    /// The last line of a run that stopped on an operational error: whether
    /// it changed the volume (`writes` made before stopping).
    pub fn stopped(&mut self, writes: u64) {
        let line = match writes {
            0 => "fsck.rgfs: stopped; nothing was changed".to_string(),
            n => format!("fsck.rgfs: stopped after {n} writes to the device; the volume may be partly repaired"),
        };
        self.push(line);
    }

    pub fn summary(&mut self) {
        let line = format!(
            "fsck.rgfs: {} problems found, {} fixed, {} left",
            self.found, self.fixed, self.left
        );
        self.push(line);
    }

    /// The exit code for a run that completed.
    pub fn exit_code(&self) -> ExitCode {
        if self.left > 0 {
            ExitCode::Uncorrected
        } else if self.fixed > 0 {
            ExitCode::Corrected
        } else {
            ExitCode::Clean
        }
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    pub fn text(&self) -> String {
        let mut s = self.lines.join("\n");
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_decides_which_repairs_are_made() {
        for (mode, safe, risky) in [
            (Mode::No, false, false),
            (Mode::Yes, true, true),
            (Mode::Preen, true, false),
        ] {
            let mut r = Report::new(mode, false, None);
            assert_eq!(r.problem("x", "a", Fix::Safe), safe, "{mode:?}");
            assert_eq!(r.problem("x", "b", Fix::Risky), risky, "{mode:?}");
            assert!(!r.problem("x", "c", Fix::None));
            assert_eq!(r.found, r.fixed + r.left);
            assert_eq!(r.exit_code(), ExitCode::Uncorrected);
        }
        let mut r = Report::new(Mode::Yes, false, None);
        assert_eq!(r.exit_code(), ExitCode::Clean);
        r.problem("inode 5", "bad", Fix::Safe);
        assert_eq!(r.exit_code(), ExitCode::Corrected);
        assert_eq!(r.text(), "superblock: inode 5: bad: fixed\n");
    }
}
