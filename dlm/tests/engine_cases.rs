//! Table-driven tests of the lock engine: every `tests/cases/*.txt` file holds cases
//! of the form
//!
//! ```text
//! case <description citing the rule of docs/dlm.md it checks, e.g. R2>
//! <command> => <expected outputs, separated by ';', or '-' for none>
//! ```
//!
//! Commands: `request ID NAME MODE [FLAGS]`, `convert ID MODE [FLAGS] [lvb=TEXT]`,
//! `unlock ID [FLAGS] [lvb=TEXT]`, `cancel ID`, `purge ID`, `state NAME`.
//! FLAGS are names joined by `|` (e.g. `NOQUEUE|VALBLK`).
//! Outputs: `grant ID MODE [sb=FLAGS] [lvb=TEXT#SEQ]`, `tryagain ID [MODE]`,
//! `deadlock ID MODE`, `cancel ID [MODE]`, `unlock ID`, `bast ID MODE`,
//! `error invalid|unknown|duplicate|busy|limit`; `state` prints
//! `grant[ID:MODE ...] convert[ID:FROM>TO ...] wait[ID:MODE ...] lvb=TEXT#SEQ[(invalid)]`
//! or `none`. Each case starts from an empty engine with small limits (8 locks per
//! resource, 16 locks, 4 resources) and the engine's invariants are checked after
//! every step.

use std::fmt::Write as _;
use std::path::Path;

use rgfs_dlm::engine::{Engine, Flags, Input, Limits, LockId, Lvb, Mode, OpError, Output, ResourceName, Status};

fn id(text: &str) -> Result<LockId, String> {
    text.parse::<u64>().map(|lock| LockId { node: 1, lock }).map_err(|_| format!("bad lock id {text:?}"))
}

fn mode(text: &str) -> Result<Mode, String> {
    Mode::parse(text).ok_or_else(|| format!("bad mode {text:?}"))
}

/// Splits optional trailing words into flags and an `lvb=` value.
fn extras(words: &[&str]) -> Result<(Flags, Option<Lvb>), String> {
    let mut flags = Flags::NONE;
    let mut lvb = None;
    for word in words {
        if let Some(text) = word.strip_prefix("lvb=") {
            lvb = Some(Lvb::from_slice(text.as_bytes()).ok_or("lvb too long")?);
        } else if let Some(hex) = word.strip_prefix("0x") {
            flags = flags | Flags(u32::from_str_radix(hex, 16).map_err(|_| format!("bad flags {word:?}"))?);
        } else {
            flags = flags | Flags::parse(word).ok_or_else(|| format!("bad flags {word:?}"))?;
        }
    }
    Ok((flags, lvb))
}

fn lvb_text(value: &Lvb) -> String {
    let end = value.0.iter().position(|b| *b == 0).unwrap_or(value.0.len());
    String::from_utf8_lossy(&value.0[..end]).into_owned()
}

fn render_output(output: &Output) -> String {
    match output {
        Output::Blocking { lock, mode } => format!("bast {} {mode}", lock.lock),
        Output::Completion(c) => {
            let mut text = match (c.status, c.mode) {
                (Status::Granted, Some(mode)) => format!("grant {} {mode}", c.lock.lock),
                (Status::Granted, None) => format!("grant {} ?", c.lock.lock),
                (Status::TryAgain, m) => format!("tryagain {}{}", c.lock.lock, m.map(|m| format!(" {m}")).unwrap_or_default()),
                (Status::Deadlock, m) => format!("deadlock {}{}", c.lock.lock, m.map(|m| format!(" {m}")).unwrap_or_default()),
                (Status::Cancelled, m) => format!("cancel {}{}", c.lock.lock, m.map(|m| format!(" {m}")).unwrap_or_default()),
                (Status::Unlocked, _) => format!("unlock {}", c.lock.lock),
            };
            if c.sb_flags.0 != 0 {
                let _ = write!(text, " sb={}", c.sb_flags);
            }
            if let Some(lvb) = c.lvb {
                let _ = write!(text, " lvb={}#{}", lvb_text(&lvb.value), lvb.seq);
            }
            text
        }
    }
}

fn render_error(error: &OpError) -> String {
    let kind = match error {
        OpError::Invalid(_) => "invalid",
        OpError::UnknownLock => "unknown",
        OpError::DuplicateLock => "duplicate",
        OpError::Busy(_) => "busy",
        OpError::Limit(_) => "limit",
    };
    format!("error {kind}")
}

fn render_state(engine: &Engine, name: &ResourceName) -> String {
    let Some(view) = engine.resource(name) else { return "none".into() };
    let mode_text = |m: Option<Mode>| m.map(|m| m.to_string()).unwrap_or_default();
    let granted: Vec<String> = view.granted.iter().map(|l| format!("{}:{}", l.id.lock, mode_text(l.granted))).collect();
    let converting: Vec<String> =
        view.converting.iter().map(|l| format!("{}:{}>{}", l.id.lock, mode_text(l.granted), mode_text(l.requested))).collect();
    let waiting: Vec<String> = view.waiting.iter().map(|l| format!("{}:{}", l.id.lock, mode_text(l.requested))).collect();
    format!(
        "grant[{}] convert[{}] wait[{}] lvb={}#{}{}",
        granted.join(" "),
        converting.join(" "),
        waiting.join(" "),
        lvb_text(&view.lvb.value),
        view.lvb.seq,
        if view.lvb.valid { "" } else { "(invalid)" }
    )
}

/// Runs one command line and renders what came out.
fn run_command(engine: &mut Engine, command: &str) -> Result<String, String> {
    let words: Vec<&str> = command.split_whitespace().collect();
    let input = match words.as_slice() {
        ["state", name] => return Ok(render_state(engine, &ResourceName::new(name.as_bytes()).map_err(|e| e.to_string())?)),
        ["request", lock, name, m, rest @ ..] => {
            let (flags, _) = extras(rest)?;
            let name = ResourceName::new(name.as_bytes()).map_err(|e| e.to_string())?;
            Input::Request { lock: id(lock)?, name, mode: mode(m)?, flags }
        }
        ["convert", lock, m, rest @ ..] => {
            let (flags, lvb) = extras(rest)?;
            Input::Convert { lock: id(lock)?, mode: mode(m)?, flags, lvb }
        }
        ["unlock", lock, rest @ ..] => {
            let (flags, lvb) = extras(rest)?;
            Input::Unlock { lock: id(lock)?, flags, lvb }
        }
        ["cancel", lock] => Input::Cancel { lock: id(lock)? },
        ["purge", lock] => Input::Purge { lock: id(lock)? },
        _ => return Err(format!("unknown command {command:?}")),
    };
    let mut out = Vec::new();
    let rendered = match engine.apply(input, &mut out) {
        Ok(()) if out.is_empty() => "-".to_string(),
        Ok(()) => out.iter().map(render_output).collect::<Vec<_>>().join("; "),
        Err(error) => {
            if !out.is_empty() {
                return Err(format!("error {error} but outputs {out:?}"));
            }
            render_error(&error)
        }
    };
    engine.check_invariants().map_err(|e| format!("invariant broken: {e}"))?;
    Ok(rendered)
}

fn normalize(expected: &str) -> String {
    expected.split(';').map(|part| part.split_whitespace().collect::<Vec<_>>().join(" ")).collect::<Vec<_>>().join("; ")
}

/// Runs every case of one file; returns the failures as "file:line: message".
fn run_file(path: &Path) -> (usize, Vec<String>) {
    let text = std::fs::read_to_string(path).expect("read case file");
    let file = path.file_name().unwrap().to_string_lossy().into_owned();
    let limits = Limits { max_locks: 16, max_resources: 4, max_locks_per_resource: 8 };
    let mut engine: Option<Engine> = None;
    let mut failures = Vec::new();
    let mut cases = 0;
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(description) = line.strip_prefix("case ") {
            if !description.split_whitespace().any(cites_rule) {
                failures.push(format!("{file}:{line_no}: case does not cite the rule it checks"));
            }
            engine = Some(Engine::new(limits));
            cases += 1;
            continue;
        }
        let Some(engine) = engine.as_mut() else {
            failures.push(format!("{file}:{line_no}: step before the first case"));
            continue;
        };
        let Some((command, expected)) = line.split_once("=>") else {
            failures.push(format!("{file}:{line_no}: missing '=>'"));
            continue;
        };
        match run_command(engine, command.trim()) {
            Ok(actual) if actual == normalize(expected) => {}
            Ok(actual) => failures.push(format!("{file}:{line_no}: {}\n    expected: {}\n    actual:   {actual}", command.trim(), normalize(expected))),
            Err(error) => failures.push(format!("{file}:{line_no}: {error}")),
        }
    }
    (cases, failures)
}

#[test]
fn engine_cases() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("tests/cases").map(|e| e.unwrap().path()).collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "txt"));
    files.sort();
    assert!(!files.is_empty(), "no case files in {}", dir.display());
    let mut total = 0;
    let mut failures = Vec::new();
    for path in &files {
        let (cases, mut file_failures) = run_file(path);
        assert!(cases > 0, "{} holds no case", path.display());
        total += cases;
        failures.append(&mut file_failures);
    }
    println!("{total} engine cases in {} files", files.len());
    assert!(failures.is_empty(), "{} failing steps:\n{}", failures.len(), failures.join("\n"));
}

/// Whether `word` is a rule number of docs/dlm.md ("R2").
fn cites_rule(word: &str) -> bool {
    word.strip_prefix('R').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}
