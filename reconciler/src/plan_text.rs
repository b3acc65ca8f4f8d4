//! The text form of a [`Plan`], as `plan` and `apply` print it: per host, its warnings and
//! `+` create / `~` change lines with their diffs, then one summary line of counts. Pure; colours
//! only when asked ([`Style`]). The JSON form is the plan's `Serialize`.

use std::fmt::Write as _;

use crate::change::ChangeKind;
use crate::plan::Plan;

/// Colours for the text rendering (none under NO_COLOR / not a terminal).
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub color: bool,
}

impl Style {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
}

/// Human-readable plan: per host, `+` create / `~` change lines with diffs, then a summary.
pub fn render_text(plan: &Plan, style: Style) -> String {
    let mut out = String::new();
    for h in &plan.hosts {
        let _ = writeln!(
            out,
            "{} ({}, {})",
            style.paint("1", &h.host),
            h.role,
            h.address
        );
        if let Some(e) = &h.error {
            let _ = writeln!(out, "  {} {e}", style.paint("31", "!"));
            continue;
        }
        for w in &h.warnings {
            let _ = writeln!(out, "  {} warning: {w}", style.paint("33", "!"));
        }
        for c in &h.changes {
            let sign = match c.kind {
                ChangeKind::Create => style.paint("32", "+"),
                ChangeKind::Change => style.paint("33", "~"),
            };
            let _ = writeln!(
                out,
                "  {sign} {} {}",
                c.id,
                style.paint("2", &format!("— {}", c.summary))
            );
            if let Some(d) = &c.diff {
                for line in d.lines() {
                    let painted = if line.starts_with('+') && !line.starts_with("+++") {
                        style.paint("32", line)
                    } else if line.starts_with('-') && !line.starts_with("---") {
                        style.paint("31", line)
                    } else {
                        line.to_string()
                    };
                    let _ = writeln!(out, "      {painted}");
                }
            }
        }
        for i in &h.images {
            let sign = if i.replaces.is_some() {
                style.paint("33", "~")
            } else {
                style.paint("32", "+")
            };
            let _ = writeln!(out, "  {sign} {}", i.describe());
        }
        let _ = writeln!(out, "  {} unchanged", h.unchanged);
    }
    let c = plan.counts;
    let _ = write!(
        out,
        "Hosts: {} to create, {} to change, {} unchanged",
        c.create, c.change, c.unchanged
    );
    if c.images > 0 {
        let _ = write!(
            out,
            ", {} image(s) to import ({} to send)",
            c.images,
            crate::images::human_bytes(c.image_bytes)
        );
    }
    if c.failed_hosts > 0 {
        let _ = write!(out, ", {} host(s) could not be planned", c.failed_hosts);
    }
    if c.warnings > 0 {
        let _ = write!(out, ", {} warning(s)", c.warnings);
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{Action, Change};
    use crate::plan::{Counts, HostPlan};

    fn change(kind: ChangeKind, diff: Option<&str>) -> Change {
        Change {
            id: "r/file:/x".into(),
            role: "r".into(),
            kind,
            summary: "s".into(),
            diff: diff.map(str::to_string),
            action: Action::Script {
                script: "true".into(),
                secret_output: false,
            },
        }
    }

    #[test]
    fn counts_and_text() {
        let h = HostPlan {
            host: "m".into(),
            address: "10.0.0.1".into(),
            role: aion_model::inventory::Role::Master,
            changes: vec![
                change(ChangeKind::Create, None),
                change(ChangeKind::Change, Some("--- a\n+++ b\n-x\n+y\n")),
            ],
            user: "aion".into(),
            unchanged: 3,
            error: None,
            warnings: vec![],
            images: vec![],
        };
        let bad = HostPlan {
            host: "w".into(),
            error: Some("unreachable".into()),
            changes: vec![],
            unchanged: 0,
            ..h.clone()
        };
        let p = Plan::new(vec![h, bad]);
        assert_eq!(
            p.counts,
            Counts {
                create: 1,
                change: 1,
                unchanged: 3,
                failed_hosts: 1,
                warnings: 0,
                images: 0,
                image_bytes: 0,
            }
        );
        let t = render_text(&p, Style { color: false });
        assert!(t.contains("  + r/file:/x — s"), "{t}");
        assert!(t.contains("      -x\n      +y\n"), "{t}");
        assert!(t.contains("! unreachable"));
        assert!(
            t.ends_with(
                "Hosts: 1 to create, 1 to change, 3 unchanged, 1 host(s) could not be planned\n"
            ),
            "{t}"
        );
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["counts"]["create"], 1);
        assert!(json["hosts"][0]["changes"][0].get("action").is_none());
    }
}
