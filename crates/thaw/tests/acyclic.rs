//! No import cycle among the modules of any crate of the workspace (CI runs this).
//!
//! Each `.rs` file under `crates/*/src` is a module (`a/mod.rs` and `a.rs` are `a`).
//! A module uses another when it names it through `crate::`, `super::` or `self::`
//! (in a `use` tree or inline), resolved to the deepest module that exists. Two graphs
//! are checked, both for cycles:
//! - the top-level modules of each crate (`spec`, `vm`, `snapshot`, …): `snapshot::take`
//!   using `vm` is an edge `snapshot → vm`;
//! - the children of each directory module among themselves (`bench::compare →
//!   bench::peer`). A child using its parent, or a parent its children, is not an edge:
//!   a directory module is one unit to the rest of the crate.
//!
//! Comments and string literals are not read. Test modules inside a file count: a
//! cycle through a test is a cycle all the same.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

/// The modules of one crate's `src`, each with the text of its file.
fn modules(src: &Path) -> BTreeMap<Module, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src).unwrap().with_extension("");
                let mut m: Module = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if matches!(m.last().map(String::as_str), Some("lib" | "main" | "mod")) {
                    m.pop();
                }
                out.insert(m, strip(&std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    out
}

/// The text without comments and with every string literal emptied.
fn strip(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                let mut prev = ' ';
                for c in chars.by_ref() {
                    if prev == '*' && c == '/' {
                        break;
                    }
                    prev = c;
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    match (escaped, c) {
                        (false, '\\') => escaped = true,
                        (false, '"') => break,
                        _ => escaped = false,
                    }
                }
                out.push_str("\"\"");
            }
            // A char literal: '"' must not open a string. Lifetimes ('a) pass through.
            '\'' => {
                let rest: String = chars.clone().take(3).collect();
                let lit = if rest.starts_with('\\') {
                    rest.find('\'').map(|_| {
                        // '\n', '\'', '\\', '\u{..}': skip to the closing quote.
                        let mut n = 0;
                        let mut prev = '\\';
                        for c in chars.clone().skip(1) {
                            n += 1;
                            if c == '\'' && prev != '\\' {
                                break;
                            }
                            prev = c;
                        }
                        n + 1
                    })
                } else if rest.chars().nth(1) == Some('\'') {
                    Some(2)
                } else {
                    None
                };
                match lit {
                    Some(n) => {
                        for _ in 0..n {
                            chars.next();
                        }
                        out.push_str("' '");
                    }
                    None => out.push(c),
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Every path a text names through `crate::`, `super::` or `self::`, `use` trees
/// expanded (`use crate::{a, b::{c, d}}` names `crate::a`, `crate::b::c`, …).
fn paths(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = find_word(rest, "use") {
        let after = &rest[i + 3..];
        let Some(end) = after.find(';') else { break };
        expand(after[..end].trim(), &mut Vec::new(), &mut out);
        rest = &after[end..];
    }
    let bytes = text.as_bytes();
    for root in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = text[from..].find(root) {
            let at = from + i;
            from = at + root.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            let end = text[at..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(text.len(), |n| at + n);
            out.push(
                text[at..end]
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            );
        }
    }
    out
}

fn find_word(text: &str, word: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(i) = text[from..].find(word) {
        let at = from + i;
        let before = at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        let after = bytes
            .get(at + word.len())
            .is_some_and(|b| b.is_ascii_whitespace());
        if before && after {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// Expands one `use` tree (without `use` and `;`) under `prefix`.
fn expand(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut depth = 0;
    let mut start = 0;
    let mut parts = Vec::new();
    for (i, c) in tree.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&tree[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&tree[start..]);
    for part in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
        let n = prefix.len();
        if let Some(open) = part.find('{') {
            let close = part.rfind('}').unwrap_or(part.len());
            prefix.extend(segments(&part[..open]));
            expand(&part[open + 1..close], prefix, out);
        } else {
            let mut p = prefix.clone();
            p.extend(segments(part.split(" as ").next().unwrap_or(part)));
            out.push(p);
        }
        prefix.truncate(n);
    }
}

fn segments(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The edges of both graphs (see the module's doc) of one crate.
fn edges(mods: &BTreeMap<Module, String>) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (m, text) in mods {
        for p in paths(text) {
            let (mut full, rest): (Module, &[String]) = match p.first().map(String::as_str) {
                Some("crate") => (Vec::new(), &p[1..]),
                Some("self") => (m.clone(), &p[1..]),
                Some("super") => {
                    let mut base = m.clone();
                    let ups = p.iter().take_while(|s| *s == "super").count();
                    for _ in 0..ups {
                        base.pop();
                    }
                    (base, &p[ups..])
                }
                _ => continue,
            };
            full.extend(rest.iter().cloned());
            let Some(target) = (0..=full.len())
                .rev()
                .map(|k| full[..k].to_vec())
                .find(|t| mods.contains_key(t))
            else {
                continue;
            };
            let common = m.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common < m.len() && common < target.len() {
                edges
                    .entry(m[..=common].to_vec())
                    .or_default()
                    .insert(target[..=common].to_vec());
            }
        }
    }
    edges
}

/// The cycles of a graph: its strongly connected components of more than one module.
fn cycles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    // Kosaraju: finish order on the graph, then components on the reversed graph.
    let nodes: BTreeSet<&Module> = edges
        .iter()
        .flat_map(|(a, bs)| std::iter::once(a).chain(bs))
        .collect();
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for &n in &nodes {
        let mut stack = vec![(n, false)];
        while let Some((v, done)) = stack.pop() {
            if done {
                order.push(v);
                continue;
            }
            if !seen.insert(v) {
                continue;
            }
            stack.push((v, true));
            for w in edges.get(v).into_iter().flatten() {
                if !seen.contains(w) {
                    stack.push((w, false));
                }
            }
        }
    }
    let mut reversed: BTreeMap<&Module, Vec<&Module>> = BTreeMap::new();
    for (a, bs) in edges {
        for b in bs {
            reversed.entry(b).or_default().push(a);
        }
    }
    let mut assigned = BTreeSet::new();
    let mut out = Vec::new();
    for &n in order.iter().rev() {
        if assigned.contains(n) {
            continue;
        }
        let mut comp = Vec::new();
        let mut stack = vec![n];
        assigned.insert(n);
        while let Some(v) = stack.pop() {
            comp.push(v.clone());
            for &w in reversed.get(v).into_iter().flatten() {
                if assigned.insert(w) {
                    stack.push(w);
                }
            }
        }
        if comp.len() > 1 {
            comp.sort();
            out.push(comp);
        }
    }
    out.sort();
    out
}

fn describe(
    crate_name: &str,
    cycle: &[Module],
    edges: &BTreeMap<Module, BTreeSet<Module>>,
) -> String {
    let name = |m: &Module| m.join("::");
    let mut s = format!(
        "{crate_name}: {}",
        cycle.iter().map(name).collect::<Vec<_>>().join(", ")
    );
    for a in cycle {
        for b in edges
            .get(a)
            .into_iter()
            .flatten()
            .filter(|b| cycle.contains(b))
        {
            s.push_str(&format!("\n    {} -> {}", name(a), name(b)));
        }
    }
    s
}

fn workspace_crates() -> Vec<(String, PathBuf)> {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out: Vec<_> = std::fs::read_dir(&crates)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("src").is_dir())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                p.join("src"),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn no_crate_of_the_workspace_has_an_import_cycle() {
    let crates = workspace_crates();
    assert!(
        crates.iter().any(|(n, _)| n == "thaw") && crates.len() >= 4,
        "the workspace's crates were not found: {crates:?}"
    );
    let mut found = Vec::new();
    for (name, src) in &crates {
        let mods = modules(src);
        let edges = edges(&mods);
        for c in cycles(&edges) {
            found.push(describe(name, &c, &edges));
        }
    }
    assert!(
        found.is_empty(),
        "import cycles (break each by moving what both sides need into a module of its own):\n{}",
        found.join("\n")
    );
}

/// The checker finds what it is for: a cycle through `use` trees, inline paths and
/// `super::`, between siblings and between top-level modules; and not a child's use of
/// its parent, nor names in comments and strings.
#[test]
fn the_checker_finds_cycles_and_only_cycles() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    let write = |rel: &str, text: &str| {
        let p = src.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write("lib.rs", "mod a; mod b; mod c; mod d;\n");
    write("a.rs", "use crate::{x, b::{self, Thing as T}};\n");
    write("b.rs", "fn f() { crate::c::go() }\n");
    write(
        "c.rs",
        "// crate::d::nothing\nconst S: &str = \"crate::d\";\nuse super::a::Y;\n",
    );
    write(
        "d/mod.rs",
        "mod p; mod q; use self::p::P; fn g() { let _ = '\"'; }\n",
    );
    write(
        "d/p.rs",
        "use super::q::Q; use super::D; use crate::d::R;\n",
    );
    write(
        "d/q.rs",
        "pub struct Q; fn h() -> super::p::P { todo!() }\n",
    );
    let mods = modules(src);
    assert_eq!(mods.len(), 7, "{:?}", mods.keys().collect::<Vec<_>>());
    let edges = edges(&mods);
    let m = |s: &str| s.split("::").map(str::to_owned).collect::<Module>();
    assert_eq!(edges[&m("a")], BTreeSet::from([m("b")]));
    assert_eq!(
        edges[&m("c")],
        BTreeSet::from([m("a")]),
        "comments and strings are not read"
    );
    assert!(
        !edges.contains_key(&m("d")),
        "a parent using its child is no edge"
    );
    assert_eq!(
        edges[&m("d::p")],
        BTreeSet::from([m("d::q")]),
        "a child using its parent is no edge"
    );
    let found = cycles(&edges);
    assert_eq!(
        found,
        vec![vec![m("a"), m("b"), m("c")], vec![m("d::p"), m("d::q")],]
    );
}
