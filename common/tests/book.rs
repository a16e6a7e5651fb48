//! The book, the README and the lessons agree.
//!
//! - every lesson folder has a chapter `docs/src/<folder>.md`, listed in
//!   `docs/src/SUMMARY.md`;
//! - every `{{#include path:anchor}}` in the book points at a file that exists
//!   and an anchor that is opened and closed in it;
//! - every lesson appears in the README's table and in the book's
//!   introduction with its `cargo run` command and a link to its chapter.
//! - every chapter heading over a `section("N. …")` carries the number N,
//!   chapter titles match SUMMARY.md, and the lessons come before the
//!   appendices;
//! - the snippet figures of each chapter (lines included, narration share,
//!   longest snippet) are printed, and enforced for the chapters in
//!   `SNIPPET_LIMITS_ENFORCED`;
//! - the book `mdbook build` writes has no dead local `href` or `src`.

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
    "claim-rmdir-hazard",
];

/// Every page of the book: the Markdown files under docs/src, at any depth.
fn book_pages() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join("docs/src"), &mut out);
    out.sort();
    out
}

/// The Markdown files whose links must resolve: the book and the README.
fn markdown_files() -> Vec<PathBuf> {
    let mut out = book_pages();
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
        // XML 1.0, section 2.5: "--" must not occur within a comment (nor
        // may one end in "--->"). Browsers then refuse the whole picture.
        if let Some(comment) = tag.strip_prefix("!--") {
            if comment.contains("--") || comment.ends_with('-') {
                return Err(format!("\"--\" inside a comment: <{tag}-->"));
            }
        }
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
        "<svg xmlns=\"http://www.w3.org/2000/svg\"><!-- docker run --ipc=host --><rect/></svg>",
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

// ---------------------------------------------------------------------------
// Titles, section numbers, snippet sizes and the built book (issue 14).
// ---------------------------------------------------------------------------

/// The lesson chapters, `docs/src/NN-name.md`.
fn lesson_chapters() -> Vec<PathBuf> {
    chapters()
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.len() > 3
                && name[..2].chars().all(|c| c.is_ascii_digit())
                && name.as_bytes()[2] == b'-'
        })
        .collect()
}

/// `{{#include path:anchor}}` as the chapter shows it.
struct Snippet {
    /// The heading the include sits under (the whole `#…` line).
    heading: String,
    /// `path` or `path:anchor`, as written.
    target: String,
    file: PathBuf,
    /// The included lines, without blank lines and `ANCHOR` markers.
    body: Vec<String>,
    /// The paragraphs just before and just after the fenced block.
    around: String,
}

/// The paragraph of `lines` that ends at `end` (exclusive), going back over
/// blank lines first, and the one that starts at `start` going forward.
fn paragraph(lines: &[&str], from: usize, forward: bool) -> String {
    let mut i = from as isize;
    let step = if forward { 1 } else { -1 };
    let valid = |i: isize| i >= 0 && (i as usize) < lines.len();
    while valid(i) && lines[i as usize].trim().is_empty() {
        i += step;
    }
    let mut out = Vec::new();
    while valid(i) && !lines[i as usize].trim().is_empty() && !lines[i as usize].starts_with('#') {
        out.push(lines[i as usize]);
        i += step;
    }
    out.join(" ")
}

/// Every include of a chapter, with the lines it pulls in.
fn snippets(chapter: &Path) -> Vec<Snippet> {
    let text = fs::read_to_string(chapter).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut heading = String::new();
    let mut fenced = false;
    let mut fence_start = 0;
    for (n, line) in lines.iter().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            if fenced {
                fence_start = n;
            }
            continue;
        }
        if !fenced && line.starts_with('#') {
            heading = line.to_string();
        }
        for directive in ["{{#include ", "{{#rustdoc_include "] {
            let Some(i) = line.find(directive) else {
                continue;
            };
            let rest = &line[i + directive.len()..];
            let target = rest[..rest.find("}}").unwrap()].trim().to_string();
            let (path, anchor) = match target.rsplit_once(':') {
                Some((p, a)) if !a.chars().all(|c| c.is_ascii_digit()) => (p, Some(a)),
                _ => (target.as_str(), None),
            };
            let file = normalize(&chapter.parent().unwrap().join(path));
            let source = fs::read_to_string(&file).unwrap_or_default();
            let all: Vec<&str> = source.lines().collect();
            let body: &[&str] = match anchor {
                Some(a) => {
                    let open = format!("ANCHOR: {a}");
                    let close = format!("ANCHOR_END: {a}");
                    let s = all.iter().position(|l| l.trim_end().ends_with(&open));
                    let e = all.iter().position(|l| l.trim_end().ends_with(&close));
                    match (s, e) {
                        (Some(s), Some(e)) if s < e => &all[s + 1..e],
                        _ => &[],
                    }
                }
                None => &all,
            };
            // The closing fence of this block, to find the paragraph after it.
            let close = (n + 1..lines.len())
                .find(|&j| lines[j].trim_start().starts_with("```"))
                .unwrap_or(n);
            let around = format!(
                "{} {}",
                paragraph(&lines, fence_start.saturating_sub(1), false),
                paragraph(&lines, close + 1, true)
            );
            out.push(Snippet {
                heading: heading.clone(),
                target: target.clone(),
                file: file.clone(),
                body: body
                    .iter()
                    .filter(|l| !l.trim().is_empty() && !l.contains("ANCHOR"))
                    .map(|l| l.to_string())
                    .collect(),
                around,
            });
        }
    }
    out
}

/// The number a title starts with: `"4. Placement"` → 4.
fn leading_number(title: &str) -> Option<u32> {
    let digits: String = title.chars().take_while(|c| c.is_ascii_digit()).collect();
    if digits.is_empty() || !title[digits.len()..].starts_with('.') {
        return None;
    }
    digits.parse().ok()
}

/// The number a chapter heading carries: `"4. Placement"` or
/// `"Part 4: Placement"` → 4.
fn heading_number(title: &str) -> Option<u32> {
    let title = title.strip_prefix("Part ").unwrap_or(title);
    let digits: String = title.chars().take_while(|c| c.is_ascii_digit()).collect();
    let after = &title[digits.len()..];
    if digits.is_empty() || !(after.starts_with('.') || after.starts_with(':')) {
        return None;
    }
    digits.parse().ok()
}

/// The numbers of the `section("N. …")` calls in a snippet. A title that
/// does not start with a number (lesson 5's `"writer 3. …"`, numbered per
/// process) is not a section number of the chapter.
fn section_numbers(body: &[String]) -> Vec<u32> {
    let mut out = Vec::new();
    for line in body {
        let l = line.trim_start();
        let l = l.strip_prefix("narrate::").unwrap_or(l);
        let Some(rest) = l.strip_prefix("section(") else {
            continue;
        };
        let rest = rest.strip_prefix("format!(").unwrap_or(rest);
        if let Some(title) = rest.strip_prefix('"') {
            out.extend(leading_number(title));
        }
    }
    out
}

#[test]
fn the_section_number_finder_reads_titles() {
    let body = [
        "    section(\"4. Placement: sched_setaffinity\");",
        "        narrate::section(format!(\"7. Results, {}\", g.placement));",
        "    section(\"writer 3. Write the header\");",
        "    section(\"Unmap and unlink\");",
        "    subsection(\"5. not a section\");",
    ]
    .map(String::from);
    assert_eq!(section_numbers(&body), [4, 7]);
    assert_eq!(leading_number("12. x"), Some(12));
    assert_eq!(leading_number("2024 was"), None);
    assert_eq!(heading_number("Part 2: fork"), Some(2));
    assert_eq!(heading_number("3. The fix"), Some(3));
    assert_eq!(heading_number("The helpers"), None);
}

#[test]
fn every_chapter_section_carries_the_number_of_the_program_section_it_shows() {
    let mut checked = 0;
    let mut wrong = Vec::new();
    for chapter in lesson_chapters() {
        let name = chapter.file_name().unwrap().to_string_lossy().into_owned();
        for s in snippets(&chapter) {
            let title = s.heading.trim_start_matches('#').trim();
            for n in section_numbers(&s.body) {
                checked += 1;
                if heading_number(title) != Some(n) {
                    wrong.push(format!(
                        "{name}: `{}` includes {}, which prints section {n}; \
                         number the heading `{n}. …` (or `Part {n}: …`) like the program",
                        s.heading, s.target
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(checked > 0, "no chapter shows a numbered section(...)");
}

#[test]
fn every_chapter_title_is_its_summary_entry() {
    let summary = fs::read_to_string(root().join("docs/src/SUMMARY.md")).unwrap();
    for chapter in lesson_chapters() {
        let file = chapter.file_name().unwrap().to_string_lossy().into_owned();
        let text = fs::read_to_string(&chapter).unwrap();
        let title = text
            .lines()
            .find_map(|l| l.strip_prefix("# "))
            .unwrap_or_else(|| panic!("{file} has no `# ` title"))
            .replace('`', "");
        let entry = summary
            .lines()
            .find(|l| l.contains(&format!("]({file})")))
            .unwrap_or_else(|| panic!("SUMMARY.md does not list {file}"));
        let entry = &entry[entry.find('[').unwrap() + 1..entry.rfind("](").unwrap()];
        assert_eq!(
            entry.replace('`', ""),
            title,
            "{file}'s title and its SUMMARY.md entry differ"
        );
    }
}

#[test]
fn the_lessons_come_before_the_appendices() {
    let summary = fs::read_to_string(root().join("docs/src/SUMMARY.md")).unwrap();
    let at = |page: &str| {
        summary
            .find(&format!("({page})"))
            .unwrap_or_else(|| panic!("SUMMARY.md does not list {page}"))
    };
    let last_lesson = lessons()
        .iter()
        .map(|(folder, _)| at(&format!("{folder}.md")))
        .max()
        .unwrap();
    let first_lesson = lessons()
        .iter()
        .map(|(folder, _)| at(&format!("{folder}.md")))
        .min()
        .unwrap();
    assert!(
        at("README.md") < first_lesson,
        "the introduction comes first"
    );
    for appendix in ["claims.md", "instructor.md"] {
        assert!(
            at(appendix) > last_lesson,
            "SUMMARY.md lists {appendix} before a lesson: appendices come last"
        );
    }
}

/// The longest snippet a chapter shows without saying why.
const SNIPPET_MAX_LINES: usize = 40;

/// Chapters whose snippets must keep the limits of issue 14, point 2: every
/// `{{#include}}` at most `SNIPPET_MAX_LINES` lines (unless the paragraph
/// before or after it says why, with the words "long because"), and at most a
/// third of the included lines narration only. A chapter joins this list once
/// its snippets keep the limits (after its lesson moved to the one-line
/// narration of `common::call`); until then its figures are only printed.
/// Every chapter is on it now.
const SNIPPET_LIMITS_ENFORCED: &[&str] = &[
    "01-posix-fork.md",
    "02-sysv-fork.md",
    "03-sigbus.md",
    "04-devshm.md",
    "05-unrelated.md",
    "06-sync.md",
    "07-lifecycle.md",
    "08-speed.md",
    "09-pages.md",
    "10-containers.md",
];

/// Whether `line` starts a narration-only statement: a call of one of the
/// narration functions, possibly bound with `let x =` (the same rule as
/// `../shared/tools/book-snippets`).
fn starts_narration(line: &str) -> bool {
    const CALLS: &[&str] = &[
        "step",
        "explain",
        "evidence",
        "compare",
        "note",
        "section",
        "subsection",
        "fact",
        "block",
        "title",
        "warn",
        "conclude",
        "hold_point",
        "s.ok",
        "s.check",
        "s.fail",
    ];
    let mut l = line.trim_start();
    if let Some(rest) = l
        .strip_prefix("let")
        .filter(|r| r.starts_with(char::is_whitespace))
    {
        let rest = rest.trim_start();
        let ident = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .count();
        if ident > 0 {
            if let Some(value) = rest[ident..].trim_start().strip_prefix('=') {
                l = value.trim_start();
            }
        }
    }
    let l = l.strip_prefix("narrate::").unwrap_or(l);
    CALLS.iter().any(|call| {
        l.strip_prefix(call)
            .is_some_and(|rest| rest.trim_start().starts_with('('))
    })
}

/// How many of `body`'s lines belong to narration-only statements: from a
/// line that starts one to the line where its parentheses close and it ends
/// with `;` or `)`.
fn narration_lines(body: &[String]) -> usize {
    let mut count = 0;
    let mut inside = false;
    let mut depth: i64 = 0;
    for line in body {
        if !inside && starts_narration(line) {
            inside = true;
            depth = 0;
        }
        if inside {
            count += 1;
            depth += line.matches('(').count() as i64 - line.matches(')').count() as i64;
            let end = line.trim_end();
            if depth <= 0 && (end.ends_with(';') || end.ends_with(')')) {
                inside = false;
            }
        }
    }
    count
}

#[test]
fn the_narration_counter_counts_whole_statements() {
    let body = [
        "let s = step(format!(",
        "    \"shm_open({name})\",",
        "));",
        "let fd = s.check(shm_open(name, flags, mode))?;",
        "s.ok(fd);",
        "let fd = call!(shm_open(name.as_str(), flags, mode))?;",
        "narrate::explain(\"why\");",
        "let steps = 3;",
        "letter(\"x\");",
    ]
    .map(String::from);
    // step (3 lines), s.check, s.ok, explain.
    assert_eq!(narration_lines(&body), 6);
}

#[test]
fn snippets_show_the_core_per_chapter_figures() {
    let mut report = Vec::new();
    let mut broken = Vec::new();
    for chapter in lesson_chapters() {
        let name = chapter.file_name().unwrap().to_string_lossy().into_owned();
        let (mut total, mut narration, mut longest) = (0, 0, 0);
        let enforced = SNIPPET_LIMITS_ENFORCED.contains(&name.as_str());
        for s in snippets(&chapter) {
            let code = s
                .file
                .extension()
                .is_some_and(|x| x == "rs" || x == "c" || x == "py");
            if !code {
                continue;
            }
            total += s.body.len();
            narration += narration_lines(&s.body);
            longest = longest.max(s.body.len());
            if enforced
                && s.body.len() > SNIPPET_MAX_LINES
                && !s.around.to_lowercase().contains("long because")
            {
                broken.push(format!(
                    "{name}: {} is {} lines (at most {SNIPPET_MAX_LINES}, or say why: \"… long because …\")",
                    s.target,
                    s.body.len()
                ));
            }
        }
        let share = if total > 0 {
            narration as f64 / total as f64
        } else {
            0.0
        };
        report.push(format!(
            "{name:28} included {total:4}  narration {narration:4} ({:3.0}%)  longest snippet {longest:3}{}",
            share * 100.0,
            if enforced { "  [enforced]" } else { "" }
        ));
        if enforced && narration * 3 > total {
            broken.push(format!(
                "{name}: {narration} of {total} included lines are narration only (at most a third)"
            ));
        }
    }
    let report = report.join("\n");
    println!("{report}");
    assert!(
        broken.is_empty(),
        "{}\n\nper chapter:\n{report}",
        broken.join("\n")
    );
    for name in SNIPPET_LIMITS_ENFORCED {
        assert!(
            root().join("docs/src").join(name).exists(),
            "SNIPPET_LIMITS_ENFORCED names {name}, which is not a chapter"
        );
    }
}

#[test]
fn links_from_the_book_stay_inside_the_book() {
    // mdbook copies only docs/src into the built book: a link that leaves it
    // (`../../lessons/…`) works on GitHub and 404s in the book. Source paths
    // are written as code spans instead.
    let src = root().join("docs/src");
    let mut outside = Vec::new();
    for chapter in book_pages() {
        let text = fs::read_to_string(&chapter).unwrap();
        for target in link_targets(&text) {
            if target.is_empty() || target.contains("://") || target.starts_with('#') {
                continue;
            }
            let path = target.split('#').next().unwrap();
            if !normalize(&chapter.parent().unwrap().join(path)).starts_with(&src) {
                outside.push(format!("{}: {target}", chapter.display()));
            }
        }
    }
    assert!(
        outside.is_empty(),
        "links that leave docs/src (dead in the built book; write the path as a code span):\n{}",
        outside.join("\n")
    );
}

/// The value of attribute `name` in the first tag of `tag`.
fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let end = tag[at..].find('"')?;
    Some(&tag[at..at + end])
}

/// Whether a `#rgb` or `#rrggbb` colour is light (relative luminance > 0.85).
fn is_light(colour: &str) -> bool {
    let hex = colour.trim_start_matches('#');
    let hex: String = match hex.len() {
        3 => hex.chars().flat_map(|c| [c, c]).collect(),
        6 => hex.to_string(),
        _ => return colour == "white",
    };
    let channel =
        |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).map_or(0.0, |v| v as f64 / 255.0);
    0.2126 * channel(0) + 0.7152 * channel(2) + 0.0722 * channel(4) > 0.85
}

#[test]
fn every_picture_paints_its_own_light_background() {
    // mdBook shows an <img> SVG as it is, on a white page in the light themes
    // and a dark one in the others: dark ink on a transparent background
    // disappears there. So the first shape of every picture is a light
    // rectangle over the whole picture, and the ink is drawn on it.
    let mut checked = 0;
    for e in fs::read_dir(root().join("docs/src/img")).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "svg") {
            continue;
        }
        let svg = fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let root_tag = &svg[svg.find("<svg").unwrap()..];
        let root_tag = &root_tag[..root_tag.find('>').unwrap()];
        let view: Vec<f64> = attribute(root_tag, "viewBox")
            .unwrap_or_else(|| panic!("{name} has no viewBox"))
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        let after_root = svg.find("<svg").unwrap() + root_tag.len();
        let body = svg
            .find("</defs>")
            .map_or(&svg[after_root..], |i| &svg[i..]);
        let first = body
            .match_indices('<')
            .map(|(i, _)| &body[i..])
            .find(|s| {
                !s.starts_with("</")
                    && !s.starts_with("<!--")
                    && !s.starts_with("<title")
                    && !s.starts_with("<desc")
                    && !s.starts_with("<defs")
            })
            .unwrap_or_else(|| panic!("{name} draws nothing"));
        let tag = &first[..first.find('>').unwrap()];
        let number = |a: &str| attribute(tag, a).and_then(|v| v.parse::<f64>().ok());
        let covers = tag.starts_with("<rect")
            && number("x").is_some_and(|x| x <= view[0] + 2.0)
            && number("y").is_some_and(|y| y <= view[1] + 2.0)
            && number("width").is_some_and(|w| w >= view[2] - 4.0)
            && number("height").is_some_and(|h| h >= view[3] - 4.0);
        assert!(
            covers && attribute(tag, "fill").is_some_and(is_light),
            "{name}: the first shape must be a light rectangle over the whole picture (it reads \
             in the dark themes too), not {tag}>"
        );
        checked += 1;
    }
    assert!(checked > 0);
}

/// mdbook, if this machine has it: `$MDBOOK`, then `PATH`, then cargo's bin.
fn mdbook() -> Option<PathBuf> {
    let works = |p: &Path| {
        std::process::Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("MDBOOK") {
        candidates.push(p.into());
    }
    candidates.push("mdbook".into());
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    if let Some(home) = cargo_home {
        candidates.push(home.join("bin/mdbook"));
    }
    candidates.into_iter().find(|p| works(p))
}

/// Every HTML file under `dir`.
fn html_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            html_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "html") {
            out.push(p);
        }
    }
}

/// The values of every `href="…"` and `src="…"` attribute in `html`.
fn html_links(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in [" href=\"", " src=\""] {
        for (i, _) in html.match_indices(attr) {
            let rest = &html[i + attr.len()..];
            if let Some(end) = rest.find('"') {
                out.push(rest[..end].replace("&amp;", "&"));
            }
        }
    }
    out
}

/// Dead local links of a built book: a file that does not exist, or a
/// `#fragment` that names no `id` of its page.
fn dead_links(book: &Path) -> (usize, Vec<String>) {
    let mut pages = Vec::new();
    html_files(book, &mut pages);
    let mut checked = 0;
    let mut dead = Vec::new();
    for page in &pages {
        let html = fs::read_to_string(page).unwrap();
        let shown = page.strip_prefix(book).unwrap().display().to_string();
        for link in html_links(&html) {
            let scheme = link.split_once(':').is_some_and(|(s, _)| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
            });
            if link.is_empty() || scheme || link.starts_with("//") {
                continue;
            }
            let (path, fragment) = match link.split_once('#') {
                Some((p, f)) => (p, Some(f)),
                None => (link.as_str(), None),
            };
            let path = path.split('?').next().unwrap();
            let target = if path.is_empty() {
                page.clone()
            } else if let Some(from_root) = path.strip_prefix('/') {
                // 404.html's links, under <base href="/">, start at the book's root.
                normalize(&book.join(from_root))
            } else {
                normalize(&page.parent().unwrap().join(path))
            };
            checked += 1;
            if !target.starts_with(book) || !target.exists() {
                dead.push(format!("{shown}: {link} (no such file)"));
                continue;
            }
            if let Some(f) = fragment.filter(|f| !f.is_empty()) {
                let is_page = target.extension().is_some_and(|x| x == "html");
                let text = if is_page {
                    fs::read_to_string(&target).unwrap_or_default()
                } else {
                    continue;
                };
                if !text.contains(&format!("id=\"{f}\"")) {
                    dead.push(format!("{shown}: {link} (no id=\"{f}\" there)"));
                }
            }
        }
    }
    (checked, dead)
}

#[test]
fn the_dead_link_finder_finds_dead_links() {
    let dir = std::env::temp_dir().join(format!("shm-lessons-book-{}", std::process::id()));
    fs::create_dir_all(dir.join("img")).unwrap();
    fs::write(dir.join("img/a.svg"), "<svg/>").unwrap();
    fs::write(
        dir.join("a.html"),
        "<h2 id=\"x\">x</h2><a href=\"b.html#y\">ok</a> <img src=\"img/a.svg\"> \
         <a href=\"https://man7.org/\">out</a> <a href=\"#x\">x</a>",
    )
    .unwrap();
    fs::write(
        dir.join("b.html"),
        "<p id=\"y\"></p><a href=\"../../lessons/x.rs\">gone</a> \
         <a href=\"a.html#nope\">no id</a> <img src=\"img/b.svg\">",
    )
    .unwrap();
    let (checked, mut dead) = dead_links(&dir);
    dead.sort();
    fs::remove_dir_all(&dir).unwrap();
    assert_eq!(checked, 6);
    assert_eq!(
        dead,
        [
            "b.html: ../../lessons/x.rs (no such file)",
            "b.html: a.html#nope (no id=\"nope\" there)",
            "b.html: img/b.svg (no such file)",
        ]
    );
}

/// The built book has no dead local link. It checks `$SHM_LESSONS_BOOK_DIR`
/// when set (`.ci/run` points it at `docs/book` after `mdbook build`);
/// otherwise it builds the book into a scratch directory with this machine's
/// mdbook, and skips, saying so, when there is none.
#[test]
fn the_built_book_has_no_dead_local_link() {
    let (book, scratch) = match std::env::var_os("SHM_LESSONS_BOOK_DIR") {
        Some(dir) => (PathBuf::from(dir), None),
        None => {
            let Some(mdbook) = mdbook() else {
                println!(
                    "skipped: mdbook is not installed (set MDBOOK, or run .ci/run, \
                     which builds docs/book and runs this check on it)"
                );
                return;
            };
            let dir =
                std::env::temp_dir().join(format!("shm-lessons-built-book-{}", std::process::id()));
            let out = std::process::Command::new(&mdbook)
                .arg("build")
                .arg(root().join("docs"))
                .arg("--dest-dir")
                .arg(&dir)
                .output()
                .expect("run mdbook");
            let log = String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout);
            if !out.status.success() || log.contains("ERROR") {
                let _ = fs::remove_dir_all(&dir);
                panic!("mdbook build failed:\n{log}");
            }
            (dir.clone(), Some(dir))
        }
    };
    let book =
        fs::canonicalize(&book).unwrap_or_else(|_| panic!("no built book at {}", book.display()));
    let (checked, dead) = dead_links(&book);
    if let Some(dir) = scratch {
        fs::remove_dir_all(dir).unwrap();
    }
    println!("{checked} local links checked in {}", book.display());
    assert!(checked > 0, "no local link in {}", book.display());
    assert!(
        dead.is_empty(),
        "dead links in the built book:\n{}",
        dead.join("\n")
    );
}
