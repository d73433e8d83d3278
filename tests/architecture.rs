//! The module structure, checked against docs/architecture.md: every
//! top-level module is in the document's map, every module and item the
//! document names exists, the "depends on" column is exactly what the code
//! imports, and no two top-level modules depend on each other, directly or
//! through others.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The top-level modules (`src/x.rs` or `src/x/`) and their files.
fn modules() -> BTreeMap<String, Vec<PathBuf>> {
    let src = root().join("src");
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(&src).expect("src").flatten() {
        let path = entry.path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if path.is_dir() {
            modules.insert(stem.to_owned(), rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") && stem != "lib" && stem != "main" {
            modules.insert(stem.to_owned(), vec![path]);
        }
    }
    modules
}

/// A file's code without its unit tests (which sit at the end, after
/// `#[cfg(test)] mod tests`) and without comments.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Identifiers right after `crate::`, including each name of a
/// `crate::{a, b::c}` group.
fn crate_references(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                out.insert(ident(item.trim()));
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out
}

/// Which top-level modules each one uses.
fn dependency_graph() -> Graph {
    let modules = modules();
    let mut graph = Graph::new();
    for (name, files) in &modules {
        let mut deps = BTreeSet::new();
        for file in files {
            for used in crate_references(&code(&read(file))) {
                if used != *name && modules.contains_key(&used) {
                    deps.insert(used);
                }
            }
        }
        graph.insert(name.clone(), deps);
    }
    graph
}

/// The first cycle found, as a path that returns to its start.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
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

/// The backticked names in a table cell.
fn names_in(cell: &str) -> BTreeSet<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The module map of docs/architecture.md: module to its "depends on".
fn documented_graph(doc: &str) -> Graph {
    let map = doc
        .split("## Module map")
        .nth(1)
        .expect("docs/architecture.md has a module map")
        .split("\n## ")
        .next()
        .unwrap_or("");
    let mut graph = Graph::new();
    for line in map.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // ["", module, owns, depends on, ""]
        assert_eq!(cells.len(), 5, "a module map row has three cells: {line}");
        let module = names_in(cells[1]).into_iter().next().expect("module name");
        graph.insert(module, names_in(cells[3]));
    }
    graph
}

#[test]
fn no_two_top_level_modules_depend_on_each_other() {
    let graph = dependency_graph();
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_layers_below_config_know_nothing_of_settings() {
    let graph = dependency_graph();
    for leaf in ["metrics", "scheme", "signals"] {
        assert!(
            graph[leaf].is_empty(),
            "{leaf} must depend on nothing in maitred: {:?}",
            graph[leaf]
        );
    }
    for module in ["proxy", "access", "listen", "metrics"] {
        assert!(
            !graph[module].contains("config"),
            "{module} must not import config"
        );
    }
    // Only the process wiring hands out the plan's parts: nothing but the
    // hosts' start-up (which calls it) depends on it.
    for (module, deps) in &graph {
        assert!(
            module == "host" || !deps.contains("process"),
            "{module} imports process"
        );
    }
}

#[test]
fn the_module_map_matches_the_code() {
    let doc = read(&root().join("docs/architecture.md"));
    let documented = documented_graph(&doc);
    let actual = dependency_graph();
    let names = |g: &Graph| g.keys().cloned().collect::<BTreeSet<_>>();
    assert_eq!(
        names(&documented),
        names(&actual),
        "docs/architecture.md's module map must list exactly the top-level modules"
    );
    for (module, deps) in &actual {
        assert_eq!(
            &documented[module], deps,
            "docs/architecture.md: what `{module}` depends on"
        );
    }
}

/// The source file of a module path such as `gateway::service`.
fn module_file(path: &[&str]) -> Option<PathBuf> {
    let mut base = root().join("src");
    for part in &path[..path.len() - 1] {
        base = base.join(part);
    }
    let last = path[path.len() - 1];
    [
        base.join(format!("{last}.rs")),
        base.join(last).join("mod.rs"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

#[test]
fn every_module_and_item_the_document_names_exists() {
    let doc = read(&root().join("docs/architecture.md"));
    let mut checked = 0;
    for name in doc.split('`').skip(1).step_by(2) {
        if name.contains('/') && !name.contains(' ') {
            // A path in the repository.
            let path = name.trim_end_matches('/');
            if [
                "src/",
                "tests/",
                "docs/",
                "scripts/",
                "config/",
                "dashboards/",
                "deploy/",
            ]
            .iter()
            .any(|p| path.starts_with(p))
            {
                assert!(root().join(path).exists(), "{name} does not exist");
                checked += 1;
            }
            continue;
        }
        let parts: Vec<&str> = name.split("::").collect();
        // Paths from a module down (`gateway::service`), not a type's own
        // items (`GatewayReason::of_parse_error`).
        if parts.len() < 2
            || parts.iter().any(|p| p.is_empty())
            || !parts[0].starts_with(|c: char| c.is_ascii_lowercase())
        {
            continue;
        }
        if !parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            continue;
        }
        // The longest prefix that is a module; what follows is an item of
        // it (a type, function or constant), then possibly a method.
        let split = (1..=parts.len())
            .rev()
            .find(|&n| module_file(&parts[..n]).is_some())
            .unwrap_or_else(|| panic!("`{name}`: no module `{}` in src/", parts[0]));
        checked += 1;
        let Some(item) = parts.get(split) else {
            continue;
        };
        let file = module_file(&parts[..split]).expect("found above");
        let mut text = read(&file);
        if file.ends_with("mod.rs") {
            for sibling in rust_files(file.parent().expect("dir")) {
                text.push_str(&read(&sibling));
            }
        }
        let declared = [
            "fn ", "struct ", "enum ", "trait ", "const ", "static ", "type ", "mod ",
        ]
        .iter()
        .any(|kw| text.contains(&format!("{kw}{item}")));
        assert!(
            declared,
            "`{name}`: {} declares no `{item}`",
            file.display()
        );
        if let Some(method) = parts.get(split + 1) {
            assert!(
                text.contains(&format!("fn {method}")),
                "`{name}`: no `fn {method}` in {}",
                file.display()
            );
        }
    }
    assert!(
        checked > 30,
        "only {checked} names checked: is the doc there?"
    );
}
