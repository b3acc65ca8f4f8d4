//! The live documents of the installation's runtimes for `status`: each namespace's
//! `aion-kanban` serves `GET /api/v1/status` on its pod's address, port [`LIVE_PORT`]
//! (`docs/kanban.md#the-live-page`); `status` reads it through the apiserver's pod proxy
//! (`/api/v1/namespaces/NS/pods/POD:8089/proxy/api/v1/status`), so it needs nothing but the
//! kubeconfig it already has. The document is kept as JSON (`schemas/live-v1.schema.json`):
//! `status -o json` prints it unchanged, and the table reads the few fields it shows.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde::Serialize;
use serde_json::Value;

/// The port of the live page in the rendered runtime Deployment (`templates/core/kanban.yaml.j2`).
pub const LIVE_PORT: u16 = 8089;
/// How long one namespace's document may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One namespace's live document, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NamespaceLive {
    pub namespace: String,
    /// The runtime pod asked.
    pub pod: Option<String>,
    /// `GET /api/v1/status` as the runtime served it.
    pub status: Option<Value>,
    pub error: Option<String>,
}

/// Errors of this layer, naming the namespace and pod.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("namespace {namespace}: listing the aion-kanban pods: {source}")]
    List {
        namespace: String,
        source: kube::Error,
    },
    #[error("namespace {namespace}: no running aion-kanban pod")]
    NoPod { namespace: String },
    #[error("{namespace}/{pod}: live page through the apiserver proxy: {message}")]
    Fetch {
        namespace: String,
        pod: String,
        message: String,
    },
    #[error("{namespace}/{pod}: live page: not a v1 document: {message}")]
    Document {
        namespace: String,
        pod: String,
        message: String,
    },
}

/// The proxy path of a pod's live document.
pub fn proxy_path(namespace: &str, pod: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{pod}:{LIVE_PORT}/proxy/api/v1/status")
}

async fn fetch_one(client: &kube::Client, namespace: &str) -> Result<(String, Value), LiveError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels("run=aion-kanban"))
        .await
        .map_err(|source| LiveError::List {
            namespace: namespace.into(),
            source,
        })?;
    let pod = list
        .items
        .iter()
        .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .and_then(|p| p.metadata.name.clone())
        .ok_or_else(|| LiveError::NoPod {
            namespace: namespace.into(),
        })?;
    let fetch_err = |message: String| LiveError::Fetch {
        namespace: namespace.into(),
        pod: pod.clone(),
        message,
    };
    let req = http::Request::get(proxy_path(namespace, &pod))
        .body(Vec::new())
        .map_err(|e| fetch_err(e.to_string()))?;
    let text = tokio::time::timeout(FETCH_TIMEOUT, client.request_text(req))
        .await
        .map_err(|_| fetch_err(format!("no answer in {} s", FETCH_TIMEOUT.as_secs())))?
        .map_err(|e| fetch_err(e.to_string()))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| LiveError::Document {
        namespace: namespace.into(),
        pod: pod.clone(),
        message: e.to_string(),
    })?;
    if doc["version"] != "v1" {
        return Err(LiveError::Document {
            namespace: namespace.into(),
            pod,
            message: format!("version {}", doc["version"]),
        });
    }
    Ok((pod, doc))
}

/// Every namespace's document, concurrently; a namespace that does not answer carries its error.
pub async fn fetch(client: &kube::Client, namespaces: &[String]) -> Vec<NamespaceLive> {
    let all = namespaces.iter().map(|ns| async move {
        match fetch_one(client, ns).await {
            Ok((pod, doc)) => NamespaceLive {
                namespace: ns.clone(),
                pod: Some(pod),
                status: Some(doc),
                error: None,
            },
            Err(e) => NamespaceLive {
                namespace: ns.clone(),
                pod: match &e {
                    LiveError::Fetch { pod, .. } | LiveError::Document { pod, .. } => {
                        Some(pod.clone())
                    }
                    _ => None,
                },
                status: None,
                error: Some(e.to_string()),
            },
        }
    });
    futures::future::join_all(all).await
}

/// A rate as the table shows it.
pub fn rate(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.0}")
    } else if x >= 1.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// The live columns of one instance (state with reason, queue depth, in/s, out/s), or `None`
/// when the namespace's document does not list it.
pub fn columns(live: &[NamespaceLive], namespace: &str, name: &str) -> Option<[String; 4]> {
    let doc = live
        .iter()
        .find(|l| l.namespace == namespace)?
        .status
        .as_ref()?;
    let i = doc["instances"]
        .as_array()?
        .iter()
        .find(|i| i["name"] == name)?;
    let state = match i["reason"].as_str() {
        Some(r) => format!("{} ({r})", i["state"].as_str().unwrap_or("?")),
        None => i["state"].as_str().unwrap_or("?").to_owned(),
    };
    let depth = i["queueDepth"]
        .as_u64()
        .map_or_else(|| "?".to_owned(), |d| d.to_string());
    let r = |k: &str| i[k].as_f64().map_or_else(|| "?".to_owned(), rate);
    Some([state, depth, r("inPerSecond"), r("outPerSecond")])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn columns_of_an_instance() {
        let live = vec![
            NamespaceLive {
                namespace: "w1".into(),
                pod: Some("aion-kanban-x".into()),
                status: Some(json!({
                    "version": "v1",
                    "instances": [
                        {"name": "a-001", "state": "running", "reason": null, "queueDepth": 3,
                         "inPerSecond": 12.4, "outPerSecond": 0.5},
                        {"name": "b-001", "state": "failed", "reason": "p: CrashLoopBackOff",
                         "queueDepth": null, "inPerSecond": 1.26, "outPerSecond": 0.0},
                    ]
                })),
                error: None,
            },
            NamespaceLive {
                namespace: "w2".into(),
                pod: None,
                status: None,
                error: Some("namespace w2: no running aion-kanban pod".into()),
            },
        ];
        assert_eq!(
            columns(&live, "w1", "a-001"),
            Some(["running".into(), "3".into(), "12".into(), "0.50".into()])
        );
        assert_eq!(
            columns(&live, "w1", "b-001"),
            Some([
                "failed (p: CrashLoopBackOff)".into(),
                "?".into(),
                "1.3".into(),
                "0.00".into()
            ])
        );
        assert_eq!(columns(&live, "w1", "c-001"), None);
        assert_eq!(columns(&live, "w2", "a-001"), None);
        assert_eq!(
            proxy_path("w1", "aion-kanban-x"),
            "/api/v1/namespaces/w1/pods/aion-kanban-x:8089/proxy/api/v1/status"
        );
    }
}
