//! No file in `agent/src` holds more than [`LIMIT`] lines of code (issue 14: "no file over
//! ~600 lines of code"; the limit leaves a little room above that). Code is what is left
//! without blank lines, comments and test code: `#[cfg(test)]` items (inline test modules,
//! test-only helpers) and `tests.rs` files, where the tests of a module may sit beside it.
//!
//! The counter reads `cargo fmt`ed sources: an item ends at the first line that is its
//! closing brace at the item's own indentation.

use std::path::{Path, PathBuf};

/// The most lines of code a file may hold.
const LIMIT: usize = 650;

/// Every `.rs` file under `dir` except `tests.rs` files.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(path);
        }
    }
}

/// The lines of code of `text`: not blank, not a comment, not in a `#[cfg(test)]` item.
fn code_lines(text: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    let mut count = 0;
    let mut in_block_comment = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim();
        i += 1;
        if in_block_comment {
            in_block_comment = !t.contains("*/");
            continue;
        }
        if t.is_empty() || t.starts_with("//") {
            continue;
        }
        if t.starts_with("/*") {
            in_block_comment = !t.contains("*/");
            continue;
        }
        if t == "#[cfg(test)]" {
            i = skip_item(&lines, i, line.len() - line.trim_start().len());
            continue;
        }
        count += 1;
    }
    count
}

/// The index of the line after the item that starts at `lines[start]` (after its
/// attributes) at indentation `indent`.
fn skip_item(lines: &[&str], mut start: usize, indent: usize) -> usize {
    while start < lines.len() && lines[start].trim_start().starts_with("#[") {
        start += 1;
    }
    let Some(first) = lines.get(start) else {
        return start;
    };
    if first.trim_end().ends_with(';') {
        return start + 1;
    }
    let close = format!("{}}}", " ".repeat(indent));
    let mut i = start + 1;
    while i < lines.len() {
        let l = lines[i].trim_end();
        if l == close || l == format!("{close};") {
            return i + 1;
        }
        i += 1;
    }
    i
}

#[test]
fn no_file_in_agent_src_is_over_the_limit() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    assert!(files.len() > 50, "found only {} files", files.len());
    let mut sizes: Vec<(usize, String)> = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).expect("read");
            let name = f
                .strip_prefix(&src)
                .expect("under src")
                .display()
                .to_string();
            (code_lines(&text), name)
        })
        .collect();
    sizes.sort();
    sizes.reverse();
    println!("largest files (lines of code):");
    for (n, name) in sizes.iter().take(8) {
        println!("  {n:4}  {name}");
    }
    let over: Vec<String> = sizes
        .iter()
        .filter(|(n, _)| *n > LIMIT)
        .map(|(n, name)| format!("{name}: {n} lines of code (limit {LIMIT}); split it by responsibility or move its tests to a tests.rs beside it"))
        .collect();
    assert!(over.is_empty(), "{}", over.join("\n"));
}

#[test]
fn the_counter_skips_comments_blank_lines_and_test_code() {
    let text = "//! doc\n\nuse a::b;\n/// item doc\nfn f() {\n    // note\n    g();\n}\n/* block\n   comment */\n#[cfg(test)]\nfn helper() {\n    x();\n}\n#[cfg(test)]\nmod tests;\nimpl A {\n    #[cfg(test)]\n    fn only_in_tests() {\n        y();\n    }\n    fn kept() {}\n}\n#[cfg(test)]\n#[allow(unused)]\nmod tests {\n    fn t() {\n        z();\n    }\n}\n";
    // use, fn f() {, g();, }, impl A {, fn kept() {}, }
    assert_eq!(code_lines(text), 7);
}

#[test]
fn a_file_over_the_limit_is_caught() {
    let long: String = (0..=LIMIT).map(|i| format!("let x{i} = {i};\n")).collect();
    assert_eq!(code_lines(&long), LIMIT + 1);
    let tests = format!("fn a() {{}}\n#[cfg(test)]\nmod tests {{\n{long}}}\n");
    assert_eq!(
        code_lines(&tests),
        1,
        "an inline test module does not count"
    );
}
