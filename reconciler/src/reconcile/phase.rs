//! Why a part of `apply` after the hosts (or `rollback`'s wait) did not succeed: a typed error
//! per way it can end, each with the whole cause chain already said once.

/// Why a phase after the hosts did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhaseError {
    /// Not run: the per-node manifests pin pods to hosts that did not converge.
    #[error("skipped: not every host converged ({})", .hosts.join(", "))]
    HostsNotConverged { hosts: Vec<String> },
    /// The master's steps ended without fetching its admin kubeconfig.
    #[error("no kubeconfig after the master steps")]
    NoKubeconfig,
    /// Planning or applying the cluster part failed (loading, the API server, recording the
    /// revision); nothing was rolled back.
    #[error("{0}")]
    Cluster(String),
    /// `--atomic`: what changed did not become ready, and what the rollback did.
    #[error("{0}")]
    RolledBack(String),
    /// `--wait`: what is not ready after the timeout.
    #[error("{0}")]
    NotReady(String),
    /// Old image versions kept: why (the new pods are not ready, pods still terminating).
    #[error("old image versions kept: {0}")]
    OldImagesKept(String),
}

impl PhaseError {
    /// A stable name for `-o json`.
    pub fn kind(&self) -> &'static str {
        match self {
            PhaseError::HostsNotConverged { .. } => "hosts-not-converged",
            PhaseError::NoKubeconfig => "no-kubeconfig",
            PhaseError::Cluster(_) => "cluster",
            PhaseError::RolledBack(_) => "rolled-back",
            PhaseError::NotReady(_) => "not-ready",
            PhaseError::OldImagesKept(_) => "old-images-kept",
        }
    }
}

/// A phase's summary line, or why it did not succeed.
pub type PhaseResult = Result<String, PhaseError>;

/// The JSON form of a phase's result: `{"ok": summary}` or `{"error": kind, "message": …}`.
pub fn phase_json(r: &PhaseResult) -> serde_json::Value {
    match r {
        Ok(s) => serde_json::json!({ "ok": s }),
        Err(e) => serde_json::json!({ "error": e.kind(), "message": e.to_string() }),
    }
}

/// `serialize_with` for an optional phase result (as [`phase_json`]; `null` when absent).
pub fn serialize_optional<S: serde::Serializer>(
    r: &Option<PhaseResult>,
    s: S,
) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&r.as_ref().map(phase_json), s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_names_the_kind_and_says_the_message() {
        assert_eq!(
            phase_json(&Ok("cluster: no changes".into())),
            serde_json::json!({"ok": "cluster: no changes"})
        );
        let skipped = PhaseError::HostsNotConverged {
            hosts: vec!["w1".into(), "w2".into()],
        };
        assert_eq!(
            phase_json(&Err(skipped)),
            serde_json::json!({
                "error": "hosts-not-converged",
                "message": "skipped: not every host converged (w1, w2)"
            })
        );
    }
}
