//! Command-line usage errors on one line (`TOOL: what is wrong (try --help)`,
//! exit 2), as the filesystem tools print them; help and version as clap
//! prints them.

use clap::error::ErrorKind;
use clap::Parser;

/// Parses the process's arguments, or exits: 0 after `--help`/`--version`,
/// 2 with one line on stderr for anything wrong.
pub fn parse_or_exit<T: Parser>(tool: &str) -> T {
    T::try_parse().unwrap_or_else(|e| {
        if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
            e.exit()
        }
        eprintln!("{tool}: {} (try --help)", one_line(&e.to_string()));
        std::process::exit(2)
    })
}

/// clap's message without its "error: " prefix and usage footer; a list
/// after a colon (the missing arguments) joins the first line.
fn one_line(text: &str) -> String {
    let head: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
    let line = head.join(" ");
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    if line.is_empty() { "invalid arguments".into() } else { line.into() }
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn clap_messages_become_one_line() {
        let text = "error: the following required arguments were not provided:\n  <LOCKSPACE>\n\nUsage: rgfs-dlm lock <LOCKSPACE>\n\nFor more information, try '--help'.\n";
        assert_eq!(one_line(text), "the following required arguments were not provided: <LOCKSPACE>");
        assert_eq!(one_line("error: invalid value 'x' for '--pairs'\n\nFor more information, try '--help'.\n"), "invalid value 'x' for '--pairs'");
        assert_eq!(one_line(""), "invalid arguments");
    }
}
