//! The text form of a [`Plan`], as `plan` and `apply` print it: per host, its warnings and
//! `+` create / `~` change lines with their diffs, then one summary line of counts. Pure; colours
//! only when asked ([`Style`]). The JSON form is the plan's `Serialize`.

use std::fmt::Write as _;

use crate::output::Tone;

use crate::change::ChangeKind;
use crate::plan::Plan;

/// Colours for the text rendering (none under NO_COLOR / not a terminal).
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub color: bool,
}

impl Style {
    fn paint(&self, tone: Tone, s: &str) -> String {
        crate::output::paint(s, tone, self.color)
    }
}

/// Human-readable plan: per host, `+` create / `~` change lines with diffs, then a summary.
pub fn render_text(plan: &Plan, style: Style) -> String {
    let mut out = String::new();
    for h in &plan.hosts {
        let _ = writeln!(
            out,
            "{} ({}, {})",
            style.paint(Tone::Strong, &h.host),
            h.role,
            h.address
        );
        if let Some(e) = &h.error {
            let _ = writeln!(out, "  {} {e}", style.paint(Tone::Removed, "!"));
            continue;
        }
        for w in &h.warnings {
            let _ = writeln!(out, "  {} warning: {w}", style.paint(Tone::Changed, "!"));
        }
        for c in &h.changes {
            let sign = match c.kind {
                ChangeKind::Create => style.paint(Tone::Added, "+"),
                ChangeKind::Change => style.paint(Tone::Changed, "~"),
            };
            let _ = writeln!(
                out,
                "  {sign} {} {}",
                c.id,
                style.paint(Tone::Faint, &format!("— {}", c.summary))
            );
            if let Some(d) = &c.diff {
                for line in d.lines() {
                    let painted = if line.starts_with('+') && !line.starts_with("+++") {
                        style.paint(Tone::Added, line)
                    } else if line.starts_with('-') && !line.starts_with("---") {
                        style.paint(Tone::Removed, line)
                    } else {
                        line.to_string()
                    };
                    let _ = writeln!(out, "      {painted}");
                }
            }
        }
        for i in &h.images {
            let sign = if i.replaces.is_some() {
                style.paint(Tone::Changed, "~")
            } else {
                style.paint(Tone::Added, "+")
            };
            let _ = writeln!(out, "  {sign} {}", i.describe());
        }
        if let Some(r) = &h.relay {
            let _ = writeln!(out, "  {} {}", style.paint(Tone::Added, "+"), r.describe());
        }
        for r in &h.image_removals {
            let _ = match &r.retagged {
                Some(tag) => writeln!(
                    out,
                    "  {} image {} — {} (the content {tag} named before it was rebuilt; removed once the new pods are ready)",
                    style.paint(Tone::Removed, "-"),
                    r.reference,
                    r.digest
                ),
                None => writeln!(
                    out,
                    "  {} image {} — {} (an old version no longer run; removed once the new pods are ready)",
                    style.paint(Tone::Removed, "-"),
                    r.reference,
                    r.digest
                ),
            };
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
            ", {} image(s) to import ({} to send",
            c.images,
            crate::images::human_bytes(c.image_bytes)
        );
        if c.image_bytes_between_hosts > 0 {
            let _ = write!(
                out,
                ", {} between hosts",
                crate::images::human_bytes(c.image_bytes_between_hosts)
            );
        }
        out.push(')');
    }
    if c.image_removals > 0 {
        let _ = write!(out, ", {} old image(s) to remove", c.image_removals);
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
            image_removals: vec![],
            images_from: None,
            relay: None,
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
                image_bytes_between_hosts: 0,
                image_removals: 0,
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

#[cfg(test)]
mod image_tests {
    use super::*;
    use crate::images::ImageChange;
    use crate::plan::HostPlan;

    fn image(reference: &str, replaces: Option<&str>, bytes: u64, blobs: usize) -> ImageChange {
        ImageChange {
            reference: reference.into(),
            digest: "sha256:new".into(),
            replaces: replaces.map(str::to_string),
            bytes,
            blobs,
            blobs_total: 4,
            bytes_total: 4096,
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            platform: None,
            from: None,
            send: Vec::new(),
            source: Default::default(),
            manifest_size: 400,
        }
    }

    /// Images alone are changes (apply has something to do, `--detailed-exitcode` 2); each is a
    /// `+`/`~` line; the summary counts them and their bytes; JSON has the image objects.
    #[test]
    fn image_lines_counts_and_json() {
        let h = HostPlan {
            host: "w1".into(),
            address: "10.0.0.3".into(),
            role: aion_model::inventory::Role::Worker,
            user: "root".into(),
            changes: vec![],
            unchanged: 5,
            error: None,
            warnings: vec![],
            images: vec![
                image("aion.local/a:1", None, 3072, 3),
                image("aion.local/b:1", Some("sha256:old"), 1024, 1),
            ],
            image_removals: vec![],
            images_from: None,
            relay: None,
        };
        let p = Plan::new(vec![h]);
        assert!(p.has_changes());
        assert_eq!((p.counts.images, p.counts.image_bytes), (2, 4096));
        let t = render_text(&p, Style { color: false });
        assert!(
            t.contains("  + image aion.local/a:1 — sha256:new (3.0 KiB to send: 3 of 4 blobs)\n"),
            "{t}"
        );
        assert!(
            t.contains(
                "  ~ image aion.local/b:1 — sha256:new (1.0 KiB to send: 1 of 4 blobs) replaces sha256:old\n"
            ),
            "{t}"
        );
        assert!(
            t.ends_with(
                "Hosts: 0 to create, 0 to change, 5 unchanged, 2 image(s) to import (4.0 KiB to send)\n"
            ),
            "{t}"
        );
        let json = serde_json::to_value(&p).unwrap();
        let i = &json["hosts"][0]["images"];
        assert_eq!(i[0]["reference"], "aion.local/a:1");
        assert_eq!(i[0]["bytes"], 3072);
        assert!(i[0].get("replaces").is_none() && i[0].get("send").is_none());
        assert_eq!(i[1]["replaces"], "sha256:old");
        assert_eq!(json["counts"]["image_bytes"], 4096);
        // nothing to send: no images key at all
        let none = Plan::new(vec![HostPlan {
            images: vec![],
            ..p.hosts[0].clone()
        }]);
        assert!(!none.has_changes());
        assert!(
            serde_json::to_value(&none).unwrap()["hosts"][0]
                .get("images")
                .is_none()
        );
    }

    /// Old versions alone are changes; each is a `- image` line, counted in the summary, and
    /// an `image_removals` list in JSON (absent when empty).
    #[test]
    fn image_removal_lines_counts_and_json() {
        let h = HostPlan {
            host: "w1".into(),
            address: "10.0.0.3".into(),
            role: aion_model::inventory::Role::Worker,
            user: "root".into(),
            changes: vec![],
            unchanged: 5,
            error: None,
            warnings: vec![],
            images: vec![],
            image_removals: vec![crate::images::ImageRemoval {
                reference: "aion.local/a:1".into(),
                digest: "sha256:one".into(),
                aliases: vec!["sha256:cfg".into()],
                retagged: None,
            }],
            images_from: None,
            relay: None,
        };
        let p = Plan::new(vec![h]);
        assert!(p.has_changes());
        assert_eq!(p.counts.image_removals, 1);
        let t = render_text(&p, Style { color: false });
        assert!(
            t.contains("  - image aion.local/a:1 — sha256:one (an old version no longer run; removed once the new pods are ready)\n"),
            "{t}"
        );
        assert!(
            t.ends_with("Hosts: 0 to create, 0 to change, 5 unchanged, 1 old image(s) to remove\n"),
            "{t}"
        );
        let json = serde_json::to_value(&p).unwrap();
        let r = &json["hosts"][0]["image_removals"];
        assert_eq!(r[0]["reference"], "aion.local/a:1");
        assert_eq!(r[0]["digest"], "sha256:one");
        assert_eq!(r[0]["aliases"][0], "sha256:cfg");
        assert_eq!(json["counts"]["image_removals"], 1);
        let none = Plan::new(vec![HostPlan {
            image_removals: vec![],
            ..p.hosts[0].clone()
        }]);
        assert!(!none.has_changes());
        assert!(
            serde_json::to_value(&none).unwrap()["hosts"][0]
                .get("image_removals")
                .is_none()
        );
    }
}
