//! Exit codes come from one table (`common::Exit`, refined by `common::Kind`), and each
//! tool documents the codes it uses in its `src/doc.rs` MANUAL, from which `--help` and
//! the man page are made. This checks the two ends the MANUAL cannot see by itself:
//! every kind or code a tool's own code constructs is in its MANUAL, and the exit-code
//! paragraph of the tool's README names exactly the MANUAL's codes.
//!
//! Errors that come from an I/O error (`Error::io`, `?` on `io::Result`) take their
//! kind from the OS at run time and are not seen here; the constructors are.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use common::{doc::Manual, Exit, Kind};

struct Tool {
    name: &'static str,
    manual: &'static Manual,
    /// Its README has an exit-code paragraph (ve-alloc's is the top-level README's).
    readme: bool,
}

const TOOLS: [Tool; 4] = [
    Tool {
        name: "ve-alloc",
        manual: &ve_alloc::doc::MANUAL,
        readme: false,
    },
    Tool {
        name: "ve-link",
        manual: &ve_link::doc::MANUAL,
        readme: true,
    },
    Tool {
        name: "ve-nat",
        manual: &ve_nat::doc::MANUAL,
        readme: true,
    },
    Tool {
        name: "nm-unmanage",
        manual: &nm_unmanage::doc::MANUAL,
        readme: true,
    },
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `text` without the items under `#[cfg(test)]` (a module or function in braces, or a
/// one-line `mod x;`), and the names of the modules declared test-only that way.
fn strip_test_items(text: &str) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut test_mods = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "#[cfg(test)]" {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let Some(item) = lines.next() else { break };
        let decl = item.trim().trim_start_matches("pub ");
        if let Some(m) = decl.strip_prefix("mod ").and_then(|m| m.strip_suffix(';')) {
            test_mods.push(m.to_string());
            continue;
        }
        let mut depth = 0i32;
        let mut opened = false;
        let mut l = item;
        loop {
            for c in l.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if (opened && depth <= 0) || (!opened && l.trim_end().ends_with(';')) {
                break;
            }
            match lines.next() {
                Some(next) => l = next,
                None => break,
            }
        }
    }
    (out, test_mods)
}

/// The Rust files of `dir` that are built into the tool, test-only code removed.
fn sources(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    let mut skip: Vec<PathBuf> = Vec::new();
    let mut files = Vec::new();
    for p in &entries {
        if p.extension().is_some_and(|x| x == "rs") {
            let (text, test_mods) = strip_test_items(&fs::read_to_string(p).unwrap());
            for m in test_mods {
                skip.push(dir.join(format!("{m}.rs")));
                skip.push(dir.join(&m));
            }
            files.push((p.clone(), text));
        }
    }
    for (p, text) in files {
        if !skip.contains(&p) && p.file_name().is_some_and(|n| n != "doc.rs") {
            out.push((p, text));
        }
    }
    for p in entries {
        if p.is_dir() && !skip.contains(&p) {
            sources(&p, out);
        }
    }
}

/// Every exit code the code in `text` constructs an error with: `Kind::X`, `Exit::X`,
/// and the shorthand constructors of `common::Error`.
fn constructed(text: &str) -> BTreeSet<(i32, String)> {
    let mut found = BTreeSet::new();
    for k in Kind::ALL {
        let token = format!("Kind::{k:?}");
        if has_token(text, &token) {
            found.insert((k.exit().code(), token));
        }
    }
    for e in Exit::ALL {
        let token = format!("Exit::{e:?}");
        if has_token(text, &token) {
            found.insert((e.code(), token));
        }
    }
    for (f, exit) in [
        ("Error::usage(", Exit::Usage),
        ("Error::data(", Exit::DataErr),
        ("Error::no_input(", Exit::NoInput),
        ("Error::unavailable(", Exit::Unavailable),
        ("Error::internal(", Exit::Software),
        ("Error::config(", Exit::Config),
    ] {
        if text.contains(f) {
            found.insert((exit.code(), f.to_string()));
        }
    }
    found
}

/// `token` in `text`, not as the start of a longer name (`Kind::Io` in `Kind::IoErr`).
fn has_token(text: &str, token: &str) -> bool {
    text.match_indices(token).any(|(i, _)| {
        !text[i + token.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
    })
}

fn documented(m: &Manual) -> BTreeSet<i32> {
    m.exits.iter().map(|u| u.exit.code()).collect()
}

/// The modules of common that construct errors, and how a tool's code shows it calls
/// them (none: every tool does).
const COMMON_PARTS: [(&str, &[&str]); 4] = [
    ("cli.rs", &[]),
    ("output.rs", &["output::"]),
    ("name.rs", &["name::"]),
    ("netns.rs", &["netns::", "Netns"]),
];

#[test]
fn every_exit_a_tool_constructs_is_in_its_manual() {
    for tool in &TOOLS {
        let mut files = Vec::new();
        sources(&root().join(tool.name).join("src"), &mut files);
        assert!(files.len() > 3, "{}: no sources found", tool.name);
        let have = documented(tool.manual);
        let mut missing = Vec::new();
        // The parts of common a tool calls construct errors of its too.
        let all: String = files.iter().map(|(_, t)| t.as_str()).collect();
        for (module, markers) in COMMON_PARTS {
            if markers.is_empty() || markers.iter().any(|m| all.contains(m)) {
                let path = root().join("common/src").join(module);
                let (text, _) = strip_test_items(&fs::read_to_string(&path).unwrap());
                files.push((path, text));
            }
        }
        for (path, text) in &files {
            for (code, how) in constructed(text) {
                if !have.contains(&code) {
                    missing.push(format!("{code} ({how} in {})", path.display()));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "{}: exit codes used but not in its src/doc.rs MANUAL: {missing:?}",
            tool.name
        );
        // The parser's usage errors and help are every tool's.
        assert!(have.contains(&0) && have.contains(&64), "{}", tool.name);
    }
}

#[test]
fn manuals_list_codes_once_in_table_order() {
    for tool in &TOOLS {
        let codes: Vec<i32> = tool.manual.exits.iter().map(|u| u.exit.code()).collect();
        let mut sorted = codes.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(codes, sorted, "{}: out of order or repeated", tool.name);
    }
}

/// The paragraph after a `## Exit codes` heading, or the one that starts `Exit codes:`.
fn readme_exit_paragraph(text: &str) -> Option<&str> {
    let from = match text.find("\n## Exit codes\n") {
        Some(i) => text[i + "\n## Exit codes\n".len()..].trim_start(),
        None => &text[text.find("\nExit codes:")? + 1..],
    };
    Some(from.split("\n\n").next().unwrap_or(from))
}

/// The exit codes a README paragraph names: numbers in the table, as whole words.
fn codes_named(paragraph: &str) -> BTreeSet<i32> {
    let table: BTreeSet<i32> = Exit::ALL.iter().map(|e| e.code()).collect();
    paragraph
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .filter(|w| !w.contains('.'))
        .filter_map(|w| w.parse().ok())
        .filter(|c| table.contains(c))
        .collect()
}

/// 70 ("a bug in the tool") is in every MANUAL; a README may leave it out.
#[test]
fn tool_readmes_name_exactly_the_codes_of_their_manual() {
    for tool in TOOLS.iter().filter(|t| t.readme) {
        let path = root().join(tool.name).join("README.md");
        let text = fs::read_to_string(&path).unwrap();
        let para = readme_exit_paragraph(&text)
            .unwrap_or_else(|| panic!("{}: no exit-code paragraph", path.display()));
        let mut named = codes_named(para);
        let mut want = documented(tool.manual);
        named.remove(&Exit::Software.code());
        want.remove(&Exit::Software.code());
        assert_eq!(
            named,
            want,
            "{}'s exit codes differ from {}/src/doc.rs",
            path.display(),
            tool.name
        );
    }
}

#[test]
fn the_scanners_see_what_they_should() {
    let src = "fn a() { Error::new(Kind::Busy, \"x\") }\n#[cfg(test)]\nmod tests {\n    fn b() { Kind::Config; }\n}\n#[cfg(test)]\npub mod mem;\nfn c() { Error::usage(\"y\"); Exit::IoErr }\n";
    let (text, mods) = strip_test_items(src);
    assert_eq!(mods, ["mem"]);
    let codes: Vec<i32> = constructed(&text).into_iter().map(|(c, _)| c).collect();
    assert_eq!(codes, [64, 74, 75]);
    assert!(!has_token("Kind::IoErr", "Kind::Io"));
    assert_eq!(
        codes_named("0 ok, 1 differs, 64 usage (--timeout 0.5 s), 66 missing, 5 s, 2001"),
        BTreeSet::from([0, 1, 64, 66])
    );
}
