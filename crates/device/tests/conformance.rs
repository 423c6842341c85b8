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

/// The header cells and the rows of the table in a section.
fn table(section: &str) -> (Vec<&str>, Vec<&str>) {
    let header = section
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with('|'))
        .map(cells)
        .unwrap_or_default();
    (header, table_rows(section))
}

/// Checks that every row of a table names a test in its `Tests` column or,
/// in a `By construction` column, says why the rule cannot be broken.
fn check_rows_are_backed(section_name: &str, section: &str) -> Vec<String> {
    let (header, rows) = table(section);
    let Some(tests) = header.iter().position(|&h| h == "Tests") else {
        return vec![format!("section {section_name}: no Tests column")];
    };
    let why = header.iter().position(|&h| h == "By construction");
    let mut problems = Vec::new();
    if rows.is_empty() {
        problems.push(format!("section {section_name} has no rows"));
    }
    for row in rows {
        let c = cells(row);
        if c.len() != header.len() {
            problems.push(format!(
                "section {section_name}: {} cells, header has {}: {row}",
                c.len(),
                header.len()
            ));
            continue;
        }
        let names_test = code_spans(c[tests])
            .iter()
            .any(|(_, s)| test_reference(s).is_some());
        let explained = why.is_some_and(|w| c[w].len() > 10);
        if !names_test && !explained {
            problems.push(format!("section {section_name}: row names no test and gives no reason it holds by construction: {row}"));
        }
    }
    problems
}

#[test]
fn conformance_rows_name_a_test_or_say_why_they_hold_by_construction() {
    let doc = conformance_doc();
    let mut problems = Vec::new();
    for name in [
        "registers",
        "device",
        "driver",
        "queue",
        "packed",
        "device-types",
    ] {
        problems.extend(check_rows_are_backed(name, section(&doc, name)));
    }
    assert!(
        problems.is_empty(),
        "docs/conformance.md:\n{}",
        problems.join("\n")
    );
}

#[test]
fn row_checker_wants_a_test_or_a_reason() {
    let section = "| Section | Statement | Tests | By construction |\n| --- | --- | --- | --- |\n\
                   | 1 | a | `x.rs::t` |  |\n\
                   | 2 | b |  | the register is hard-wired to 0 |\n\
                   | 3 | c |  |  |\n";
    let p = check_rows_are_backed("s", section);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("| 3 |"), "{p:?}");
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

// ---- Direction and Version columns against the spec table and the tests --

/// `(offset, constant name)` of every `pub const NAME: u64 = 0x...;` in
/// `crates/spec/src/mmio.rs`: how tests name the registers (`mmio::NAME`).
fn register_constants() -> Vec<(u64, String)> {
    let path = workspace_root().join("crates/spec/src/mmio.rs");
    let source = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    source
        .lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("pub const ")?;
            let (name, rest) = rest.split_once(": u64 = 0x")?;
            let hex = rest.strip_suffix(';')?.replace('_', "");
            Some((u64::from_str_radix(&hex, 16).ok()?, name.to_string()))
        })
        .collect()
}

/// The text of `fn name` in `source`, from `fn` to its matching closing
/// brace (braces inside strings are rare enough in tests to be ignored).
fn fn_text<'a>(source: &'a str, name: &str) -> Option<&'a str> {
    let start = source.match_indices("fn ").map(|(at, _)| at).find(|&at| {
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
    })?;
    let open = start + source[start..].find('{')?;
    let mut depth = 0usize;
    for (i, c) in source[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&source[start..open + i + 1]);
                }
            }
            _ => {}
        }
    }
    None
}

/// The cells of a table row, trimmed, without the outer pipes.
fn cells(row: &str) -> Vec<&str> {
    let inner = row.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(str::trim).collect()
}

/// Which transport versions a test body drives: 1 (legacy) if it builds a
/// legacy window or runs the legacy probe, 2 (modern) likewise. This is the
/// naming convention the register table's Version column is checked with.
fn versions_driven(body: &str) -> [bool; 2] {
    let legacy = ["TransportVersion::Legacy", "legacy()", "linux_legacy_probe"];
    let modern = ["TransportVersion::Modern", "modern()", "linux_v2_"];
    [
        legacy.iter().any(|p| body.contains(p)),
        modern.iter().any(|p| body.contains(p)),
    ]
}

/// The spec table's direction and version of a register, as the document
/// spells them.
fn spec_columns(register: &vmmio_spec::mmio::Register) -> (&'static str, &'static str) {
    use vmmio_spec::mmio::{Direction, Layout};
    let direction = match register.direction {
        Direction::R => "R",
        Direction::W => "W",
        Direction::RW => "RW",
    };
    let version = match register.layout {
        Layout::Both => "1, 2",
        Layout::Legacy => "1",
        Layout::Modern => "2",
    };
    (direction, version)
}

/// Checks one row of the register table: its Direction and Version match
/// the spec table (`vmmio_spec::mmio::REGISTERS`), and the tests it names
/// prove them: together they drive every version the row lists, each drives
/// at least one of them, and they read the register (`r(mmio::NAME)`) if it
/// is readable and write it (`w(mmio::NAME, `) if it is writable.
/// `source_of(path)` gives a file's text. Returns the problems found.
fn check_register_row(
    row: &str,
    constants: &[(u64, String)],
    source_of: &dyn Fn(&str) -> Option<String>,
) -> Vec<String> {
    let c = cells(row);
    let [offset, name, _, direction, version, tests] = c[..] else {
        return vec![format!("row has {} cells, not 6: {row}", c.len())];
    };
    let mut problems = Vec::new();
    let mut bodies = Vec::new();
    for (_, span) in code_spans(tests) {
        let Some((path, test)) = test_reference(span) else {
            continue;
        };
        match source_of(path)
            .as_deref()
            .and_then(|s| fn_text(s, test).map(str::to_owned))
        {
            Some(body) => bodies.push((
                test.to_string(),
                body.split_whitespace().collect::<String>(),
            )),
            None => problems.push(format!("{name}: no `fn {test}` in {path}")),
        }
    }
    let row_versions: Vec<usize> = version
        .split(',')
        .filter_map(|v| v.trim().parse::<usize>().ok())
        .collect();
    if row_versions.is_empty() || row_versions.iter().any(|v| !(1..=2).contains(v)) {
        problems.push(format!(
            "{name}: Version `{version}` is not `1`, `2` or `1, 2`"
        ));
    }
    for &v in &row_versions {
        if !bodies.iter().any(|(_, b)| versions_driven(b)[v - 1]) {
            problems.push(format!(
                "{name}: Version lists {v} but no named test drives a Version {v} window"
            ));
        }
    }
    for (test, body) in &bodies {
        let driven = versions_driven(body);
        if !row_versions.iter().any(|&v| driven[v - 1]) {
            problems.push(format!(
                "{name}: `{test}` drives none of the row's versions ({version})"
            ));
        }
    }
    let Some(hex) = offset.strip_prefix("0x") else {
        return problems; // a row about many registers: versions only
    };
    let Ok(offset) = u64::from_str_radix(hex, 16) else {
        return problems; // 0x100+ (Config): versions only
    };
    match vmmio_spec::mmio::REGISTERS
        .iter()
        .find(|r| r.offset == offset)
    {
        Some(register) => {
            let (want_dir, want_ver) = spec_columns(register);
            if direction != want_dir {
                problems.push(format!(
                    "{name}: Direction `{direction}`, the spec table says `{want_dir}`"
                ));
            }
            if version != want_ver {
                problems.push(format!(
                    "{name}: Version `{version}`, the spec table says `{want_ver}`"
                ));
            }
        }
        None => problems.push(format!(
            "{name}: no register at {offset:#x} in the spec table"
        )),
    }
    let names: Vec<&str> = constants
        .iter()
        .filter(|(o, _)| *o == offset)
        .map(|(_, n)| n.as_str())
        .collect();
    let uses = |pattern: &dyn Fn(&str) -> String| {
        bodies
            .iter()
            .any(|(_, b)| names.iter().any(|n| b.contains(&pattern(n))))
    };
    if direction.contains('R') && !uses(&|n| format!("r(mmio::{n})")) {
        problems.push(format!(
            "{name}: Direction `{direction}` but no named test reads it (`r(mmio::NAME)`)"
        ));
    }
    if direction.contains('W') && !uses(&|n| format!("w(mmio::{n},")) {
        problems.push(format!(
            "{name}: Direction `{direction}` but no named test writes it (`w(mmio::NAME, `)"
        ));
    }
    problems
}

fn read_source(path: &str) -> Option<String> {
    fs::read_to_string(workspace_root().join(path)).ok()
}

#[test]
fn conformance_register_rows_agree_with_the_spec_table_and_their_tests() {
    let doc = conformance_doc();
    let constants = register_constants();
    let problems: Vec<String> = table_rows(section(&doc, "registers"))
        .into_iter()
        .flat_map(|row| check_register_row(row, &constants, &read_source))
        .collect();
    assert!(
        problems.is_empty(),
        "docs/conformance.md:\n{}",
        problems.join("\n")
    );
}

#[test]
fn register_row_checker_fails_on_a_wrong_direction_or_version() {
    let constants = register_constants();
    let source = "fn only_modern() { let mut h = modern(); h.r(mmio::QUEUE_READY); }\n\
                  fn writes_it() { let mut h = modern(); h.w(mmio::QUEUE_READY, 1); h.r(mmio::QUEUE_READY); }\n\
                  fn only_legacy() { let mut h = legacy(); h.w(mmio::QUEUE_READY, 1); }\n";
    let source_of = |_: &str| Some(source.to_string());
    let row = |dir: &str, ver: &str, tests: &[&str]| {
        let tests: Vec<String> = tests.iter().map(|t| format!("`x.rs::{t}`")).collect();
        format!(
            "| 0x044 | `QueueReady` |  | {dir} | {ver} | {} |",
            tests.join(", ")
        )
    };
    let check = |r: String| check_register_row(&r, &constants, &source_of);
    assert_eq!(check(row("RW", "2", &["writes_it"])), Vec::<String>::new());
    // Direction disagrees with the spec table, and with the test (no write).
    let p = check(row("R", "2", &["only_modern"]));
    assert!(
        p.iter().any(|p| p.contains("the spec table says `RW`")),
        "{p:?}"
    );
    let p = check(row("RW", "2", &["only_modern"]));
    assert!(
        p.iter().any(|p| p.contains("no named test writes it")),
        "{p:?}"
    );
    // Version disagrees with the spec table, and with the tests.
    let p = check(row("RW", "1, 2", &["writes_it"]));
    assert!(
        p.iter().any(|p| p.contains("the spec table says `2`")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|p| p.contains("no named test drives a Version 1")),
        "{p:?}"
    );
    let p = check(row("RW", "2", &["writes_it", "only_legacy"]));
    assert!(
        p.iter().any(|p| p.contains("`only_legacy` drives none")),
        "{p:?}"
    );
    // A missing test is reported.
    let p = check(row("RW", "2", &["writes_it", "gone"]));
    assert!(p.iter().any(|p| p.contains("no `fn gone`")), "{p:?}");
}
