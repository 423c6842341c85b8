//! Keeps `docs/conformance.md` honest: every test it names exists, and the
//! register table lists every register of virtio v1.4 §4.2.2 and §4.2.4.
//!
//! A test reference in the document is a code span of the form
//! `` `path/to/file.rs::test_name` ``, the path relative to the workspace
//! root; the function `fn test_name` must be defined in that file. Any
//! other code span in a table row that looks like a test path
//! (`vmmio_*::…::tests::…`, `crate::…test…`) is reported as being in the
//! wrong format. HTML comments are skipped.

use std::fs;
use std::path::{Path, PathBuf};

/// The workspace root (this crate is `crates/device`).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..")
}

fn conformance_doc() -> String {
    let path = workspace_root().join("docs").join("conformance.md");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `text` with every HTML comment blanked out (newlines kept, so line
/// numbers stay right): examples in comments are not references.
fn without_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<!--") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find("-->") else {
            rest = &rest[start..];
            break;
        };
        let comment = &rest[start..start + len + 3];
        out.extend(comment.chars().filter(|&c| c == '\n'));
        rest = &rest[start + len + 3..];
    }
    out.push_str(rest);
    out
}

/// The code spans of `text` (between single backticks), with line numbers.
fn code_spans(text: &str) -> Vec<(usize, &str)> {
    let mut spans = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let mut parts = line.split('`');
        parts.next();
        while let (Some(inside), Some(_)) = (parts.next(), parts.next()) {
            spans.push((number + 1, inside));
        }
    }
    spans
}

/// A test reference `path.rs::name`, split.
fn test_reference(span: &str) -> Option<(&str, &str)> {
    let (path, name) = span.rsplit_once("::")?;
    let is_ident = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    (path.ends_with(".rs") && is_ident).then_some((path, name))
}

/// Whether `source` defines a function called `name` (`fn name(` or
/// `fn name<`, whatever the spacing inside a `proptest!` block).
fn defines_fn(source: &str, name: &str) -> bool {
    source.match_indices("fn ").any(|(at, _)| {
        let before_ok = at == 0
            || source[..at]
                .chars()
                .next_back()
                .is_some_and(|c| !c.is_ascii_alphanumeric() && c != '_');
        let rest = source[at + 3..].trim_start();
        before_ok
            && rest.strip_prefix(name).is_some_and(|after| {
                after.trim_start().starts_with('(') || after.trim_start().starts_with('<')
            })
    })
}

/// The lines between `<!-- NAME:begin -->` and `<!-- NAME:end -->`.
fn section<'a>(doc: &'a str, name: &str) -> &'a str {
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let start = doc.find(&begin).unwrap_or_else(|| panic!("no {begin}")) + begin.len();
    let stop = doc[start..]
        .find(&end)
        .unwrap_or_else(|| panic!("no {end}"))
        + start;
    &doc[start..stop]
}

/// Table rows of a section (lines starting with `|`), minus the header and
/// separator lines.
fn table_rows(section: &str) -> Vec<&str> {
    section
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('|'))
        .filter(|l| !l.trim_start_matches('|').trim_start().starts_with("---"))
        .skip(1)
        .collect()
}

#[test]
fn conformance_table_names_real_tests() {
    let doc = without_comments(&conformance_doc());
    let root = workspace_root();
    let mut problems = Vec::new();
    let mut checked = 0usize;
    let table_lines: Vec<bool> = doc
        .lines()
        .map(|l| l.trim_start().starts_with('|'))
        .collect();
    for (line, span) in code_spans(&doc) {
        let in_table = table_lines.get(line - 1).copied().unwrap_or(false);
        if let Some((path, name)) = test_reference(span) {
            let file = root.join(path);
            match fs::read_to_string(&file) {
                Ok(source) if defines_fn(&source, name) => checked += 1,
                Ok(_) => problems.push(format!("line {line}: no `fn {name}` in {path}")),
                Err(e) => problems.push(format!("line {line}: {path}: {e}")),
            }
        } else if in_table
            && (span.contains("::tests::")
                || (span.starts_with("crate::") && span.contains("test")))
        {
            problems.push(format!(
                "line {line}: `{span}` is not in the `path/to/file.rs::test_name` format"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/conformance.md:\n{}",
        problems.join("\n")
    );
    assert!(checked > 0, "docs/conformance.md names no test");
}

#[test]
fn conformance_rows_of_the_transport_name_a_test() {
    let doc = conformance_doc();
    for name in ["registers", "device"] {
        let rows = table_rows(section(&doc, name));
        assert!(!rows.is_empty(), "section {name} has no rows");
        for row in rows {
            assert!(
                code_spans(row)
                    .iter()
                    .any(|(_, s)| test_reference(s).is_some()),
                "section {name}: row names no test: {row}"
            );
        }
    }
}

#[test]
fn conformance_register_table_lists_every_register() {
    let doc = conformance_doc();
    let registers = section(&doc, "registers");
    let rows = table_rows(registers);
    for register in vmmio_spec::mmio::REGISTERS {
        let offset = format!("0x{:03x}", register.offset);
        let listed = rows
            .iter()
            .any(|row| row.contains(&offset) && row.contains(&format!("`{}`", register.name)));
        assert!(
            listed,
            "{} ({offset}) missing from the register table",
            register.name
        );
    }
    assert!(
        rows.iter().any(|row| row.contains("`Config`")),
        "Config missing"
    );
}

#[test]
fn defines_fn_matches_whole_names_only() {
    let source = "fn alpha() {}\n    fn beta_gamma<T>(x: T) {}\nfn delta_x() {}\n";
    assert!(defines_fn(source, "alpha"));
    assert!(defines_fn(source, "beta_gamma"));
    assert!(!defines_fn(source, "beta"));
    assert!(!defines_fn(source, "delta"));
    assert_eq!(
        test_reference("crates/device/src/transport/tests.rs::alpha"),
        Some(("crates/device/src/transport/tests.rs", "alpha"))
    );
    assert_eq!(
        test_reference("vmmio_device::transport::tests::alpha"),
        None
    );
    assert_eq!(without_comments("a<!-- `x.rs::y`\n -->b"), "a\nb");
}
