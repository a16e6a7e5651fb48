//! The book, the README and the lessons agree.
//!
//! - every lesson folder has a chapter `docs/src/<folder>.md`, listed in
//!   `docs/src/SUMMARY.md`;
//! - every `{{#include path:anchor}}` in the book points at a file that exists
//!   and an anchor that is opened and closed in it;
//! - every lesson appears in the README's table with its `cargo run` command.

use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `(folder name, package name)` of every lesson.
fn lessons() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in fs::read_dir(root().join("lessons")).unwrap() {
        let dir = e.unwrap().path();
        let manifest = fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let package = manifest
            .lines()
            .find_map(|l| l.strip_prefix("name = \""))
            .map(|l| l.trim_end_matches('"').to_string())
            .expect("a package name");
        out.push((
            dir.file_name().unwrap().to_string_lossy().into_owned(),
            package,
        ));
    }
    out.sort();
    out
}

fn chapters() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(root().join("docs/src"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    out.sort();
    out
}

#[test]
fn every_lesson_has_a_chapter_in_the_summary() {
    let summary = fs::read_to_string(root().join("docs/src/SUMMARY.md")).unwrap();
    let lessons = lessons();
    assert!(!lessons.is_empty());
    for (folder, package) in lessons {
        let chapter = root().join("docs/src").join(format!("{folder}.md"));
        assert!(
            chapter.exists(),
            "{package} has no chapter {}",
            chapter.display()
        );
        assert!(
            summary.contains(&format!("({folder}.md)")),
            "SUMMARY.md does not list {folder}.md"
        );
    }
}

#[test]
fn every_include_resolves_to_a_file_and_an_anchor() {
    let mut checked = 0;
    for chapter in chapters() {
        let text = fs::read_to_string(&chapter).unwrap();
        for (i, _) in text.match_indices("{{#include ") {
            let rest = &text[i + "{{#include ".len()..];
            let end = rest.find("}}").expect("an include is closed with }}");
            let target = rest[..end].trim();
            let (path, anchor) = match target.rsplit_once(':') {
                Some((p, a)) if !a.chars().all(|c| c.is_ascii_digit()) => (p, Some(a)),
                _ => (target, None),
            };
            let file = chapter.parent().unwrap().join(path);
            let source = fs::read_to_string(&file).unwrap_or_else(|_| {
                panic!(
                    "{}: include of missing file {}",
                    chapter.display(),
                    file.display()
                )
            });
            if let Some(a) = anchor {
                for marker in [format!("ANCHOR: {a}"), format!("ANCHOR_END: {a}")] {
                    assert!(
                        source.lines().any(|l| l.trim_end().ends_with(&marker)),
                        "{}: {} has no `{marker}`",
                        chapter.display(),
                        file.display()
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 0, "the book includes no source at all");
}

#[test]
fn every_lesson_is_in_the_readme_table() {
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    for (_, package) in lessons() {
        let row = readme
            .lines()
            .find(|l| l.starts_with('|') && l.contains(&format!("`cargo run -p {package}")));
        assert!(
            row.is_some(),
            "README.md's lesson table has no row for {package}"
        );
    }
}
