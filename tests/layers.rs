//! The layering rules, checked on the source: no import cycle between the
//! top-level modules of `src/`, and `backends` (the bottom layer) uses
//! nothing of the gateway above it — no actors, sessions, wire types,
//! services or config file, and no actix.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// `text` without `//` comments (doc links are not imports).
fn code_only(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            // Not inside a string literal like "http://...".
            Some(at) if line[..at].matches('"').count() % 2 == 0 => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// The first segment of each path that `rest` starts: one name, or each
/// member of a `{a, b::c}` group.
fn first_segments(rest: &str, out: &mut BTreeSet<String>) {
    let Some(group) = rest.strip_prefix('{') else {
        out.insert(ident(rest));
        return;
    };
    let mut depth = 1;
    let mut start = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => start = true,
            c if c.is_whitespace() => {}
            _ if start && depth == 1 => {
                out.insert(ident(&group[i..]));
                start = false;
            }
            _ => {}
        }
    }
}

/// The top-level modules a file at module depth `depth` (1 for `src/x.rs`
/// and `src/x/mod.rs`, 2 for `src/x/y.rs`, ...) names: after `crate::`,
/// and after as many `super::` as lead back to the crate root.
fn crate_paths(text: &str, depth: usize) -> BTreeSet<String> {
    let code = code_only(text);
    let mut out = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        if !code[..at].ends_with('$') {
            first_segments(&code[at + "crate::".len()..], &mut out);
        }
    }
    for (at, _) in code.match_indices("super::") {
        // Only where a run of `super::` begins.
        if code[..at].ends_with("::")
            || code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_')
        {
            continue;
        }
        let mut rest = &code[at..];
        let mut ups = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            rest = r;
            ups += 1;
        }
        if ups == depth {
            first_segments(rest, &mut out);
        }
    }
    out
}

/// Top-level module → the other top-level modules it refers to.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let depth = |path: &Path| {
        let inner = path.strip_prefix(&src).unwrap().components().count();
        if path.ends_with("mod.rs") {
            inner - 1
        } else {
            inner
        }
    };
    // The wire contract is its own crate, re-exported as `crate::proto`.
    let mut files: BTreeMap<String, Vec<PathBuf>> = BTreeMap::from([("proto".into(), Vec::new())]);
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if name == "lib" || name == "main" {
            continue;
        }
        let owned = if path.is_dir() {
            rust_files(&path)
        } else {
            vec![path]
        };
        files.insert(name, owned);
    }
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    files
        .iter()
        .map(|(name, paths)| {
            let used = paths
                .iter()
                .flat_map(|p| crate_paths(&std::fs::read_to_string(p).unwrap(), depth(p)))
                .filter(|m| modules.contains(m) && m != name)
                .collect();
            (name.clone(), used)
        })
        .collect()
}

/// A cycle through `from`, if there is one: the modules along it.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    fn walk(
        graph: &BTreeMap<String, BTreeSet<String>>,
        target: &str,
        at: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in &graph[at] {
            if next == target {
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, target, next, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![from.to_string()];
    walk(graph, from, from, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn the_parser_sees_plain_grouped_and_relative_paths_not_comments() {
    let text = "use crate::{a::X, b, c::{d, e}};\n\
                let x = crate::f::g(); // crate::h\n\
                /// [`crate::i`]\n\
                use super::super::j::K;\n\
                use super::own;\n\
                let u = \"http://x\"; crate::k();";
    let got: Vec<String> = crate_paths(text, 2).into_iter().collect();
    assert_eq!(got, ["a", "b", "c", "f", "j", "k"]);
    let got: Vec<String> = crate_paths("use super::own;", 1).into_iter().collect();
    assert_eq!(got, ["own"]);
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let graph = module_graph();
    assert!(graph.len() > 10, "{graph:?}");
    // The graph is real: the layers above do use the ones below.
    assert!(graph["server"].contains("services"), "{graph:?}");
    assert!(graph["actors"].contains("session"), "{graph:?}");
    for module in graph.keys() {
        if let Some(cycle) = cycle_from(&graph, module) {
            panic!(
                "import cycle: {} -> {module}\n{graph:#?}",
                cycle.join(" -> ")
            );
        }
    }
}

#[test]
fn backends_use_nothing_of_the_gateway_above_them() {
    let graph = module_graph();
    let allowed: BTreeSet<String> = ["clock", "error"].map(String::from).into();
    let extra: Vec<_> = graph["backends"].difference(&allowed).collect();
    assert!(extra.is_empty(), "backends use {extra:?}");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/backends");
    for file in rust_files(&src) {
        let text = std::fs::read_to_string(&file).unwrap();
        // Protobuf's well-known types (`prost_types`: Value, Timestamp) are
        // plain data and allowed; Prism's own wire types are not.
        for word in ["actix", "prism_proto", "crate::proto", "tonic::"] {
            assert!(!text.contains(word), "{} uses `{word}`", file.display());
        }
    }
}
