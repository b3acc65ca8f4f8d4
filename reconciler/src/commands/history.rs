//! `aion-reconcile history`: the revisions recorded in the cluster for this inventory, newest
//! last, each with what changed against the one before it per microservice (`+ ~ -`, image
//! changes called out). A revision that cannot be read is listed with why; the others still are.

use crate::output::OutputFormat;
use std::path::PathBuf;

use serde::Serialize;

use crate::cluster::history::History;
use crate::kubeclient;
use crate::revision::{self, Header, OwnerChange, Revision, RevisionError};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Inventory file.
    #[arg(short, long)]
    pub inventory: PathBuf,
    /// Kubeconfig (default: $KUBECONFIG, else the inventory's `kubeconfig`).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// One revision as `history` shows it.
#[derive(Debug, Serialize)]
pub struct Entry {
    pub revision: u32,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inputs: Option<std::collections::BTreeMap<String, String>>,
    /// Against the revision before it (the first: everything is `+`); None when either side
    /// cannot be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<Vec<OwnerChange>>,
    /// Why it cannot be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The entries of a history (oldest first), from each Secret's header and decoded revision.
pub fn entries(revisions: &[(Header, Result<Revision, RevisionError>)]) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut before: Option<&Result<Revision, RevisionError>> = None;
    for (h, r) in revisions {
        let changes = match (before, r) {
            (None, Ok(r)) => Some(revision::changes(None, r)),
            (Some(Ok(b)), Ok(r)) => Some(revision::changes(Some(b), r)),
            _ => None,
        };
        let ok = r.as_ref().ok();
        out.push(Entry {
            revision: h.number,
            status: h.status.as_str(),
            reason: h.reason.clone(),
            time: ok.map(|r| r.time.clone()),
            tool_version: ok.map(|r| r.tool_version.clone()),
            applied_by: ok.map(|r| r.applied_by.clone()),
            description: ok.map(Revision::describe),
            inputs: ok.map(|r| r.inputs.clone()),
            changes,
            error: r.as_ref().err().map(|e| crate::output::chain(e)),
        });
        before = Some(r);
    }
    out
}

/// The text form: a line per revision, then its changes indented.
pub fn render_text(inventory: &str, entries: &[Entry]) -> String {
    if entries.is_empty() {
        return format!("inventory {inventory}: no revisions recorded yet\n");
    }
    let mut out = String::new();
    for e in entries {
        out.push_str(&format!("revision {}", e.revision));
        if let Some(t) = &e.time {
            out.push_str(&format!("  {t}"));
        }
        out.push_str(&format!("  {}", e.status));
        if let (Some(v), Some(by)) = (&e.tool_version, &e.applied_by) {
            out.push_str(&format!("  aion-reconcile {v}  by {by}"));
        }
        if let Some(d) = &e.description {
            out.push_str(&format!("  ({d})"));
        }
        out.push('\n');
        if let Some(reason) = &e.reason {
            for line in reason.lines() {
                out.push_str(&format!("    ! {line}\n"));
            }
        }
        if let Some(err) = &e.error {
            out.push_str(&format!("    cannot be read: {err}\n"));
        }
        for c in e.changes.iter().flatten() {
            out.push_str(&format!("    {} {}", c.symbol, c.owner));
            for (was, is) in &c.images {
                match (was.is_empty(), is.is_empty()) {
                    (false, false) => out.push_str(&format!("  image {was} → {is}")),
                    (true, false) => out.push_str(&format!("  image {is}")),
                    (false, true) => out.push_str(&format!("  image {was} removed")),
                    (true, true) => {}
                }
            }
            out.push('\n');
        }
        if e.changes.as_ref().is_some_and(Vec::is_empty) {
            out.push_str("    (no change in rendered objects)\n");
        }
    }
    out
}

pub fn run(args: &Args) -> anyhow::Result<u8> {
    let inv = crate::reconcile::load_inventory(&args.inventory)?;
    let kubeconfig = kubeclient::resolve_kubeconfig(args.kubeconfig.as_deref(), &inv.kubeconfig);
    let rt = kubeclient::runtime()?;
    let revisions = rt.block_on(async {
        let client = kubeclient::client_from(&kubeconfig).await?;
        anyhow::Ok(History::of(&client, &inv).decoded().await?)
    })?;
    let entries = entries(&revisions);
    match args.output {
        OutputFormat::Text => print!("{}", render_text(&inv.name, &entries)),
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "inventory": inv.name,
                "revisions": entries,
            }))?
        ),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::manifest::{Manifests, NodeManifests, Object, ObjectKey};
    use crate::revision::{Origin, Status};

    fn rev(number: u32, tag: &str, origin: Origin) -> Revision {
        let v = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "sink-001", "namespace": "default"},
            "spec": {"template": {"spec": {"containers": [
                {"name": "sink-001", "image": format!("aion.local/sink:{tag}")}]}}}});
        let m = Manifests {
            inventory: "lab".into(),
            nodes: vec![NodeManifests {
                node: "m".into(),
                namespace: "default".into(),
                objects: vec![Object {
                    key: ObjectKey::of(&v).unwrap(),
                    node: "m".into(),
                    owner: "sink".into(),
                    value: v,
                    text: String::new(),
                }],
            }],
        };
        Revision::new(
            number,
            &m,
            origin,
            BTreeMap::new(),
            &BTreeMap::new(),
            "me@here".into(),
        )
    }

    fn header(number: u32, status: Status, reason: Option<&str>) -> Header {
        Header {
            secret: format!("aion-revision.lab.v{number}"),
            number,
            status,
            reason: reason.map(str::to_owned),
        }
    }

    #[test]
    fn history_shows_failures_rollbacks_and_unreadable_revisions() {
        let revisions = vec![
            (
                header(1, Status::Applied, None),
                Ok(rev(1, "1", Origin::Apply)),
            ),
            (
                header(2, Status::Failed, Some("sink-001: ErrImagePull")),
                Ok(rev(2, "2", Origin::Apply)),
            ),
            (
                header(3, Status::Applied, None),
                Ok(rev(
                    3,
                    "1",
                    Origin::Rollback {
                        to: 1,
                        after_failed: Some(2),
                    },
                )),
            ),
            (
                header(4, Status::Applied, None),
                Err(RevisionError::Corrupt {
                    secret: "aion-revision.lab.v4".into(),
                    what: "data is not gzip".into(),
                }),
            ),
            (
                header(5, Status::Applied, None),
                Ok(rev(5, "1", Origin::Apply)),
            ),
        ];
        let e = entries(&revisions);
        let text = render_text("lab", &e);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("revision "))
            .collect();
        assert_eq!(
            lines,
            [
                "    + sink  image aion.local/sink:1",
                "    ! sink-001: ErrImagePull",
                "    ~ sink  image aion.local/sink:1 → aion.local/sink:2",
                "    ~ sink  image aion.local/sink:2 → aion.local/sink:1",
                "    cannot be read: revision Secret aion-revision.lab.v4: data is not gzip",
            ],
            "{text}"
        );
        assert!(text.contains("  failed  "), "{text}");
        assert!(
            text.contains("(rollback to 1 after 2 failed (--atomic))"),
            "{text}"
        );
        // Next to an unreadable revision, what changed is unknown (not "nothing").
        assert!(e[4].changes.is_none());
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json[1]["status"], "failed");
        assert_eq!(
            json[3]["error"],
            "revision Secret aion-revision.lab.v4: data is not gzip"
        );
        assert_eq!(
            render_text("lab", &[]),
            "inventory lab: no revisions recorded yet\n"
        );
    }
}
