//! The agent's modules import each other in one direction only (the rule written in
//! `src/lib.rs`): this test reads every `agent/src/**/*.rs`, collects its `crate::x`
//! references (in `use` lines and in paths), builds the graph of top-level modules, and
//! fails on any edge the rule does not allow and on any circle.
//!
//! Test code (`#[cfg(test)] mod tests`, `tests.rs` files) may use any module and is not
//! read. Comments are not read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules that belong to another's layer (they live beside it for their size).
const GROUPS: [(&str, &str); 2] = [("profile", "sources"), ("command_auth", "commands")];

/// The bottom: small modules every stage may use; they import only each other.
const BOTTOM: [&str; 11] = [
    "values",
    "log_ring",
    "journal",
    "clock",
    "feed",
    "feed_view",
    "secrets",
    "backoff",
    "shutdown",
    "rate_limit",
    "service",
];

/// What each module above the bottom may import (besides the bottom and itself).
fn allowed(module: &str) -> Option<&'static [&'static str]> {
    Some(match module {
        "sources" => &[],
        "queue" => &[],
        "pipeline" => &["sources", "queue"],
        "uplink" => &["queue"],
        "commands" => &["pipeline", "sources", "queue", "uplink"],
        "health" => &["sources", "pipeline", "queue", "uplink", "commands"],
        "config" => &[
            "sources", "pipeline", "queue", "uplink", "commands", "health",
        ],
        "app" | "cli" => &[
            "sources", "pipeline", "queue", "uplink", "commands", "health", "config",
        ],
        "main" => &[
            "sources", "pipeline", "queue", "uplink", "commands", "health", "config", "app", "cli",
        ],
        _ => return None,
    })
}

/// Edges that break the rule and are being removed: none is left (the last, the pipeline
/// filling `commands::ChannelDirectory`, went when the pipeline came to own the directory).
/// None may be added.
const KNOWN_BEING_REMOVED: [(&str, &str); 0] = [];

fn layer(module: &str) -> &str {
    GROUPS
        .iter()
        .find(|(m, _)| *m == module)
        .map_or(module, |(_, g)| g)
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`pipeline/window.rs` -> `pipeline`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel
        .components()
        .next()
        .expect("a component")
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.trim_end_matches(".rs").to_owned()
}

/// The code of a file without comments and without its test module.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]" {
            let next = lines.peek().map(|l| l.trim()).unwrap_or("");
            if next.starts_with("mod ") || next.starts_with("pub mod ") {
                break;
            }
        }
        let line = match line.find("//") {
            // "mqtt://" in a string is not a comment; anything else after // is.
            Some(i) if !line[..i].ends_with(':') => &line[..i],
            _ => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The top-level modules `code` refers to as `crate::x` (also inside `use crate::{..}`).
fn references(code: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // e.g. `$crate::` or `some_crate::`
        }
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            for part in inner.split(',') {
                let name = ident(part.trim());
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// The graph of layers: importer -> imported, with one file that shows each edge.
fn graph(src: &Path) -> BTreeMap<(String, String), String> {
    let mut files = Vec::new();
    sources(src, &mut files);
    let mut edges = BTreeMap::new();
    for file in files {
        if file
            .file_name()
            .is_some_and(|n| n == "tests.rs" || n == "lib.rs")
        {
            continue;
        }
        let from = layer(&module_of(src, &file)).to_owned();
        let text = std::fs::read_to_string(&file).expect("read");
        for to in references(&code(&text)) {
            let to = layer(&to).to_owned();
            if to != from {
                let shown = file
                    .strip_prefix(src)
                    .expect("under src")
                    .display()
                    .to_string();
                edges.entry((from.clone(), to)).or_insert(shown);
            }
        }
    }
    edges
}

/// Every edge against the rule, and every circle, as readable lines.
fn violations(edges: &BTreeMap<(String, String), String>) -> Vec<String> {
    let mut out = Vec::new();
    for ((from, to), file) in edges {
        if KNOWN_BEING_REMOVED.contains(&(from.as_str(), to.as_str())) {
            continue;
        }
        let ok = if BOTTOM.contains(&from.as_str()) {
            BOTTOM.contains(&to.as_str())
        } else {
            match allowed(from) {
                Some(list) => BOTTOM.contains(&to.as_str()) || list.contains(&to.as_str()),
                None => false,
            }
        };
        if !ok {
            out.push(format!(
                "{from} imports {to} ({file}): not allowed by the rule in lib.rs"
            ));
        }
    }
    // Circles, over every edge but the known back-edges (a back-edge closes a circle with
    // the edges it runs against; that circle is the known problem).
    let live: Vec<&(String, String)> = edges
        .keys()
        .filter(|(a, b)| !KNOWN_BEING_REMOVED.contains(&(a.as_str(), b.as_str())))
        .collect();
    let nodes: BTreeSet<&str> = live
        .iter()
        .flat_map(|(a, b)| [a.as_str(), b.as_str()])
        .collect();
    let next = |n: &str| -> Vec<&str> {
        live.iter()
            .filter(|(a, _)| a == n)
            .map(|(_, b)| b.as_str())
            .collect()
    };
    for start in &nodes {
        // Depth-first from `start`, looking for a way back to it.
        let mut stack = vec![(*start, vec![*start])];
        let mut seen = BTreeSet::new();
        while let Some((n, path)) = stack.pop() {
            for m in next(n) {
                if m == *start {
                    let mut circle = path.clone();
                    circle.push(m);
                    // Report each circle once, from its smallest module.
                    if path.iter().all(|p| p >= start) {
                        out.push(format!("import circle: {}", circle.join(" -> ")));
                    }
                } else if seen.insert(m) {
                    let mut longer = path.clone();
                    longer.push(m);
                    stack.push((m, longer));
                }
            }
        }
    }
    out
}

#[test]
fn the_agent_imports_in_one_direction_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = graph(&src);
    assert!(
        edges.len() > 20,
        "the scan found almost no imports ({edges:?}): is it reading the sources?"
    );
    let bad = violations(&edges);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    for (from, to) in KNOWN_BEING_REMOVED {
        if !edges.contains_key(&(from.to_owned(), to.to_owned())) {
            println!("{from} -> {to} is gone: remove it from KNOWN_BEING_REMOVED");
        }
    }
}

#[test]
fn nothing_imports_config_but_the_top() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let importers: Vec<String> = graph(&src)
        .into_iter()
        .filter(|((_, to), _)| to == "config")
        .map(|((from, _), file)| format!("{from} ({file})"))
        .filter(|f| {
            !["app", "cli", "main"]
                .iter()
                .any(|t| f.starts_with(&format!("{t} ")))
        })
        .collect();
    assert!(importers.is_empty(), "config imported by {importers:?}");
}

#[test]
fn the_checker_catches_a_back_edge_and_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut edges = graph(&src);
    edges.insert(
        ("sources".into(), "config".into()),
        "sources/serial_node.rs".into(),
    );
    let bad = violations(&edges);
    assert!(
        bad.iter().any(|b| b.starts_with("sources imports config")),
        "{bad:?}"
    );
    assert!(
        bad.iter()
            .any(|b| b.starts_with("import circle: config -> sources -> config")),
        "{bad:?}"
    );
    // A bottom module importing a stage is refused too.
    let mut edges = graph(&src);
    edges.insert(("feed".into(), "queue".into()), "feed.rs".into());
    assert!(violations(&edges)
        .iter()
        .any(|b| b.starts_with("feed imports queue")));
}

#[test]
fn references_are_read_from_code_only() {
    let text = "use crate::feed::Message;\nuse crate::{queue::Queue, values};\n// crate::config in a comment\nlet url = \"mqtt://x\"; crate::uplink::go();\n#[cfg(test)]\nmod tests {\n    use crate::config::Config;\n}\n";
    let found: Vec<String> = references(&code(text)).into_iter().collect();
    assert_eq!(found, ["feed", "queue", "uplink", "values"]);
}
