//! Every relative link of the README, the guide (`docs/`) and BENCHMARKS.md resolves: the file
//! exists, and a `#fragment` names a heading of it, as GitHub derives anchors from headings.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The Markdown files whose links are checked.
fn documents() -> Vec<PathBuf> {
    let root = Path::new(ROOT);
    let mut files = vec![root.join("README.md"), root.join("BENCHMARKS.md")];
    let mut guide: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|entry| entry.expect("docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    guide.sort();
    files.extend(guide);
    files
}

/// The text outside fenced code blocks and inline code spans, where a `](` is a link.
fn prose(markdown: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            // Inline code spans may hold `](`; drop them.
            let kept: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
            out.push_str(&kept);
            out.push('\n');
        }
    }
    out
}

/// The targets of inline links and images, `[text](target)` and `![alt](target "title")`.
fn link_targets(markdown: &str) -> Vec<String> {
    let text = prose(markdown);
    let mut targets = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        let end = rest.find(')').unwrap_or(rest.len());
        let target = rest[..end].split_whitespace().next().unwrap_or("").trim_matches(['<', '>']);
        targets.push(target.to_string());
        rest = &rest[end..];
    }
    targets
}

/// GitHub's anchor of a heading: lower case, letters, digits, `-` and `_` kept, spaces to `-`,
/// everything else dropped; a repeated heading gets `-1`, `-2`, ...
fn anchors(markdown: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let mut unique = slug.clone();
        let mut n = 0;
        while !seen.insert(unique.clone()) {
            n += 1;
            unique = format!("{slug}-{n}");
        }
    }
    seen
}

#[test]
fn every_relative_link_resolves() {
    let mut checked = 0;
    let mut broken = Vec::new();
    for document in documents() {
        let markdown = std::fs::read_to_string(&document).expect("readable Markdown");
        let dir = document.parent().expect("a folder");
        for target in link_targets(&markdown) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, fragment) = match target.split_once('#') {
                Some((path, fragment)) => (path, Some(fragment)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() { document.clone() } else { dir.join(path) };
            let name = document.strip_prefix(ROOT).unwrap_or(&document).display().to_string();
            if !file.exists() {
                broken.push(format!("{name}: {target} (no such file)"));
                continue;
            }
            if let Some(fragment) = fragment {
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                if !anchors(&text).contains(fragment) {
                    broken.push(format!("{name}: {target} (no heading with that anchor)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(checked >= 20, "only {checked} relative links found: is the parser still reading them?");
}

#[test]
fn the_checker_reads_links_and_anchors_as_github_does() {
    let text = "# The paper's smooth-MLP experiment\n## Beyond one GPU\n## Beyond one GPU\n\
                see [a](docs/a.md#x), ![b](b.svg \"title\"), `[c](not.md)`\n```\n[d](e.md)\n```\n";
    assert_eq!(link_targets(text), ["docs/a.md#x", "b.svg"]);
    let found = anchors(text);
    for anchor in ["the-papers-smooth-mlp-experiment", "beyond-one-gpu", "beyond-one-gpu-1"] {
        assert!(found.contains(anchor), "{anchor} in {found:?}");
    }
}
