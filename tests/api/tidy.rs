//! Tidiness the compiler does not check: every Rust source file of the
//! scheduler, the executor, the wire types and these tests opens with a
//! `//!` comment saying what it holds, and the scheduler's top-level
//! modules import each other without a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The directories walked, from the workspace's root.
const SOURCES: [&str; 4] = ["scheduler/src", "executor/src", "api-spec/src", "tests"];

/// Directories never walked: installed packages and build output.
const SKIPPED: [&str; 2] = ["node_modules", "target"];

/// The `.rs` files under `dir`, at any depth.
fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if !SKIPPED.iter().any(|skipped| path.file_name().is_some_and(|name| name == *skipped)) {
                rust_files(&path, found);
            }
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// Whether `source`'s first line that is not blank is a `//!` comment.
fn opens_with_a_doc_comment(source: &str) -> bool {
    source.lines().find(|line| !line.trim().is_empty()).is_some_and(|line| line.trim_start().starts_with("//!"))
}

/// The workspace's root.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace's root")
}

#[test]
fn every_rust_file_opens_with_a_doc_comment() {
    let root = root();
    let mut files = Vec::new();
    for dir in SOURCES {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 50, "the walk found only {files:?}");
    let mut offenders: Vec<String> = files
        .iter()
        .filter(|file| !opens_with_a_doc_comment(&std::fs::read_to_string(file).unwrap()))
        .map(|file| file.strip_prefix(root).unwrap_or(file).display().to_string())
        .collect();
    offenders.sort();
    assert!(offenders.is_empty(), "these files do not open with a `//!` comment:\n{}", offenders.join("\n"));
}

#[test]
fn a_doc_comment_is_the_first_line_that_is_not_blank() {
    assert!(opens_with_a_doc_comment("\n//! What this holds.\n\nuse std::fs;\n"));
    assert!(!opens_with_a_doc_comment("// A plain comment.\n//! Too late.\n"));
    assert!(!opens_with_a_doc_comment("use std::fs;\n"));
    assert!(!opens_with_a_doc_comment(""));
}

/// The scheduler's top-level modules import each other without a cycle
/// (`crate::` paths, grouped imports included), so that each can be read
/// and changed from the bottom of the graph up (`scheduler/src/lib.rs`
/// lists them in that order).
#[test]
fn the_schedulers_top_level_modules_import_each_other_without_a_cycle() {
    let src = root().join("scheduler/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 50, "the walk found only {files:?}");
    let mut imports: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str().to_string_lossy();
        let module = first.trim_end_matches(".rs").to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let used = imports.entry(module.clone()).or_default();
        for target in crate_paths(&text) {
            if target != module {
                used.insert(target);
            }
        }
    }
    if let Some(cycle) = find_cycle(&imports) {
        panic!("the scheduler's modules import each other in a cycle: {}", cycle.join(" -> "));
    }
}

/// The top-level modules named by `crate::` paths in `text`, comments left out.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let code: String = text.lines().map(without_comment).collect::<Vec<_>>().join("\n");
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // A group's top-level names: those at depth 0 before `::`, `,` or `}`.
            let mut depth = 0;
            let mut name = String::new();
            let mut fresh = true;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => fresh = true,
                    c if depth == 0 && fresh && (c.is_ascii_alphanumeric() || c == '_') => name.push(c),
                    _ if depth == 0 && fresh && !name.is_empty() => {
                        found.insert(std::mem::take(&mut name));
                        fresh = false;
                    }
                    _ => {}
                }
            }
            if !name.is_empty() {
                found.insert(name);
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found.retain(|name| name != "self" && name != "super");
    found
}

/// `line` up to its `//` comment, if any (a URL's `://` is no comment).
fn without_comment(line: &str) -> &str {
    let mut from = 0;
    while let Some(at) = line[from..].find("//").map(|at| from + at) {
        if !line[..at].ends_with(':') {
            return &line[..at];
        }
        from = at + 2;
    }
    line
}

/// A cycle in `graph`, as the modules along it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn crate_paths_and_cycles_are_read_as_the_compiler_would() {
    let text =
        "use crate::db::{self, StoreError};\nuse crate::{config::Config, domain};\n// crate::http in a comment\n\
                let x = crate::metrics::Metrics::default(); // crate::cli\nlet u = \"http://a\"; crate::demo::run();";
    let names: Vec<String> = crate_paths(text).into_iter().collect();
    assert_eq!(names, ["config", "db", "demo", "domain", "metrics"]);
    let graph = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            g.entry(a.to_string()).or_default().insert(b.to_string());
        }
        g
    };
    assert_eq!(find_cycle(&graph(&[("http", "db"), ("db", "domain")])), None);
    let cycle = find_cycle(&graph(&[("http", "db"), ("db", "config"), ("config", "http")])).unwrap();
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4);
}
