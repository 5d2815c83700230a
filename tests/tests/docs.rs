//! The docs' code is code that is built and tested. Every Rust, TOML, Python,
//! JavaScript or C block of the README and the guides follows a
//! `<!-- snippet: PATH -->` line and is cut from that file: its parts (separated
//! by `...` lines) appear in the file in order, line for line. The files are
//! templates of `mneme new` (shown for an entity named `counter`, built and tested
//! by `scripts/test-scaffolds.sh`) or example and test sources (built and tested
//! by the workspace's tests), so a snippet that drifts from them fails here.

use std::path::Path;

use mneme::scaffold::Names;
use mneme_tests::root;

/// The documents whose code blocks are checked.
const DOCS: &[&str] = &[
    "README.md",
    "examples/README-languages.md",
    "examples/bank-account-python/README.md",
    "examples/bank-account-js/README.md",
    "examples/bank-account-c/README.md",
    "examples/account-balances-python/README.md",
];

/// Code in these languages must be cut from a file; shell commands and sample
/// output (`sh`, `text`, `json`, none) are not code of the project.
const CODE: &[&str] = &["rust", "toml", "python", "js", "c"];

struct Block {
    doc: String,
    line: usize,
    lang: String,
    source: Option<String>,
    body: Vec<String>,
}

fn blocks(doc: &str) -> Vec<Block> {
    let text = std::fs::read_to_string(root().join(doc)).unwrap_or_else(|e| panic!("{doc}: {e}"));
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if let Some(lang) = lines[i].strip_prefix("```") {
            let source = (i > 0)
                .then(|| lines[i - 1].trim())
                .and_then(|l| l.strip_prefix("<!-- snippet:"))
                .and_then(|l| l.strip_suffix("-->"))
                .map(|p| p.trim().to_string());
            let start = i;
            i += 1;
            let mut body = Vec::new();
            while i < lines.len() && !lines[i].starts_with("```") {
                body.push(lines[i].trim_end().to_string());
                i += 1;
            }
            out.push(Block { doc: doc.to_string(), line: start + 1, lang: lang.trim().to_string(), source, body });
        }
        i += 1;
    }
    out
}

/// The file a snippet is cut from, as the docs show it: templates filled in for
/// an entity named `counter` in a project beside mneme's checkout.
fn source_lines(path: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("snippet source {path}: {e}"));
    let text =
        if path.starts_with("host/templates/") { Names::new("counter").unwrap().fill(&text, "../mneme") } else { text };
    text.lines().map(|l| l.trim_end().to_string()).collect()
}

/// Where the parts of `body` (split at `...` lines) occur in `source`, in order,
/// or the first part that does not.
fn find_parts(body: &[String], source: &[String]) -> Result<(), String> {
    let mut from = 0;
    for part in body.split(|l| l.trim() == "...").filter(|p| !p.is_empty()) {
        let found = (from..=source.len().saturating_sub(part.len())).find(|&s| source[s..s + part.len()] == *part);
        match found {
            Some(s) => from = s + part.len(),
            None => return Err(part.join("\n")),
        }
    }
    Ok(())
}

#[test]
fn every_code_block_of_the_docs_is_cut_from_a_built_and_tested_file() {
    let mut checked = 0;
    let mut problems = Vec::new();
    for doc in DOCS {
        for b in blocks(doc) {
            if !CODE.contains(&b.lang.as_str()) {
                continue;
            }
            let Some(source) = &b.source else {
                problems.push(format!(
                    "{}:{}: a ```{} block without a `<!-- snippet: PATH -->` line above it",
                    b.doc, b.line, b.lang
                ));
                continue;
            };
            assert!(Path::new(&root().join(source)).is_file(), "{}:{}: no file {source}", b.doc, b.line);
            if let Err(part) = find_parts(&b.body, &source_lines(source)) {
                problems.push(format!("{}:{}: not found in {source} (in this order):\n{part}", b.doc, b.line));
            }
            checked += 1;
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    assert!(checked >= 8, "only {checked} snippets found: is the marker still `<!-- snippet: PATH -->`?");
}

#[test]
fn a_snippet_that_drifts_from_its_file_is_caught() {
    let source: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
    let body = |lines: &[&str]| lines.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(find_parts(&body(&["a", "b", "...", "d"]), &source).is_ok());
    assert!(find_parts(&body(&["b", "c"]), &source).is_ok());
    assert!(find_parts(&body(&["d", "...", "a"]), &source).is_err(), "parts out of order");
    assert!(find_parts(&body(&["a", "c"]), &source).is_err(), "a line left out without `...`");
    assert!(find_parts(&body(&["a", "x"]), &source).is_err(), "a changed line");
}
