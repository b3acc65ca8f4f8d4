//! `aion-reconcile graph`: golden files per format for the cluster example inventory
//! (`inventories/cluster/`: a cross-device edge, scale, startup/always/job) and for upstream's
//! `normal_config.yml` (a device outside the drawing, `pattern: "0"`, a dangling target), in
//! `reconciler/tests/golden/graph/`; the SVG parses as XML and names every node; the command's
//! errors and its atomic `-o`. Regenerate the goldens with `UPDATE_GOLDEN=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use aion_reconcile::commands::graph::{self, Args, GraphFormat};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn cluster_inventory() -> PathBuf {
    repo("inventories/cluster/inventory.yml")
}

fn normal_config() -> PathBuf {
    repo("reconciler/tests/golden/inputs/aion-core-test-normal_config.yml")
}

fn args(inventory: Option<PathBuf>, services: Option<PathBuf>, format: GraphFormat) -> Args {
    Args {
        inventory,
        services,
        format,
        output: None,
    }
}

fn draw(a: &Args) -> String {
    let (g, _warnings) = graph::load(a).unwrap_or_else(|e| panic!("{e}"));
    graph::render(&g, a.format)
}

/// Compare with the golden file (or write it under `UPDATE_GOLDEN`).
fn compare(name: &str, actual: &str) {
    let path = repo("reconciler/tests/golden/graph").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert!(
        expected == actual,
        "{name} differs from {}; run with UPDATE_GOLDEN=1 and review the diff",
        path.display()
    );
}

const FORMATS: [(GraphFormat, &str); 3] = [
    (GraphFormat::Svg, "svg"),
    (GraphFormat::Dot, "dot"),
    (GraphFormat::Mermaid, "mmd"),
];

#[test]
fn graph_golden_cluster_inventory() {
    for (format, ext) in FORMATS {
        let a = args(Some(cluster_inventory()), None, format);
        let text = draw(&a);
        assert_eq!(text, draw(&a), "{ext}: not deterministic");
        compare(&format!("cluster.{ext}"), &text);
    }
}

#[test]
fn graph_golden_single_services_file() {
    for (format, ext) in FORMATS {
        let a = args(None, Some(normal_config()), format);
        let text = draw(&a);
        assert_eq!(text, draw(&a), "{ext}: not deterministic");
        compare(&format!("normal_config.{ext}"), &text);
    }
}

/// The SVG is well-formed XML, and every node's title and every device's title is a text.
#[test]
fn graph_svg_is_xml_with_every_label() {
    for a in [
        args(Some(cluster_inventory()), None, GraphFormat::Svg),
        args(None, Some(normal_config()), GraphFormat::Svg),
    ] {
        let (g, _) = graph::load(&a).unwrap();
        let svg = graph::render(&g, GraphFormat::Svg);
        let doc = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert_eq!(
            root.tag_name().namespace(),
            Some("http://www.w3.org/2000/svg")
        );
        let texts: Vec<String> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .map(|n| n.text().unwrap_or_default().to_owned())
            .collect();
        for n in &g.nodes {
            let l = n.label();
            for line in std::iter::once(&l.title).chain(&l.lines) {
                assert!(texts.contains(line), "node {} line {line:?} missing", n.id);
            }
            // Each node is a group with its id.
            assert!(
                doc.descendants()
                    .any(|x| x.has_tag_name("g") && x.attribute("id") == Some(n.id.as_str())),
                "{}",
                n.id
            );
        }
        for d in &g.devices {
            assert!(texts.contains(&d.title), "device {}", d.title);
        }
        // One arrow per edge, each with a marker.
        let paths = doc
            .descendants()
            .filter(|x| {
                x.has_tag_name("path")
                    && x.attribute("marker-end").is_some()
                    && x.parent()
                        .and_then(|p| p.attribute("id"))
                        .is_some_and(|id| id.starts_with('e'))
            })
            .count();
        assert_eq!(paths, g.edges.len());
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aion-reconcile"))
        .arg("graph")
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn graph_stdout_by_default_and_format_flag() {
    let out = run(&[s(&normal_config())]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.starts_with(b"<?xml"));
    let out = run(&["--format", "mermaid", "-i", s(&cluster_inventory())]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("flowchart LR"));
    // The warnings the graph draws red are also listed on stderr.
    let out = run(&["--format", "dot", s(&normal_config())]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning[next-service-unknown]"));
}

#[test]
fn graph_output_file_is_written_whole() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("g.dot");
    let out = run(&["--format", "dot", "-o", s(&file), s(&normal_config())]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("// aion kanban graph") && text.ends_with("}\n"));
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["g.dot"], "no temp file left");
}

#[test]
fn graph_invalid_input_is_the_validate_error_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("services.yml");
    std::fs::write(&bad, "microservices:\n  a:\n    always: \"yes\"\n").unwrap();
    let file = dir.path().join("g.svg");
    let out = run(&["-o", s(&file), s(&bad)]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error[bool-quoted]"), "{err}");
    assert!(err.contains(&format!("{}:3:13", bad.display())), "{err}");
    assert!(err.contains("nothing drawn"), "{err}");
    assert!(!err.contains('\x1b'), "no colour under NO_COLOR");
    assert!(!file.exists());
    // The same as `validate` prints.
    let v = Command::new(env!("CARGO_BIN_EXE_aion-reconcile"))
        .args(["validate", s(&bad)])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(
        err.starts_with(String::from_utf8_lossy(&v.stdout).as_ref()),
        "{err}"
    );
}

#[test]
fn graph_usage_errors() {
    // Neither input, or both.
    assert_eq!(run(&[]).status.code(), Some(2));
    let both = run(&["-i", s(&cluster_inventory()), s(&normal_config())]);
    assert_eq!(both.status.code(), Some(2));
    let missing = run(&["/nonexistent/services.yml"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("cannot read /nonexistent/services.yml")
    );
}
