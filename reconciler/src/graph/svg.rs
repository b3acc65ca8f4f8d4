//! [`Graph`] → a standalone SVG document (no Graphviz): [`layout`](super::layout) places
//! everything, this module only writes it out, with a legend below the devices.
//!
//! Styling is a `<style>` block with classes, so the markup stays small and a node's look is
//! decided in one place. Every text is escaped; numbers are rounded to 0.1 px so output is
//! byte-identical across runs.

use std::fmt::Write as _;

use super::layout::{
    self, Curve, DEVICE_FONT, FONT, LINE_H, MARGIN, PAD_X, PAD_Y, Rect, SMALL_CHAR_W, SMALL_FONT,
    SMALL_LINE_H, TITLE_CHAR_W, TITLE_FONT, text_width,
};
use super::{EdgeStatus, Graph, NodeKind};

const STYLE: &str = "\
text{font-family:'DejaVu Sans Mono',Menlo,Consolas,monospace;fill:#24292f}
.title{font-size:16px;font-weight:bold}
.device{fill:#f6f8fa;stroke:#8c959f;stroke-width:1}
.device.external{fill:#fcfcfc;stroke-dasharray:7 4}
.dtitle{font-size:13px;font-weight:bold}
.small{font-size:11px}
.muted{fill:#57606a}
.node{fill:#ffffff;stroke:#24292f;stroke-width:1.2}
.node.startup{fill:#e6f4ea;stroke:#1a7f37;stroke-width:2.6}
.node.remote{fill:#f3f4f6;stroke:#6e7781;stroke-dasharray:5 3}
.node.bad{fill:#fff1f0;stroke:#cf222e;stroke-width:1.6;stroke-dasharray:5 3}
.node.note{fill:none;stroke:#afb8c1;stroke-dasharray:2 3}
.ntitle{font-size:12px;font-weight:bold}
.red{fill:#cf222e}
.edge{fill:none;stroke:#57606a;stroke-width:1.4}
.edge.cross{stroke:#0969da;stroke-width:2.2}
.edge.bad{stroke:#cf222e;stroke-dasharray:6 3}
.elabel{fill:#ffffff;fill-opacity:0.9;stroke:none}
";

/// Arrowheads, one per edge colour (`marker-end` cannot inherit the stroke colour).
const MARKERS: &[(&str, &str)] = &[
    ("arrow", "#57606a"),
    ("arrow-cross", "#0969da"),
    ("arrow-bad", "#cf222e"),
];

/// Corner radius: square-ish for Deployments (`always: yes`), round for Jobs.
const RX_ALWAYS: f64 = 2.0;
const RX_JOB: f64 = 10.0;

pub fn render(g: &Graph) -> String {
    let lay = layout::layout(g);
    let mut body = String::new();
    let _ = writeln!(
        body,
        "<text class=\"title\" x=\"{}\" y=\"{}\">aion kanban graph — {}</text>",
        num(MARGIN),
        num(MARGIN + TITLE_FONT),
        esc(&g.title)
    );
    for (d, r) in g.devices.iter().zip(&lay.devices) {
        let class = if d.external {
            "device external"
        } else {
            "device"
        };
        let _ = writeln!(body, "<g id=\"{}\">", esc(&d.id));
        let _ = writeln!(
            body,
            "<rect class=\"{class}\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"8\"/>",
            num(r.x),
            num(r.y),
            num(r.w),
            num(r.h)
        );
        let _ = writeln!(
            body,
            "<text class=\"dtitle\" x=\"{}\" y=\"{}\">{}</text>",
            num(r.x + 12.0),
            num(r.y + 8.0 + DEVICE_FONT),
            esc(&d.title)
        );
        for (i, line) in d.details.iter().enumerate() {
            let _ = writeln!(
                body,
                "<text class=\"small muted\" x=\"{}\" y=\"{}\">{}</text>",
                num(r.x + 12.0),
                num(r.y + 26.0 + SMALL_FONT + i as f64 * SMALL_LINE_H),
                esc(line)
            );
        }
        body.push_str("</g>\n");
    }
    // Edges under the nodes, so arrows end on the box outline.
    for (i, (e, shape)) in g.edges.iter().zip(&lay.edges).enumerate() {
        let (class, marker) = match (&e.status, e.cross_device) {
            (EdgeStatus::Ok, false) => ("edge", "arrow"),
            (EdgeStatus::Ok, true) => ("edge cross", "arrow-cross"),
            _ => ("edge bad", "arrow-bad"),
        };
        let from = &g.nodes[e.from].label().title;
        let to = &g.nodes[e.to].label().title;
        let _ = writeln!(body, "<g id=\"e{i}\">");
        let _ = writeln!(
            body,
            "<title>{} → {}: {}</title>",
            esc(from),
            esc(to),
            esc(&e.label_lines().join(" "))
        );
        let _ = writeln!(
            body,
            "<path class=\"{class}\" d=\"{}\" marker-end=\"url(#{marker})\"/>",
            path(&shape.curves)
        );
        let l = &shape.label;
        let _ = writeln!(
            body,
            "<rect class=\"elabel\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"3\"/>",
            num(l.x),
            num(l.y),
            num(l.w),
            num(l.h)
        );
        for (k, line) in e.label_lines().iter().enumerate() {
            // The key line in the edge's colour, a warning's text in red.
            let class = if k > 0 || e.is_red() {
                "small red"
            } else if e.cross_device {
                "small"
            } else {
                "small muted"
            };
            let _ = writeln!(
                body,
                "<text class=\"{class}\" x=\"{}\" y=\"{}\">{}</text>",
                num(l.x + 4.0),
                num(l.y + 2.0 + SMALL_FONT + k as f64 * SMALL_LINE_H - 2.0),
                esc(line)
            );
        }
        body.push_str("</g>\n");
    }
    for (n, r) in g.nodes.iter().zip(&lay.nodes) {
        let (class, rx, red) = match &n.kind {
            NodeKind::Service(s) => {
                let class = if s.startup { "node startup" } else { "node" };
                (class, if s.always { RX_ALWAYS } else { RX_JOB }, false)
            }
            NodeKind::Remote { .. } => ("node remote", RX_ALWAYS, false),
            NodeKind::Unresolved { .. } => ("node bad", RX_ALWAYS, true),
            NodeKind::Note(_) => ("node note", RX_ALWAYS, false),
        };
        let label = n.label();
        let _ = writeln!(body, "<g id=\"{}\">", esc(&n.id));
        let _ = writeln!(
            body,
            "<title>{}</title>",
            esc(&std::iter::once(label.title.as_str())
                .chain(label.lines.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join("\n"))
        );
        let _ = writeln!(body, "{}", rect(class, r, rx));
        let tclass = if red { "ntitle red" } else { "ntitle" };
        let _ = writeln!(
            body,
            "<text class=\"{tclass}\" x=\"{}\" y=\"{}\">{}</text>",
            num(r.x + PAD_X),
            num(r.y + PAD_Y + FONT),
            esc(&label.title)
        );
        for (k, line) in label.lines.iter().enumerate() {
            let class = if red { "small red" } else { "small muted" };
            let _ = writeln!(
                body,
                "<text class=\"{class}\" x=\"{}\" y=\"{}\">{}</text>",
                num(r.x + PAD_X),
                num(r.y + PAD_Y + LINE_H + SMALL_FONT + k as f64 * SMALL_LINE_H),
                esc(line)
            );
        }
        body.push_str("</g>\n");
    }
    let (legend_w, legend_h) = legend(&mut body, lay.height + 18.0, lay.width - MARGIN);
    let title_w = MARGIN + text_width(&format!("aion kanban graph — {}", g.title), TITLE_CHAR_W);
    let width = lay.width.max(MARGIN + legend_w).max(title_w) + MARGIN;
    let height = lay.height + 18.0 + legend_h + MARGIN;

    let mut out = String::with_capacity(body.len() + 2048);
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">",
        w = num(width.ceil()),
        h = num(height.ceil())
    );
    let _ = writeln!(out, "<title>aion kanban graph — {}</title>", esc(&g.title));
    let _ = writeln!(out, "<style>\n{STYLE}</style>");
    out.push_str("<defs>\n");
    for (id, colour) in MARKERS {
        let _ = writeln!(
            out,
            "<marker id=\"{id}\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" markerUnits=\"userSpaceOnUse\" orient=\"auto\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"{colour}\"/></marker>"
        );
    }
    out.push_str("</defs>\n");
    let _ = writeln!(
        out,
        "<rect x=\"0\" y=\"0\" width=\"{}\" height=\"{}\" fill=\"#ffffff\"/>",
        num(width.ceil()),
        num(height.ceil())
    );
    out.push_str(&body);
    out.push_str("</svg>\n");
    out
}

/// What the legend explains: (sample, text).
enum Sample {
    Node(&'static str, f64),
    Edge(&'static str, &'static str),
}

const LEGEND: &[(Sample, &str)] = &[
    (Sample::Node("node", RX_ALWAYS), "always: Deployment"),
    (Sample::Node("node", RX_JOB), "always: no → Job"),
    (
        Sample::Node("node startup", RX_ALWAYS),
        "startup: running from the start",
    ),
    (
        Sample::Node("node", RX_ALWAYS),
        "on demand: idle until a kanban",
    ),
    (
        Sample::Node("node remote", RX_ALWAYS),
        "on a device outside the drawing",
    ),
    (
        Sample::Node("node bad", RX_ALWAYS),
        "unresolved target (with why)",
    ),
    (Sample::Edge("edge", "arrow"), "nextService: connection key"),
    (
        Sample::Edge("edge cross", "arrow-cross"),
        "to another device",
    ),
    (Sample::Edge("edge bad", "arrow-bad"), "problem (see text)"),
];

const LEGEND_NOTE: &str = "name-001…003 ×3: instances as rendered; `pattern` other than n: every kanban goes to instance 001";

/// Draw the legend at `top`, wrapping items at `max_w`; returns its size.
fn legend(body: &mut String, top: f64, max_w: f64) -> (f64, f64) {
    const SAMPLE_W: f64 = 34.0;
    const ROW_H: f64 = 24.0;
    let max_w = max_w.max(640.0);
    let x0 = MARGIN + 10.0;
    let mut x = x0;
    let mut y = top + 40.0;
    let mut widest: f64 = text_width(LEGEND_NOTE, SMALL_CHAR_W);
    let mut items = String::new();
    for (sample, text) in LEGEND {
        let w = SAMPLE_W + 6.0 + text_width(text, SMALL_CHAR_W) + 22.0;
        if x > x0 && x - x0 + w > max_w {
            x = x0;
            y += ROW_H;
        }
        match sample {
            Sample::Node(class, rx) => {
                let r = Rect {
                    x,
                    y: y - 8.0,
                    w: SAMPLE_W,
                    h: 16.0,
                };
                let _ = writeln!(items, "{}", rect(class, &r, *rx));
            }
            Sample::Edge(class, marker) => {
                let _ = writeln!(
                    items,
                    "<path class=\"{class}\" d=\"M{} {} L{} {}\" marker-end=\"url(#{marker})\"/>",
                    num(x),
                    num(y),
                    num(x + SAMPLE_W),
                    num(y)
                );
            }
        }
        let _ = writeln!(
            items,
            "<text class=\"small\" x=\"{}\" y=\"{}\">{}</text>",
            num(x + SAMPLE_W + 6.0),
            num(y + 4.0),
            esc(text)
        );
        x += w;
        widest = widest.max(x - x0);
    }
    y += ROW_H;
    let _ = writeln!(
        items,
        "<text class=\"small muted\" x=\"{}\" y=\"{}\">{}</text>",
        num(x0),
        num(y + 2.0),
        esc(LEGEND_NOTE)
    );
    let h = y + 14.0 - top;
    let w = widest + 20.0;
    let _ = writeln!(body, "<g id=\"legend\">");
    let _ = writeln!(
        body,
        "<rect class=\"device\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"6\"/>",
        num(MARGIN),
        num(top),
        num(w),
        num(h)
    );
    let _ = writeln!(
        body,
        "<text class=\"ntitle\" x=\"{}\" y=\"{}\">legend</text>",
        num(x0),
        num(top + 6.0 + FONT)
    );
    body.push_str(&items);
    body.push_str("</g>\n");
    (w, h)
}

fn rect(class: &str, r: &Rect, rx: f64) -> String {
    format!(
        "<rect class=\"{class}\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"{}\"/>",
        num(r.x),
        num(r.y),
        num(r.w),
        num(r.h),
        num(rx)
    )
}

fn path(curves: &[Curve]) -> String {
    let mut d = String::new();
    if let Some(first) = curves.first() {
        let _ = write!(d, "M{} {}", num(first.from.x), num(first.from.y));
    }
    for c in curves {
        let _ = write!(
            d,
            " C{} {} {} {} {} {}",
            num(c.c1.x),
            num(c.c1.y),
            num(c.c2.x),
            num(c.c2.y),
            num(c.to.x),
            num(c.to.y)
        );
    }
    d
}

/// A coordinate rounded to 0.1, without a trailing `.0`.
fn num(v: f64) -> String {
    let r = (v * 10.0).round() / 10.0;
    if r.fract() == 0.0 {
        format!("{}", r as i64)
    } else {
        format!("{r:.1}")
    }
}

/// XML text and attribute escaping; control characters XML 1.0 forbids become U+FFFD.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || matches!(c, '\u{FFFE}' | '\u{FFFF}') => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_short_and_stable() {
        assert_eq!(num(12.0), "12");
        assert_eq!(num(12.04), "12");
        assert_eq!(num(12.06), "12.1");
        assert_eq!(num(-0.01), "0");
    }

    #[test]
    fn escapes_markup_and_control_characters() {
        assert_eq!(esc("a<b>&\"'\u{1}"), "a&lt;b&gt;&amp;&quot;&#39;\u{FFFD}");
    }
}
