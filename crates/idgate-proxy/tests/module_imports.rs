//! The modules of this crate use one another without circles: each owns one concern, and
//! what several need lives below all of them. Read from the sources, so a new `use` that
//! closes a circle fails here with the circle named.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module → the modules of this crate it names, outside its tests and comments.
fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![src.clone()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                files.push(entry.unwrap().path());
            }
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let relative = path.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = Path::new(first)
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let uses = graph.entry(module.clone()).or_default();
        // Comments dropped and lines joined: a `use crate::{…}` group that rustfmt spreads
        // over several lines is read whole.
        let code: String = code
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for name in named_modules(&code) {
            if name != module {
                uses.insert(name);
            }
        }
    }
    graph
}

/// The modules a text names through `crate::name` or `crate::{a, b::{c, d}}`.
fn named_modules(text: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        let Some(group) = rest.strip_prefix('{') else {
            out.push(ident(rest));
            continue;
        };
        // Each item at the group's own depth starts with a module's name.
        let mut depth = 0usize;
        let mut start = 0;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    out.push(ident(&group[start..i]));
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.push(ident(&group[start..i]));
                    start = i + 1;
                }
                _ => {}
            }
        }
    }
    out.retain(|name| !name.is_empty() && name != "self");
    out
}

/// A circle through `from`, as the modules along it.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        graph: &BTreeMap<String, BTreeSet<String>>,
        module: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|m| m == module) {
            let mut found = path[at..].to_vec();
            found.push(module.to_owned());
            return Some(found);
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.to_owned());
        for next in graph.get(module).into_iter().flatten() {
            if let Some(found) = visit(graph, next, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(module.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|m| visit(graph, m, &mut Vec::new(), &mut done))
}

#[test]
fn the_modules_import_one_another_without_circles() {
    let graph = import_graph();
    assert!(graph.contains_key("pipeline") && graph.contains_key("problem"));
    if let Some(found) = circle(&graph) {
        let picture: Vec<String> = graph
            .iter()
            .map(|(m, uses)| format!("{m} -> {}", Vec::from_iter(uses.iter().cloned()).join(",")))
            .collect();
        panic!(
            "import circle: {}\n{}",
            found.join(" -> "),
            picture.join("\n")
        );
    }
}

#[test]
fn a_circle_is_found_when_there_is_one() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, uses) in [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")] {
        graph.entry(m.into()).or_default().insert(uses.into());
    }
    let found = circle(&graph).unwrap();
    assert_eq!(found.first(), found.last());
    assert_eq!(found.len(), 4);
    graph.get_mut("c").unwrap().clear();
    assert_eq!(circle(&graph), None);
    assert_eq!(
        named_modules("use crate::{conn::ConnInfo, problem}; crate::path::x"),
        ["conn", "problem", "path"]
    );
    // As rustfmt writes a long group, nested groups included.
    assert_eq!(
        named_modules(
            "use crate::{\n    access_log::{AccessLog, Decision},\n    ctx::RequestCtx,\n    routes,\n};"
        ),
        ["access_log", "ctx", "routes"]
    );
}
