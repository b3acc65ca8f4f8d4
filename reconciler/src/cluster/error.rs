//! The cluster layer's error, and reading the API server's status out of a kube error.

use crate::manifest::ObjectKey;

/// Errors of the cluster layer; each names the object or inventory concerned.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{object}: {source}")]
    Api {
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("{object}: kind {kind} is not one aion-reconcile manages")]
    UnsupportedKind { object: String, kind: String },
    #[error("the API server rejected {count} object(s); nothing was applied:\n{list}")]
    Invalid { count: usize, list: String },
    #[error(
        "{count} object(s) have fields owned by another field manager; nothing was applied \
         (re-run with --force-conflicts to take ownership):\n{list}"
    )]
    Conflicts { count: usize, list: String },
    #[error("timed out after {secs}s waiting for {count} object(s):\n{list}")]
    NotReady {
        secs: u64,
        count: usize,
        list: String,
    },
    #[error("{count} object(s) failed:\n{list}")]
    Failed { count: usize, list: String },
    #[error("cannot generate the {0}; nothing was applied")]
    Generate(String),
    #[error("no kubeconfig at {} yet", .0.display())]
    NoKubeconfig(std::path::PathBuf),
    #[error(transparent)]
    Client(#[from] crate::kubeclient::KubeClientError),
    #[error("unknown template {0}")]
    UnknownTemplate(String),
    #[error("node {node} is not registered after {secs} s")]
    NodeNotRegistered { node: String, secs: u64 },
    #[error("node {node} not Ready after {secs} s")]
    NodeNotReady { node: String, secs: u64 },
}

pub(super) fn api_err(key: &ObjectKey, source: kube::Error) -> ClusterError {
    ClusterError::Api {
        object: key.to_string(),
        source,
    }
}

pub(super) fn status_of(e: &kube::Error) -> Option<(u16, &str, &str)> {
    match e {
        kube::Error::Api(s) => Some((s.code, s.reason.as_str(), s.message.as_str())),
        _ => None,
    }
}
