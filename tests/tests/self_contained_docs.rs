//! The repository cites nothing outside itself: no document, comment or test points readers at
//! the team's research notes (a directory of briefs that only the authors' machines have)
//! or at their section numbers. Facts the code relies on live in docs/ (e.g. the lock rules in
//! docs/dlm.md, the reference image in docs/disk-format.md §11.1) and are cited from there.

use std::path::{Path, PathBuf};

/// Written in pieces so that this file does not match itself.
const NEEDLES: &[&str] = &[
    concat!("shared", "/brief"),
    concat!("brief ", "§"),
    concat!("brief ", "`"),
    concat!("research ", "brief"),
    concat!("dlm-drbd-nbd", ".md"),
    concat!("gfs2-format", ".md"),
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Text files of the repository, without build output and version-control data.
fn text_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ft = entry.file_type().unwrap();
        if ft.is_dir() {
            if name != "target" && name != ".git" {
                text_files(&path, out);
            }
        } else if ft.is_file() {
            out.push(path);
        }
    }
}

#[test]
fn docs_and_sources_cite_nothing_outside_the_repository() {
    let root = workspace_root();
    let mut files = Vec::new();
    text_files(&root, &mut files);
    let mut found = Vec::new();
    for path in &files {
        let Ok(text) = std::fs::read_to_string(path) else { continue };
        for (i, line) in text.lines().enumerate() {
            if NEEDLES.iter().any(|n| line.contains(n)) {
                found.push(format!("{}:{}: {}", path.strip_prefix(&root).unwrap().display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "the repository cites notes that are not in it; bring the fact into docs/ and cite that:\n{}",
        found.join("\n")
    );
}
