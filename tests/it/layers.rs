//! The shape of the code, kept: every `crate::`, `super::` and `self::` path
//! in `src/` is an edge from one module (file) to another, and each edge
//! must point the way the layers go (transport -> service -> ports <-
//! adapters; the leaves import nothing of the product; only the
//! composition root reads the configuration), and no two modules may import
//! each other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Layer {
    /// Imports nothing of the product: config, telemetry, error, text.
    Leaf,
    /// Pure vocabulary and arithmetic: parsed input, the model, the rules.
    Domain,
    Ports,
    /// The service, the rooms, the token checker.
    Service,
    Adapters,
    /// HTTP and WebSocket handlers, middleware, extractors.
    Transport,
    /// `app.rs` and `main.rs`: may import anything.
    Root,
}

/// The layer of a module path (`collab::model`, `adapters::redis::fanout`).
fn layer_of(module: &str) -> Layer {
    let top = module.split("::").next().unwrap_or_default();
    match module {
        "collab::input" | "collab::model" | "collab::rules" => Layer::Domain,
        "limits::gcra" | "limits::client_ip" => Layer::Domain,
        "collab::service" | "collab::audit" | "realtime::hub" | "auth" => Layer::Service,
        "collab::http" | "realtime::ws" | "limits::http" => Layer::Transport,
        // Module declarations only: nothing to import, so the strictest.
        "collab" | "realtime" | "limits" => Layer::Leaf,
        "lib" => Layer::Root,
        _ => match top {
            "config" | "telemetry" | "error" | "text" => Layer::Leaf,
            "ports" => Layer::Ports,
            "auth" => Layer::Service,
            "adapters" => Layer::Adapters,
            "http" => Layer::Transport,
            "app" | "main" => Layer::Root,
            other => panic!("module {module} ({other}) has no layer: give it one here"),
        },
    }
}

/// Which layers a layer may import from.
fn may_import(from: Layer, to: Layer) -> bool {
    use Layer::*;
    match from {
        Leaf => false,
        Domain => matches!(to, Leaf | Domain),
        Ports => matches!(to, Leaf | Domain),
        Service => matches!(to, Leaf | Domain | Ports | Service),
        Adapters => matches!(to, Leaf | Domain | Ports | Adapters),
        Transport => matches!(to, Leaf | Domain | Ports | Service | Transport),
        Root => true,
    }
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or_default()
}

/// `src/a/b.rs` -> `a::b`; `src/a/mod.rs` -> `a`.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file without comments and without its unit tests (a
/// `#[cfg(...test...)]` module, which may reach anywhere; everything from
/// there to the end of the file is its body or more tests).
fn code_of(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let tests = lines.windows(2).position(|pair| {
        pair[0].starts_with("#[cfg(") && pair[0].contains("test") && pair[1].starts_with("mod ")
    });
    lines[..tests.unwrap_or(lines.len())]
        .iter()
        .map(|line| match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifiers of one path, `a::b::C` -> `[a, b, C]`.
fn segments_of(path: &str) -> Vec<String> {
    path.split("::")
        .map(|s| {
            s.trim()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .take_while(|s| !s.is_empty())
        .collect()
}

/// The paths of a `{a::B, c::{D, E}}` group, each from the group's root
/// (nested groups contribute their prefix, which names the module).
fn group_paths(rest: &str) -> Vec<Vec<String>> {
    let mut depth = 0;
    let mut items = Vec::new();
    let mut current = String::new();
    for c in rest.chars().skip(1) {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => items.push(std::mem::take(&mut current)),
            _ if depth == 0 => current.push(c),
            _ => {}
        }
    }
    items.push(current);
    items.iter().map(|item| segments_of(item)).collect()
}

/// The `crate::`/`super::`/`self::` paths in `code`, as segment lists.
fn paths(code: &str) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    for root in ["crate", "super", "self"] {
        let mut at = 0;
        while let Some(i) = code[at..].find(root) {
            let start = at + i;
            at = start + root.len();
            let boundary = start == 0
                || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
            if !boundary || !code[at..].starts_with("::") {
                continue;
            }
            let rest = code[at + 2..].trim_start();
            if rest.starts_with('{') {
                for segments in group_paths(rest) {
                    found.push((root.to_owned(), segments));
                }
            } else {
                found.push((root.to_owned(), segments_of(rest)));
            }
        }
    }
    found
}

/// The module a path lands in: the longest prefix that is a module.
fn resolve(
    importer: &str,
    root: &str,
    segments: &[String],
    modules: &BTreeSet<String>,
) -> Option<String> {
    let mut base: Vec<String> = match root {
        "crate" => Vec::new(),
        _ => importer.split("::").map(str::to_owned).collect(),
    };
    // In `a/b.rs`, `self` is `a::b` and `super` is `a`; in `a/mod.rs`,
    // `self` is `a` and `super` is the crate.
    if root == "super" {
        base.pop();
    }
    if importer == "lib" || importer == "main" {
        // The crate root: `self::x` is `crate::x`.
        base.clear();
    }
    let mut best = None;
    let mut path = base.clone();
    if !path.is_empty() && modules.contains(&path.join("::")) {
        best = Some(path.join("::"));
    }
    for segment in segments {
        path.push(segment.clone());
        let name = path.join("::");
        if modules.contains(&name) {
            best = Some(name);
        }
    }
    best
}

/// Every edge between modules: importer -> imported.
fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    crate::common::rust_sources(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let module = module_of(&src, file);
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        for (root, segments) in paths(&code) {
            if let Some(target) = resolve(&module, &root, &segments, &modules) {
                if target != module {
                    graph.entry(module.clone()).or_default().insert(target);
                }
            }
        }
    }
    graph
}

#[test]
fn every_import_points_the_way_the_layers_go() {
    let graph = edges();
    // The reading works: known edges are there.
    for (from, to) in [
        ("app", "ports"),
        ("realtime::ws", "realtime::hub"),
        ("ports", "collab::model"),
    ] {
        assert!(
            graph.get(from).is_some_and(|t| t.contains(to)),
            "{from} -> {to} not seen"
        );
    }
    let mut wrong = Vec::new();
    for (from, targets) in graph {
        for to in targets {
            let (lf, lt) = (layer_of(&from), layer_of(&to));
            let same_tree = top(&from) == top(&to) && lf == lt;
            if !same_tree && !may_import(lf, lt) {
                wrong.push(format!("{from} ({lf:?}) imports {to} ({lt:?})"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn only_the_composition_root_reads_the_configuration() {
    let readers: Vec<String> = edges()
        .into_iter()
        .filter(|(from, to)| to.contains("config") && layer_of(from) != Layer::Root)
        .map(|(from, _)| from)
        .collect();
    assert!(
        readers.is_empty(),
        "modules that import config: {readers:?}"
    );
}

/// A cycle in the graph, as the modules along it, if there is one.
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
    graph
        .keys()
        .find_map(|start| visit(start, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_modules_import_each_other_round_a_cycle() {
    if let Some(cycle) = find_cycle(&edges()) {
        panic!("an import cycle: {}", cycle.join(" -> "));
    }
}

/// The checker itself: a path against the layers is seen.
#[test]
fn the_checker_sees_an_import_against_the_layers() {
    let modules: BTreeSet<String> = ["adapters::redis::fanout", "realtime::hub", "realtime"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    let code = code_of("use crate::realtime::hub::RoomRegistry; // crate::app\n");
    let found: Vec<String> = paths(&code)
        .into_iter()
        .filter_map(|(root, segments)| {
            resolve("adapters::redis::fanout", &root, &segments, &modules)
        })
        .collect();
    assert_eq!(found, ["realtime::hub"]);
    assert!(!may_import(
        layer_of("adapters::redis::fanout"),
        layer_of("realtime::hub")
    ));
    assert!(may_import(
        layer_of("realtime::ws"),
        layer_of("realtime::hub")
    ));
}
