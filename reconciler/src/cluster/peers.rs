//! Credentials between installations (#18): the URL this installation issues to a peer device
//! (`peer-url`), and storing the URL another installation issued to one of this installation's
//! devices (`remote-credentials`). Checks are pure ([`issue`], [`check_issued_url`]); the two
//! async functions only read or write one Secret.
//!
//! Nothing is written to disk: `peer-url` prints to stdout (the operator hands it over, e.g.
//! piped into the other side's `remote-credentials`), which reads stdin and writes the Secret
//! [`broker::REMOTES_SECRET`] of the sending device's namespace, key = the remote device.

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

use aion_model::inventory::{Inventory, Mode, Role};

use super::generated;
use crate::render::broker;

/// Why a peer URL cannot be issued or stored (each names the device, host or Secret).
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(
        "`{device}` is not among the inventory's peers ({}); add `peers: [{{device: {device}}}]` and apply first",
        if known.is_empty() { "there are none".to_string() } else { known.join(", ") }
    )]
    NotAPeer { device: String, known: Vec<String> },
    #[error("peer `{device}` may not send to host `{host}` (its `to:` lists {})", to.join(", "))]
    NotReachable {
        device: String,
        host: String,
        to: Vec<String>,
    },
    #[error("`{0}` is not a host of this inventory")]
    UnknownHost(String),
    #[error("peer `{device}` may send to several hosts ({}): say which with --to", hosts.join(", "))]
    WhichHost { device: String, hosts: Vec<String> },
    #[error("the inventory has no master")]
    NoMaster,
    #[error(
        "Secret {namespace}/{} holds no broker password yet: run `aion-reconcile apply` first",
        broker::SECRET_NAME
    )]
    NoPassword { namespace: String },
    #[error("entryTls ca {}: {reason}", path.display())]
    Ca {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("the URL on stdin {0}")]
    BadUrl(&'static str),
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
}

/// What [`issue`] decided: where the peer's kanbans land.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub device: String,
    /// The host it may send to, and that host's virtual host on the broker.
    pub host: String,
    pub vhost: String,
    /// The namespace of the broker (and of its Secret).
    pub broker_namespace: String,
    pub port: u16,
    /// The CA of a TLS entry (`entryTls.ca`), handed over with the URL.
    pub ca: Option<std::path::PathBuf>,
}

/// Check that `device` is a peer allowed to reach `to` (or its only reachable host).
pub fn issue(inv: &Inventory, device: &str, to: Option<&str>) -> Result<Issue, PeerError> {
    let peer = inv
        .peers
        .iter()
        .find(|p| p.device == device)
        .ok_or_else(|| PeerError::NotAPeer {
            device: device.into(),
            known: inv.peers.iter().map(|p| p.device.clone()).collect(),
        })?;
    let reachable: Vec<&str> = inv
        .hosts
        .iter()
        .filter(|h| peer.may_reach(&h.name))
        .map(|h| h.name.as_str())
        .collect();
    let host = match to {
        Some(h) => {
            if inv.host(h).is_none() {
                return Err(PeerError::UnknownHost(h.into()));
            }
            if !peer.may_reach(h) {
                return Err(PeerError::NotReachable {
                    device: device.into(),
                    host: h.into(),
                    to: peer.to.clone(),
                });
            }
            h.to_string()
        }
        None => match reachable.as_slice() {
            [one] => one.to_string(),
            _ => {
                return Err(PeerError::WhichHost {
                    device: device.into(),
                    hosts: reachable.iter().map(|h| h.to_string()).collect(),
                });
            }
        },
    };
    let master = inv
        .hosts
        .iter()
        .find(|h| h.role == Role::Master)
        .ok_or(PeerError::NoMaster)?;
    let namespace = &inv.host(&host).expect("checked above").vars.namespace;
    Ok(Issue {
        device: device.into(),
        vhost: broker::vhost(inv.mode == Mode::Cluster, namespace),
        host,
        broker_namespace: master.vars.namespace.clone(),
        port: inv.entry_port,
        ca: inv.entry_tls.as_ref().map(|t| t.ca.clone()),
    })
}

/// The URL for `issue`, with the installation's password read from the broker's Secret.
pub async fn issued_url(client: &kube::Client, issue: &Issue) -> Result<String, PeerError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &issue.broker_namespace);
    let secret = api
        .get_opt(broker::SECRET_NAME)
        .await
        .map_err(|source| PeerError::Kube {
            what: format!(
                "reading Secret {}/{}",
                issue.broker_namespace,
                broker::SECRET_NAME
            ),
            source,
        })?;
    let password = secret
        .and_then(|s| serde_json::to_value(s).ok())
        .and_then(|v| generated::password_of_secret(&v))
        .ok_or_else(|| PeerError::NoPassword {
            namespace: issue.broker_namespace.clone(),
        })?;
    let url = broker::peer_url(
        &password,
        &issue.device,
        issue.port,
        &issue.vhost,
        issue.ca.is_some(),
    );
    match &issue.ca {
        None => Ok(url),
        Some(path) => {
            let pem = std::fs::read_to_string(path).map_err(|e| PeerError::Ca {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            Ok(format!("{url}\n{}", pem.trim()))
        }
    }
}

/// What another installation issued: a URL line (amqp(s), a `peer.` user, `{addr}`), then for
/// an `amqps://` entry the CA certificate (PEM). Returned trimmed, as stored.
pub fn check_issued_url(text: &str) -> Result<String, PeerError> {
    let text = text.trim();
    let (url, ca) = text.split_once('\n').unwrap_or((text, ""));
    let (url, ca) = (url.trim(), ca.trim());
    if !ca.is_empty() {
        if !ca.starts_with("-----BEGIN CERTIFICATE-----") {
            return Err(PeerError::BadUrl(
                "must be one line, optionally followed by a PEM CA certificate",
            ));
        }
        if !url.starts_with("amqps://") {
            return Err(PeerError::BadUrl(
                "comes with a CA certificate but is not amqps://",
            ));
        }
    }
    if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
        return Err(PeerError::BadUrl("is not an amqp:// or amqps:// URL"));
    }
    let userinfo = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .map(|(u, _)| u)
        .ok_or(PeerError::BadUrl("names no user"))?;
    let user = userinfo.split(':').next().unwrap_or_default();
    if aion_model::peer::peer_device(user).is_none() {
        return Err(PeerError::BadUrl(
            "is not a peer's (its user is not `peer.<device>`; was it made by `aion-reconcile peer-url`?)",
        ));
    }
    if !url.contains("{addr}") {
        return Err(PeerError::BadUrl(
            "has no {addr} (where the devices entry's address goes)",
        ));
    }
    Ok(if ca.is_empty() {
        url.to_string()
    } else {
        format!("{url}\n{ca}\n")
    })
}

/// Store `url` for `remote_device` in the Secret [`broker::REMOTES_SECRET`] of `namespace`
/// (created when missing; other devices' entries kept). Not labelled as aion-reconcile's:
/// `plan` never shows it and `apply` never prunes it.
pub async fn store_remote(
    client: &kube::Client,
    namespace: &str,
    remote_device: &str,
    url: &str,
) -> Result<(), PeerError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let what = |verb: &str| format!("{verb} Secret {namespace}/{}", broker::REMOTES_SECRET);
    let value = base64::engine::general_purpose::STANDARD.encode(url);
    let exists = api
        .get_opt(broker::REMOTES_SECRET)
        .await
        .map_err(|source| PeerError::Kube {
            what: what("reading"),
            source,
        })?
        .is_some();
    if exists {
        let patch = serde_json::json!({ "data": { remote_device: value } });
        api.patch(
            broker::REMOTES_SECRET,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|source| PeerError::Kube {
            what: what("updating"),
            source,
        })?;
    } else {
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": broker::REMOTES_SECRET, "namespace": namespace},
            "type": "Opaque",
            "data": { remote_device: value },
        }))
        .expect("a valid Secret");
        api.create(&PostParams::default(), &secret)
            .await
            .map_err(|source| PeerError::Kube {
                what: what("creating"),
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(text: &str) -> Inventory {
        aion_model::inventory::load_str(text, std::path::Path::new("inv.yml"))
            .unwrap()
            .value
    }

    const THREE: &str = "name: f\nmode: cluster\npeers:\n  - device: cam\n    to: [w2]\n  - device: hq\nentryPort: 31000\nhosts:\n  - {name: m, address: 10.0.0.1, role: master}\n  - {name: w1, address: 10.0.0.2, role: worker}\n  - {name: w2, address: 10.0.0.3, role: worker}\n";

    #[test]
    fn a_peer_is_issued_the_vhost_of_the_host_it_may_reach() {
        let i = inv(THREE);
        let got = issue(&i, "cam", None).unwrap();
        assert_eq!(
            got,
            Issue {
                device: "cam".into(),
                host: "w2".into(),
                vhost: "w2".into(),
                broker_namespace: "default".into(),
                port: 31000,
                ca: None,
            }
        );
        assert_eq!(issue(&i, "hq", Some("m")).unwrap().vhost, "default");
        let e = issue(&i, "hq", None).unwrap_err().to_string();
        assert!(e.contains("m, w1, w2") && e.contains("--to"), "{e}");
        let e = issue(&i, "cam", Some("w1")).unwrap_err().to_string();
        assert!(e.contains("may not send to host `w1`"), "{e}");
        let e = issue(&i, "nobody", None).unwrap_err().to_string();
        assert!(e.contains("cam, hq"), "{e}");
        let e = issue(&i, "cam", Some("w9")).unwrap_err().to_string();
        assert!(e.contains("`w9` is not a host"), "{e}");
    }

    #[test]
    fn an_amqps_url_is_stored_with_its_ca() {
        let pem = "-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----";
        assert_eq!(
            check_issued_url(&format!(
                "amqps://peer.cam:abc@{{addr}}:32094/w2\n{pem}\n\n"
            ))
            .unwrap(),
            format!("amqps://peer.cam:abc@{{addr}}:32094/w2\n{pem}\n")
        );
    }

    #[test]
    fn only_a_one_line_peer_url_with_addr_is_stored() {
        assert_eq!(
            check_issued_url("amqp://peer.cam:abc@{addr}:32094/w2\n").unwrap(),
            "amqp://peer.cam:abc@{addr}:32094/w2"
        );
        for (bad, says) in [
            ("http://peer.cam:x@{addr}/", "amqp://"),
            ("amqp://aion:x@{addr}/", "peer.<device>"),
            ("amqp://peer.cam:x@10.0.0.1/", "{addr}"),
            ("amqp://peer.cam:x@{addr}/\namqp://x", "one line"),
            (
                "amqp://peer.cam:x@{addr}/\n-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----",
                "not amqps://",
            ),
            ("amqp://{addr}/", "no user"),
        ] {
            let e = check_issued_url(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(
                !e.contains(":x@"),
                "the URL's password is not repeated: {e}"
            );
        }
    }
}
