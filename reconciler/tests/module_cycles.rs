//! No module of aion-reconcile imports a module that imports it back, directly or through
//! others: `scripts/module-cycles` lists the import edges between modules (`use` statements and
//! paths in code) and fails on a cycle. The shared types live in leaf modules that import nothing
//! of the crate. A fixture with a cycle checks that the script finds one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/module-cycles")
}

fn module_cycles(args: &[&Path]) -> Output {
    Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .expect("bash runs scripts/module-cycles")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn no_import_cycle_between_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let out = module_cycles(&[Path::new("--edges"), &src]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains(", no cycle\n"), "{t}");
    // The edges the refactor removed, and the leaves that must stay leaves.
    for edge in [
        "crate::roles::resource -> crate::plan\n",
        "crate::cluster -> crate::render\n",
        "crate::reconcile -> crate::commands",
        "crate::plan -> crate::plan_text\n",
    ] {
        assert!(!t.contains(edge), "{edge}: {t}");
    }
    for leaf in ["change", "manifest", "shell"] {
        let from = format!("crate::{leaf} -> ");
        let imports: Vec<&str> = t.lines().filter(|l| l.starts_with(&from)).collect();
        assert!(
            imports.is_empty(),
            "{leaf} is a leaf, but imports {imports:?}"
        );
    }
}

#[test]
fn the_script_finds_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir(src.join("b")).unwrap();
    for (file, text) in [
        ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
        ("a.rs", "use crate::b::{self, inner::Thing};\n"),
        ("b/mod.rs", "pub mod inner;\npub fn f() { crate::c::g() }\n"),
        ("b/inner.rs", "pub struct Thing;\n"),
        (
            "c.rs",
            "// crate::a::x in a comment is not an edge\npub fn g() { super::a::h() }\n\
             #[cfg(test)]\nmod tests {\n    use crate::b::inner::Thing;\n}\n",
        ),
    ] {
        std::fs::write(src.join(file), text).unwrap();
    }
    let out = module_cycles(&[Path::new("--edges"), src]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("CYCLE among crate::a, crate::b, crate::c:"),
        "{t}"
    );
    assert!(t.contains("crate::a -> crate::b::inner\n"), "{t}");
    assert!(
        !t.contains("crate::c -> crate::b::inner"),
        "test modules are not edges: {t}"
    );

    // Break it: c no longer calls into a.
    std::fs::write(src.join("c.rs"), "pub fn g() {}\n").unwrap();
    let out = module_cycles(&[src]);
    assert!(out.status.success(), "{}", text(&out));
}
