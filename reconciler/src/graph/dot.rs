//! [`Graph`] → Graphviz DOT, for people with their own tools (`dot -Tpng`). Devices are
//! `cluster_*` subgraphs; ids are the graph's (`d0`, `n0`), every label a quoted, escaped string.

use std::fmt::Write as _;

use super::{EdgeStatus, Graph, NodeKind};

pub fn render(g: &Graph) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "// aion kanban graph: {}", super::one_line(&g.title));
    out.push_str("digraph \"aion\" {\n");
    let _ = writeln!(
        out,
        "  graph [rankdir=LR, fontname=\"monospace\", labelloc=t, label={}];",
        quote(&format!("aion kanban graph — {}", g.title))
    );
    out.push_str("  node [shape=box, fontname=\"monospace\", fontsize=11];\n");
    out.push_str("  edge [fontname=\"monospace\", fontsize=10, color=\"#57606a\"];\n");
    for (di, d) in g.devices.iter().enumerate() {
        let _ = writeln!(out, "  subgraph {} {{", quote(&format!("cluster_{}", d.id)));
        let mut label = vec![d.title.clone()];
        label.extend(d.details.iter().cloned());
        let _ = writeln!(out, "    label={};", quote(&label.join("\n")));
        let style = if d.external {
            "dashed,rounded"
        } else {
            "filled,rounded"
        };
        let _ = writeln!(
            out,
            "    style=\"{style}\"; color=\"#8c959f\"; fillcolor=\"#f6f8fa\";"
        );
        for n in g.nodes.iter().filter(|n| n.device == di) {
            let l = n.label();
            let mut text = vec![l.title.clone()];
            text.extend(l.lines.iter().cloned());
            let attrs = match &n.kind {
                NodeKind::Service(s) => {
                    let mut style = vec!["filled"];
                    if !s.always {
                        style.push("rounded");
                    }
                    let (fill, pen) = if s.startup {
                        ("#e6f4ea", "2.5")
                    } else {
                        ("#ffffff", "1")
                    };
                    format!(
                        "style=\"{}\", fillcolor=\"{fill}\", penwidth={pen}",
                        style.join(",")
                    )
                }
                NodeKind::Remote { .. } => {
                    "style=\"dashed,filled\", fillcolor=\"#f3f4f6\", color=\"#6e7781\"".to_owned()
                }
                NodeKind::Unresolved { .. } => {
                    "style=\"dashed,filled\", fillcolor=\"#fff1f0\", color=\"#cf222e\", fontcolor=\"#cf222e\""
                        .to_owned()
                }
                NodeKind::Note(_) => "style=dotted, color=\"#afb8c1\"".to_owned(),
            };
            let _ = writeln!(
                out,
                "    {} [label={}, {attrs}];",
                quote(&n.id),
                quote(&text.join("\n"))
            );
        }
        out.push_str("  }\n");
    }
    for e in &g.edges {
        let mut attrs = vec![format!("label={}", quote(&e.label_lines().join("\n")))];
        if e.cross_device {
            attrs.push("penwidth=2".to_owned());
        }
        match (&e.status, e.cross_device) {
            (EdgeStatus::Ok, true) => attrs.push("color=\"#0969da\"".to_owned()),
            (EdgeStatus::Ok, false) => {}
            _ => attrs.push("color=\"#cf222e\", fontcolor=\"#cf222e\", style=dashed".to_owned()),
        }
        let _ = writeln!(
            out,
            "  {} -> {} [{}];",
            quote(&g.nodes[e.from].id),
            quote(&g.nodes[e.to].id),
            attrs.join(", ")
        );
    }
    out.push_str("}\n");
    out
}

/// A DOT double-quoted string: `\` and `"` escaped, line breaks as `\n` (centred lines).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
    }
}
