//! What the user asked for: the answer mode and the output switches.

/// How questions are answered, as fsck(8) defines the flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `-n`: change nothing; the device is opened read-only.
    No,
    /// `-y`: make every repair fsck.rgfs knows.
    Yes,
    /// `-p` / `-a`: make only the repairs that lose nothing
    /// ([`crate::report::Fix::Safe`]).
    Preen,
    /// No flag, on a terminal: ask before each repair (fsck(8)'s default).
    Ask,
}

impl Mode {
    pub fn writes(self) -> bool {
        self != Mode::No
    }
}

/// A user's answer to "fix it?" in [`Mode::Ask`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Yes,
    No,
    /// Yes to this one and every later question.
    All,
    /// No to this one and every later question.
    Never,
}

/// Asks the user a question (the whole problem line) and returns the
/// answer.
pub type Asker = Box<dyn FnMut(&str) -> Answer + Send>;

#[derive(Clone, Debug)]
pub struct Options {
    pub mode: Mode,
    /// `-v`: say what each pass does and what it looked at.
    pub verbose: bool,
    /// `-q`: print only problems and the summary.
    pub quiet: bool,
    /// Draw a progress bar per pass (only on a terminal).
    pub progress: bool,
}

impl Options {
    pub fn new(mode: Mode) -> Self {
        Options {
            mode,
            verbose: false,
            quiet: false,
            progress: false,
        }
    }
}
