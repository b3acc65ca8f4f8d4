//! [`Graph`] → a Mermaid flowchart (for Markdown on GitHub/GitLab, mermaid.live). Devices are
//! subgraphs; labels are quoted with Mermaid's entity codes for `"`, `#`, `<`, `>`, `&` and
//! backticks (which would otherwise start markdown), lines joined with `<br/>`.

use std::fmt::Write as _;

use super::{EdgeStatus, Graph, NodeKind};

pub fn render(g: &Graph) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "%% aion kanban graph: {}", super::one_line(&g.title));
    out.push_str("flowchart LR\n");
    let mut classes: Vec<(&str, &str)> = Vec::new();
    for (di, d) in g.devices.iter().enumerate() {
        let mut label = vec![d.title.clone()];
        label.extend(d.details.iter().cloned());
        let _ = writeln!(out, "  subgraph {}[\"{}\"]", d.id, text(&label));
        for n in g.nodes.iter().filter(|n| n.device == di) {
            let l = n.label();
            let mut lines = vec![l.title.clone()];
            lines.extend(l.lines.iter().cloned());
            let (open, close, class) = match &n.kind {
                // Jobs rounded, Deployments square, like the SVG.
                NodeKind::Service(s) => {
                    let class = if s.startup { "startup" } else { "ondemand" };
                    if s.always {
                        ("[", "]", class)
                    } else {
                        ("(", ")", class)
                    }
                }
                NodeKind::Remote { .. } => ("[", "]", "remote"),
                NodeKind::Unresolved { .. } => ("[", "]", "bad"),
                NodeKind::Note(_) => ("[", "]", "note"),
            };
            let _ = writeln!(out, "    {}{open}\"{}\"{close}", n.id, text(&lines));
            classes.push((n.id.as_str(), class));
        }
        out.push_str("  end\n");
        if d.external {
            let _ = writeln!(out, "  style {} stroke-dasharray: 6 4", d.id);
        }
    }
    let mut red = Vec::new();
    let mut cross = Vec::new();
    for (i, e) in g.edges.iter().enumerate() {
        let arrow = if e.cross_device { "==>" } else { "-->" };
        let _ = writeln!(
            out,
            "  {} {arrow}|\"{}\"| {}",
            g.nodes[e.from].id,
            text(&e.label_lines()),
            g.nodes[e.to].id
        );
        match (&e.status, e.cross_device) {
            (EdgeStatus::Ok, false) => {}
            (EdgeStatus::Ok, true) => cross.push(i.to_string()),
            _ => red.push(i.to_string()),
        }
    }
    out.push_str("  classDef startup fill:#e6f4ea,stroke:#1a7f37,stroke-width:3px\n");
    out.push_str("  classDef ondemand fill:#ffffff,stroke:#24292f\n");
    out.push_str("  classDef remote fill:#f3f4f6,stroke:#6e7781,stroke-dasharray:5 3\n");
    out.push_str("  classDef bad fill:#fff1f0,stroke:#cf222e,color:#cf222e,stroke-dasharray:5 3\n");
    out.push_str("  classDef note fill:none,stroke:#afb8c1,stroke-dasharray:2 3\n");
    for class in ["startup", "ondemand", "remote", "bad", "note"] {
        let ids: Vec<&str> = classes
            .iter()
            .filter(|(_, c)| *c == class)
            .map(|(id, _)| *id)
            .collect();
        if !ids.is_empty() {
            let _ = writeln!(out, "  class {} {class}", ids.join(","));
        }
    }
    if !cross.is_empty() {
        let _ = writeln!(out, "  linkStyle {} stroke:#0969da", cross.join(","));
    }
    if !red.is_empty() {
        let _ = writeln!(
            out,
            "  linkStyle {} stroke:#cf222e,color:#cf222e,stroke-dasharray:6 3",
            red.join(",")
        );
    }
    out
}

/// Lines of a quoted label: escaped, joined with `<br/>`.
pub fn text(lines: &[String]) -> String {
    lines
        .iter()
        .map(|l| escape(l))
        .collect::<Vec<_>>()
        .join("<br/>")
}

/// Mermaid entity codes (`#quot;` ...) for what would end or change a quoted label.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("#quot;"),
            '#' => out.push_str("#35;"),
            '&' => out.push_str("#amp;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '`' => out.push_str("#96;"),
            '\n' => out.push_str("<br/>"),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(escape("a\"#<b>&`c`"), "a#quot;#35;#lt;b#gt;#amp;#96;c#96;");
    }
}
