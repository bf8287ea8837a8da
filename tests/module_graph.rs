//! The library's imports run downward: every top-level module sits on a floor and uses only
//! modules on lower floors, and no two files use each other. Read from the sources (`crate::`
//! and `super::` paths outside `#[cfg(test)]` blocks), so that a new import that runs back up
//! fails here rather than in a reader's head.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Lowest first; a module may use those on lower floors only.
const FLOORS: &[&[&str]] = &[
    &["files", "rng", "profile"],
    &["kernels"],
    &["config", "tokenizer"],
    &["model", "data", "perf", "dist"],
    &["checkpoint", "gguf", "decode", "hub"],
    &["loader", "chat", "eval", "generate"],
    &["train", "serve"],
    &["bench", "export"],
];

fn floor(module: &str) -> usize {
    FLOORS.iter().position(|f| f.contains(&module)).unwrap_or_else(|| panic!("module `{module}` has no floor"))
}

/// The module path of a source file (`kernels/quant/dot.rs` → kernels::quant::dot).
fn module_of(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel.trim_end_matches(".rs").split('/').map(str::to_string).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// Source text without `#[cfg(test)]` items (a test may use anything).
fn without_tests(src: &str) -> String {
    let mut out = String::new();
    let mut rest = src;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        // skip to the end of the next item: its braces balanced, or a `;`
        let mut depth = 0usize;
        let mut end = after.len();
        for (i, c) in after.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Every `crate::a::b` / `super::…::a` path of a file, resolved to a module path; `super` inside
/// an inline `mod x { … }` counts from that inline module.
fn used_modules(rel: &str, src: &str) -> Vec<Vec<String>> {
    let me = module_of(rel);
    let mut used = vec![];
    let mut inline: Vec<(String, usize)> = vec![]; // (inline module, brace depth it opened at)
    let mut depth = 0usize;
    for line in src.lines() {
        let t = line.trim_start();
        if t.starts_with("//") {
            continue;
        }
        // `mod x {`, `pub mod x {`, `pub(crate) mod x {`, …
        let declared = t.split_once("mod ").filter(|(vis, _)| vis.is_empty() || vis.trim_end().starts_with("pub"));
        if let Some(name) = declared.and_then(|(_, r)| r.strip_suffix(" {")) {
            inline.push((name.trim().to_string(), depth));
        }
        let mut here = me.clone();
        here.extend(inline.iter().map(|(n, _)| n.clone()));
        for (i, _) in line.match_indices("crate::").chain(line.match_indices("super::")) {
            if i > 0 && line[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let path: Vec<&str> = line[i..]
                .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .next()
                .unwrap_or("")
                .split("::")
                .filter(|s| !s.is_empty())
                .collect();
            let mut base = if path[0] == "crate" { vec![] } else { here.clone() };
            let mut k = 0;
            if path[0] == "crate" {
                k = 1;
            } else {
                while k < path.len() && path[k] == "super" {
                    base.pop();
                    k += 1;
                }
            }
            base.extend(path[k..].iter().map(|s| s.to_string()));
            // `use a::b::{c, d::e}`: each name in the braces
            let after = &line[i..];
            let stem_len = after.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(after.len());
            if after[stem_len..].starts_with('{') {
                let inner = after[stem_len + 1..].split('}').next().unwrap_or("");
                for name in inner.split(',').map(|n| n.trim().split("::").next().unwrap_or("").trim()) {
                    if !name.is_empty() && name != "self" && name.chars().next().is_some_and(|c| c.is_lowercase()) {
                        let mut b = base.clone();
                        b.push(name.to_string());
                        used.push(b);
                    }
                }
            }
            used.push(base);
        }
        for c in line.chars() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if inline.last().is_some_and(|(_, d)| *d == depth) {
                        inline.pop();
                    }
                }
                _ => {}
            }
        }
    }
    used
}

#[test]
fn imports_run_downward_and_no_two_files_use_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files: BTreeMap<Vec<String>, String> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(&src).unwrap().to_string_lossy().replace('\\', "/");
                // the binary's command line sits above the library
                if rel == "main.rs" || rel == "lib.rs" || rel.starts_with("cli/") {
                    continue;
                }
                files.insert(module_of(&rel), rel);
            }
        }
    }
    let file_of = |path: &[String]| -> Option<Vec<String>> {
        (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|m| files.contains_key(m))
    };
    let mut edges: BTreeSet<(Vec<String>, Vec<String>)> = BTreeSet::new();
    let mut upward = vec![];
    for (module, rel) in &files {
        let text = without_tests(&std::fs::read_to_string(src.join(rel)).unwrap());
        for used in used_modules(rel, &text) {
            let Some(target) = file_of(&used) else { continue };
            if target == *module || target.is_empty() {
                continue;
            }
            let (from, to) = (&module[0], &target[0]);
            if from != to && floor(to) >= floor(from) {
                upward.push(format!("{rel} uses {} (floor {} ≥ {})", used.join("::"), floor(to), floor(from)));
            }
            edges.insert((module.clone(), target));
        }
    }
    let mutual: Vec<String> = edges
        .iter()
        .filter(|(a, b)| a < b && edges.contains(&(b.clone(), a.clone())))
        .filter(|(a, b)| !b.starts_with(a) && !a.starts_with(b)) // a module and its own children share one room
        .map(|(a, b)| format!("{} <-> {}", files[a], files[b]))
        .collect();
    assert!(upward.is_empty(), "imports that run up a floor:\n{}", upward.join("\n"));
    assert!(mutual.is_empty(), "files that use each other:\n{}", mutual.join("\n"));
}
