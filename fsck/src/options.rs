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
}

impl Mode {
    pub fn writes(self) -> bool {
        self != Mode::No
    }
}

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
