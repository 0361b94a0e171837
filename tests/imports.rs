//! The crate's imports run one way: this test reads every `crate::…` and `super::…` path in
//! `src/` and fails on a cycle between modules.
//!
//! A node is a top-level module (`event`, `types`, `sys`, …), or one component under
//! `services/` (`services::event_bus`, `services::process`, …): the files inside one node may
//! use each other, nodes may not use each other in a circle. The crate root (`lib.rs`) only
//! re-exports and is no node. Paths in comments and doc links are not imports and are skipped.
//!
//! Also run on its own by `.ci/run` (`cargo test --test imports`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Every `.rs` file below `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file below `src/`: `src/services/process/mod.rs` → `services::process`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("file below src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_owned());
    }
    parts
}

/// The node a module path belongs to, or `None` for the crate root and `bin` targets.
fn node_of(path: &[String]) -> Option<String> {
    match path {
        [] => None,
        [first, ..] if first == "bin" => None,
        [services, component, ..] if services == "services" => {
            Some(format!("services::{component}"))
        }
        [first, ..] => Some(first.clone()),
    }
}

/// `text` with comments, string literals and char literals blanked out, so that only code
/// is searched for paths.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'r' && (b[i..].starts_with(b"r\"") || b[i..].starts_with(b"r#")) {
            // Raw string: r"…" or r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while j < b.len() && b[j] == b'#' {
                hashes += 1;
                j += 1;
            }
            if j < b.len() && b[j] == b'"' {
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                j += 1;
                while j < b.len() && !b[j..].starts_with(&close) {
                    j += 1;
                }
                i = (j + close.len()).min(b.len());
                out.push_str("\"\"");
            } else {
                out.push(b[i] as char);
                i += 1;
            }
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('a', '\n', '\''); lifetimes ('a) are left alone.
            i += 1;
            if b[i] == b'\\' {
                i += 1;
            }
            while i < b.len() && b[i] != b'\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else {
            let ch = text[i..].chars().next().expect("a char");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Reads the path tree starting at `s` (just after a `crate::` or `super::`), appending every
/// full path it names (`a::{b, c::d}` → `a::b`, `a::c::d`) to `out`.
fn read_tree(s: &str, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let s_trim = s.trim_start();
    let mut used = s.len() - s_trim.len();
    if let Some(rest) = s_trim.strip_prefix('{') {
        used += 1;
        let mut rest = rest;
        loop {
            let t = rest.trim_start();
            used += rest.len() - t.len();
            rest = t;
            if let Some(r) = rest.strip_prefix('}') {
                return used + 1 + (rest.len() - 1 - r.len());
            }
            if let Some(r) = rest.strip_prefix(',') {
                used += 1;
                rest = r;
                continue;
            }
            if rest.is_empty() {
                return used;
            }
            let n = read_tree(rest, prefix, out);
            if n == 0 {
                // Not a path (e.g. `*` or `self`): skip one character.
                let ch = rest.chars().next().expect("a char");
                used += ch.len_utf8();
                rest = &rest[ch.len_utf8()..];
            } else {
                used += n;
                rest = &rest[n..];
            }
        }
    }
    let ident_len = s_trim.find(|c: char| !is_ident(c)).unwrap_or(s_trim.len());
    if ident_len == 0 {
        return 0;
    }
    let ident = &s_trim[..ident_len];
    let mut path = prefix.to_vec();
    if ident != "self" {
        path.push(ident.to_owned());
    }
    used += ident_len;
    let after = &s_trim[ident_len..];
    if let Some(rest) = after.strip_prefix("::") {
        let n = read_tree(rest, &path, out);
        if n > 0 {
            return used + 2 + n;
        }
    }
    out.push(path);
    used
}

/// Every path `code` names through `crate::` or `super::`, resolved to absolute module
/// paths from the module `here`.
fn paths_in(code: &str, here: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices("::") {
        let before = &code[..at];
        let start = before
            .rfind(|c: char| !is_ident(c) && c != ':')
            .map_or(0, |p| p + 1);
        let head = &code[start..at];
        let base: Vec<String> = if head == "crate" {
            Vec::new()
        } else if head == "super" || head.starts_with("super::") {
            // `super` is the parent module, for a `mod.rs` file as for any other.
            let rest = &code[at + 2..];
            if rest.starts_with("super::") {
                continue; // the last `super::` of the run resolves it
            }
            let ups = head.split("::").filter(|p| *p == "super").count();
            let keep = here.len().saturating_sub(ups);
            here[..keep].to_vec()
        } else {
            continue;
        };
        if head.contains("::") && !head.split("::").all(|p| p == "super") {
            continue;
        }
        read_tree(&code[at + 2..], &base, &mut out);
    }
    out
}

#[test]
fn no_import_cycle_between_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_path(&src, f)).collect();
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for file in &files {
        let here = module_path(&src, file);
        let Some(from) = node_of(&here) else { continue };
        let text = fs::read_to_string(file).expect("readable source");
        for path in paths_in(&code_only(&text), &here) {
            // The longest prefix of the path that is a module names the node it uses.
            let target = (0..=path.len())
                .rev()
                .map(|n| &path[..n])
                .find(|p| modules.contains(*p))
                .and_then(node_of);
            if let Some(to) = target
                && to != from
            {
                edges
                    .entry(from.clone())
                    .or_default()
                    .entry(to)
                    .or_insert_with(|| {
                        format!(
                            "{} uses crate::{}",
                            file.strip_prefix(&src).unwrap().display(),
                            path.join("::")
                        )
                    });
            }
        }
    }
    // Depth-first search for a cycle.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeMap<String, String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flat_map(|m| m.keys()) {
            match state.get(next.as_str()) {
                Some(1) => {
                    let from = stack.iter().position(|n| n == next).expect("on stack");
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(next, edges, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    let nodes: Vec<String> = edges.keys().cloned().collect();
    for node in nodes {
        if state.contains_key(&node) {
            continue;
        }
        if let Some(cycle) = visit(&node, &edges, &mut state, &mut Vec::new()) {
            let why: Vec<String> = cycle
                .windows(2)
                .map(|w| format!("  {} -> {}: {}", w[0], w[1], edges[&w[0]][&w[1]]))
                .collect();
            panic!("import cycle {}:\n{}", cycle.join(" -> "), why.join("\n"));
        }
    }
    // Nothing imports the composition root, except the fakes' own composition
    // (`testing::FakeModule` builds a `ProcessModule` of fakes): `testing` sits above it.
    for (from, to) in &edges {
        if from == "testing" {
            continue;
        }
        if let Some(why) = to.get("module") {
            panic!("{from} imports the composition root `module`: {why}");
        }
    }
}

#[test]
fn the_parser_reads_grouped_and_relative_paths() {
    let here = vec![
        "services".to_owned(),
        "process".to_owned(),
        "tokio".to_owned(),
    ];
    let code = code_only(
        "use crate::{event::{Line, ProcessEvent}, sys};\n\
         // use crate::module::ProcessModule;\n\
         let s = \"crate::testing::x\";\n\
         use super::options::RunOptions;\n\
         use super::super::event_bus::EventBus;\n\
         fn f() { crate::sync::lock(&m); }\n",
    );
    let mut got = paths_in(&code, &here);
    got.sort();
    let want: Vec<Vec<String>> = [
        "event::Line",
        "event::ProcessEvent",
        "services::event_bus::EventBus",
        "services::process::options::RunOptions",
        "sync::lock",
        "sys",
    ]
    .iter()
    .map(|p| p.split("::").map(str::to_owned).collect())
    .collect();
    assert_eq!(got, want);
}
