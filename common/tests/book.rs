//! The book, the README and the lessons agree.
//!
//! - every lesson folder has a chapter `docs/src/<folder>.md`, listed in
//!   `docs/src/SUMMARY.md`;
//! - every `{{#include path:anchor}}` in the book points at a file that exists
//!   and an anchor that is opened and closed in it;
//! - every lesson appears in the README's table and in the book's
//!   introduction with its `cargo run` command and a link to its chapter.

use std::fs;
use std::path::{Path, PathBuf};

mod workspace;
use workspace::{lessons, root};

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
    // The repository's README and the book's introduction both list every
    // lesson with its command and a link to its chapter.
    for (readme, chapter_dir) in [("README.md", "docs/src/"), ("docs/src/README.md", "")] {
        let text = fs::read_to_string(root().join(readme)).unwrap();
        for (folder, package) in lessons() {
            let row = text.lines().find(|l| {
                l.starts_with('|')
                    && (l.contains(&format!("`cargo run -p {package}`"))
                        || l.contains(&format!("`cargo run -p {package} ")))
            });
            let row =
                row.unwrap_or_else(|| panic!("{readme}'s lesson table has no row for {package}"));
            assert!(
                row.contains(&format!("]({chapter_dir}{folder}.md)")),
                "{readme}: the row for {package} does not link {chapter_dir}{folder}.md: {row}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The classroom guide: claims ledger, links, diagrams, exercises, scripts.
// ---------------------------------------------------------------------------

/// The claims other chapters link to as `claims.md#claim-<slug>`.
const LINKED_CLAIMS: &[&str] = &[
    "claim-sigbus",
    "claim-ftruncate",
    "claim-devshm-unmounted",
    "claim-devshm-removed",
    "claim-sysv-invisible",
    "claim-ipcs",
    "claim-msync",
    "claim-no-sync",
    "claim-fastest",
    "claim-unlink",
    "claim-unrelated",
    "claim-lrt",
    "claim-ipc-rmid",
];

/// The Markdown files whose links must resolve: the book and the README.
fn markdown_files() -> Vec<PathBuf> {
    let mut out = chapters();
    out.push(root().join("README.md"));
    out
}

/// The text outside fenced code blocks and inline code spans, where links
/// are links (a `](` in a code sample is not one).
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            out.push('\n');
            continue;
        }
        if fenced {
            out.push('\n');
            continue;
        }
        let mut in_code = false;
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
            } else if !in_code {
                out.push(c);
            }
        }
        out.push('\n');
    }
    out
}

/// Every Markdown link or image target in `text`: `[text](target)`.
fn link_targets(text: &str) -> Vec<String> {
    let text = prose(text);
    let mut out = Vec::new();
    for (i, _) in text.match_indices("](") {
        let rest = &text[i + 2..];
        let Some(end) = rest.find(')') else { continue };
        let target = rest[..end].split_whitespace().next().unwrap_or("");
        out.push(target.trim_matches(|c| c == '<' || c == '>').to_string());
    }
    out
}

/// mdBook's (and GitHub's) id for a heading: lower case, spaces to `-`,
/// everything but letters, digits, `-` and `_` dropped.
fn heading_id(heading: &str) -> String {
    heading
        .chars()
        .filter_map(|c| {
            if c.is_alphanumeric() || c == '_' || c == '-' {
                Some(c.to_ascii_lowercase())
            } else if c.is_whitespace() {
                Some('-')
            } else {
                None
            }
        })
        .collect()
}

/// The anchors a Markdown file defines: explicit `id="…"` and headings.
fn anchors(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices("id=\"") {
        let rest = &text[i + 4..];
        if let Some(end) = rest.find('"') {
            out.push(rest[..end].to_string());
        }
    }
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.push(heading_id(line.trim_start_matches('#').trim()));
        }
    }
    out
}

/// `a/b/../c` → `a/c`, without touching the filesystem.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn the_claims_that_chapters_link_to_have_anchors() {
    let claims = fs::read_to_string(root().join("docs/src/claims.md")).unwrap();
    for slug in LINKED_CLAIMS {
        assert!(
            claims.contains(&format!("<a id=\"{slug}\"></a>")),
            "claims.md has no <a id=\"{slug}\"></a>"
        );
    }
    let summary = fs::read_to_string(root().join("docs/src/SUMMARY.md")).unwrap();
    for page in ["(README.md)", "(claims.md)", "(instructor.md)"] {
        assert!(summary.contains(page), "SUMMARY.md does not list {page}");
    }
}

#[test]
fn every_claim_names_the_article_its_status_and_where_to_see_it() {
    let claims = fs::read_to_string(root().join("docs/src/claims.md")).unwrap();
    let sections: Vec<&str> = claims.split("<a id=\"claim-").skip(1).collect();
    assert!(sections.len() >= LINKED_CLAIMS.len(), "too few claims");
    for section in sections {
        let slug = &section[..section.find('"').unwrap()];
        for part in ["**The article", "**Today: ", "**See it:**"] {
            assert!(section.contains(part), "claim-{slug} has no {part}");
        }
        // The table at the top lists every claim.
        assert!(
            claims.contains(&format!("(#claim-{slug})")),
            "the summary table does not list claim-{slug}"
        );
    }
}

#[test]
fn every_link_in_the_book_resolves_to_a_file_and_an_anchor() {
    let mut checked = 0;
    for file in markdown_files() {
        let text = fs::read_to_string(&file).unwrap();
        for target in link_targets(&text) {
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, fragment) = match target.split_once('#') {
                Some((p, f)) => (p, Some(f)),
                None => (target.as_str(), None),
            };
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                normalize(&file.parent().unwrap().join(path))
            };
            assert!(
                resolved.exists(),
                "{}: link to missing {target}",
                file.display()
            );
            if let Some(fragment) = fragment {
                let defined = anchors(&fs::read_to_string(&resolved).unwrap_or_default());
                assert!(
                    defined.iter().any(|a| a == fragment),
                    "{}: link to {target}, but {} has no anchor #{fragment}",
                    file.display(),
                    resolved.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 0, "the book has no links at all");
}

/// A small well-formedness check for the book's SVG files: one `<svg>` root
/// in the SVG namespace, tags properly nested and closed, attribute values
/// quoted, and only XML's entities in text.
fn check_well_formed_svg(text: &str) -> Result<(), String> {
    let mut stack: Vec<String> = Vec::new();
    let mut roots = 0;
    let mut rest = text;
    let entities = ["amp;", "lt;", "gt;", "quot;", "apos;", "#"];
    while !rest.is_empty() {
        let Some(open) = rest.find('<') else {
            if !rest.trim().is_empty() && stack.is_empty() {
                return Err("text after the root element".into());
            }
            break;
        };
        let text_part = &rest[..open];
        for (i, _) in text_part.match_indices('&') {
            if !entities.iter().any(|e| text_part[i + 1..].starts_with(e)) {
                return Err(format!("bare & in text: {:?}", &text_part[i..]));
            }
        }
        rest = &rest[open..];
        let (skip, end) = if rest.starts_with("<!--") {
            (true, "-->")
        } else if rest.starts_with("<?") {
            (true, "?>")
        } else if rest.starts_with("<!") {
            (true, ">")
        } else {
            (false, ">")
        };
        let close = rest.find(end).ok_or("a tag is never closed")?;
        let tag = &rest[1..close];
        rest = &rest[close + end.len()..];
        if skip {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            let top = stack.pop().ok_or(format!("</{name}> closes nothing"))?;
            if top != name.trim() {
                return Err(format!("<{top}> closed by </{name}>"));
            }
            continue;
        }
        let self_closing = tag.ends_with('/');
        let body = tag.trim_end_matches('/');
        let name: String = body.chars().take_while(|c| !c.is_whitespace()).collect();
        if name.is_empty() || body.contains('<') {
            return Err(format!("malformed tag <{tag}>"));
        }
        // Attributes: name="value" or name='value', nothing else.
        let mut attrs = body[name.len()..].trim();
        while !attrs.is_empty() {
            let eq = attrs
                .find('=')
                .ok_or(format!("attribute without value in <{name}>"))?;
            let after = attrs[eq + 1..].trim_start();
            let quote = after
                .chars()
                .next()
                .filter(|q| *q == '"' || *q == '\'')
                .ok_or(format!("unquoted attribute in <{name}>"))?;
            let value_end = after[1..]
                .find(quote)
                .ok_or(format!("unterminated attribute in <{name}>"))?;
            attrs = after[value_end + 2..].trim_start();
        }
        if stack.is_empty() {
            roots += 1;
            if roots > 1 {
                return Err("more than one root element".into());
            }
            if name != "svg" || !body.contains("xmlns=\"http://www.w3.org/2000/svg\"") {
                return Err("the root is not <svg xmlns=\"http://www.w3.org/2000/svg\">".into());
            }
        }
        if !self_closing {
            stack.push(name);
        }
    }
    if let Some(open) = stack.pop() {
        return Err(format!("<{open}> is never closed"));
    }
    if roots != 1 {
        return Err("no root element".into());
    }
    Ok(())
}

#[test]
fn the_svg_checker_rejects_what_it_should() {
    let ok = "<svg xmlns=\"http://www.w3.org/2000/svg\"><g><text x='1'>a &amp; b</text></g><rect/></svg>";
    assert_eq!(check_well_formed_svg(ok), Ok(()));
    for bad in [
        "<svg xmlns=\"http://www.w3.org/2000/svg\"><g></svg>",
        "<svg xmlns=\"http://www.w3.org/2000/svg\"><text>a & b</text></svg>",
        "<svg xmlns=\"http://www.w3.org/2000/svg\"><rect x=1/></svg>",
        "<svg><rect/></svg>",
        "<svg xmlns=\"http://www.w3.org/2000/svg\"></svg><svg xmlns=\"http://www.w3.org/2000/svg\"></svg>",
    ] {
        assert!(check_well_formed_svg(bad).is_err(), "accepted {bad}");
    }
}

#[test]
fn every_svg_in_the_book_is_referenced_exists_and_is_well_formed() {
    let mut referenced = std::collections::BTreeSet::new();
    for file in markdown_files() {
        let text = fs::read_to_string(&file).unwrap();
        for target in link_targets(&text) {
            let path = target.split('#').next().unwrap();
            if path.ends_with(".svg") {
                let svg = normalize(&file.parent().unwrap().join(path));
                let text = fs::read_to_string(&svg).unwrap_or_else(|_| {
                    panic!("{}: missing picture {}", file.display(), svg.display())
                });
                if let Err(e) = check_well_formed_svg(&text) {
                    panic!("{}: {e}", svg.display());
                }
                assert!(text.contains("<title>"), "{} has no <title>", svg.display());
                referenced.insert(svg);
            }
        }
    }
    assert!(!referenced.is_empty(), "the book has no pictures");
    // No orphans: every picture in docs/src/img is used somewhere.
    for e in fs::read_dir(root().join("docs/src/img")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "svg") {
            assert!(
                referenced.contains(&p),
                "{} is not used by any page",
                p.display()
            );
        }
    }
}

#[test]
fn every_lesson_chapter_ends_with_exercises_and_hints() {
    let mut checked = 0;
    for chapter in chapters() {
        let name = chapter.file_name().unwrap().to_string_lossy().into_owned();
        let numbered = name.len() > 3
            && name[..2].chars().all(|c| c.is_ascii_digit())
            && name.as_bytes()[2] == b'-';
        if !numbered {
            continue;
        }
        let text = fs::read_to_string(&chapter).unwrap();
        let start = text
            .find("\n## Exercises")
            .unwrap_or_else(|| panic!("{name} has no `## Exercises` section"));
        let section = &text[start + 1..];
        let section = match section[3..].find("\n## ") {
            Some(end) => &section[..end + 3],
            None => section,
        };
        // Exercises are `### ` subsections, a numbered list, or a list of
        // top-level bullets.
        let numbered_list = section
            .lines()
            .any(|l| l.starts_with(|c: char| c.is_ascii_digit()) && l.contains(". "));
        let items: Vec<&str> = if section.contains("\n### ") {
            section.split("\n### ").skip(1).collect()
        } else {
            let mut items = Vec::new();
            let mut begin = None;
            for (i, _) in section.match_indices('\n') {
                let next = &section[i + 1..];
                let digits = next.chars().take_while(|c| c.is_ascii_digit()).count();
                let starts_item = if numbered_list {
                    digits > 0 && next[digits..].starts_with(". ")
                } else {
                    next.starts_with("- ") || next.starts_with("* ")
                };
                if starts_item {
                    if let Some(b) = begin {
                        items.push(&section[b..i]);
                    }
                    begin = Some(i + 1);
                }
            }
            if let Some(b) = begin {
                items.push(&section[b..]);
            }
            items
        };
        assert!(
            items.len() >= 2,
            "{name}: {} exercises, expected at least 2",
            items.len()
        );
        for (i, item) in items.iter().enumerate() {
            let plain: String = item.chars().filter(|c| *c != '*' && *c != '_').collect();
            assert!(
                plain.contains("Hint:"),
                "{name}: exercise {} has no `Hint:`",
                i + 1
            );
        }
        checked += 1;
    }
    assert!(checked > 0, "no lesson chapter found");
}

/// The shell scripts in `scripts/` (files whose first line runs a shell).
fn shell_scripts() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(root().join("scripts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .filter(|p| {
            let first = fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            first.starts_with("#!") && (first.contains("bash") || first.ends_with("/sh"))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_script_is_executable_strict_and_answers_help() {
    use std::os::unix::fs::PermissionsExt;
    let scripts = shell_scripts();
    for wanted in ["check-env", "run-all"] {
        assert!(
            scripts.iter().any(|p| p.ends_with(wanted)),
            "scripts/{wanted} is missing"
        );
    }
    for script in scripts {
        let name = script.display();
        let mode = fs::metadata(&script).unwrap().permissions().mode();
        assert!(mode & 0o111 != 0, "{name} is not executable");
        let text = fs::read_to_string(&script).unwrap();
        assert!(
            text.lines().any(|l| l.trim() == "set -euo pipefail"),
            "{name} does not use `set -euo pipefail`"
        );
        let out = std::process::Command::new(&script)
            .arg("--help")
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{name} --help failed");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.to_lowercase().contains("usage"),
            "{name} --help prints no usage:\n{help}"
        );
    }
}

/// Every `path/to/tests/file.rs::name` cited in `text`, in order.
fn cited_tests(text: &str) -> Vec<(String, String)> {
    let path_char = |c: char| c.is_ascii_alphanumeric() || "_-./".contains(c);
    let mut out = Vec::new();
    for (i, _) in text.match_indices(".rs::") {
        let before = &text[..i + 3];
        let start = before
            .char_indices()
            .rev()
            .find(|&(_, c)| !path_char(c))
            .map_or(0, |(j, c)| j + c.len_utf8());
        let name: String = text[i + 5..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        out.push((before[start..].to_string(), name));
    }
    out
}

#[test]
fn the_citation_finder_reads_paths_and_names() {
    let text = "Tests: `lessons/03-sigbus/tests/lesson3.rs::part1_x` and\n\
                [`common/tests/claims.rs::y_2`](../../common/tests/claims.rs).";
    assert_eq!(
        cited_tests(text),
        [
            (
                "lessons/03-sigbus/tests/lesson3.rs".into(),
                "part1_x".into()
            ),
            ("common/tests/claims.rs".into(), "y_2".into()),
        ]
    );
}

/// Whether `source` defines `fn name(` as a `#[test]`.
fn defines_test(source: &str, name: &str) -> bool {
    let lines: Vec<&str> = source.lines().collect();
    lines.iter().enumerate().any(|(i, l)| {
        l.trim_start().starts_with(&format!("fn {name}("))
            && lines[..i]
                .iter()
                .rev()
                .take_while(|p| p.trim_start().starts_with("#[") || p.trim().is_empty())
                .any(|p| p.trim() == "#[test]")
    })
}

#[test]
fn every_claim_cites_tests_that_exist() {
    let claims = fs::read_to_string(root().join("docs/src/claims.md")).unwrap();
    let mut checked = 0;
    for section in claims.split("<a id=\"claim-").skip(1) {
        let slug = &section[..section.find('"').unwrap()];
        let see_it = &section[section.find("**See it:**").expect("a See it")..];
        let cited = cited_tests(see_it);
        assert!(
            !cited.is_empty(),
            "claim-{slug} cites no test as `lessons/NN-x/tests/file.rs::name`"
        );
        for (path, name) in cited {
            assert!(
                (path.starts_with("lessons/") || path.starts_with("common/"))
                    && path.contains("/tests/"),
                "claim-{slug}: {path}::{name} is not a path from the workspace root to a test file"
            );
            let source = fs::read_to_string(root().join(&path))
                .unwrap_or_else(|_| panic!("claim-{slug}: no file {path}"));
            assert!(
                defines_test(&source, &name),
                "claim-{slug}: {path} has no #[test] fn {name}"
            );
            checked += 1;
        }
    }
    assert!(checked > 0);
}
