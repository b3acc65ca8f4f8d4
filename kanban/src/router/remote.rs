//! Which broker a kanban for another device goes to, as whom, and through which exchange (pure
//! apart from reading one credentials file).
//!
//! * A device of **this installation** (`--device-amqp NAME=URL`, passed by the reconciler): its
//!   virtual host on the installation's own broker, as the installation's user, through the
//!   default exchange (as before).
//! * A device of **another installation**: the credentials that installation issued for this
//!   device (`aion-reconcile peer-url` on its side), one file per remote device in
//!   `--remote-credentials DIR` (`DIR/<device>`, a URL whose `{addr}` becomes the `devices`
//!   entry's `addr`; in the cluster a Secret mounted there, so a rotated credential is used at
//!   the next connection without a restart). It logs in as `peer.<this device>` and publishes
//!   through [`PEER_EXCHANGE`] with its `user_id` set, the only thing that user may do there.
//! * Otherwise `--remote-amqp-template` when one is given (hand-run setups); with none the
//!   kanban is dead-lettered saying so. There is no built-in `guest` default any more.

use std::path::{Path, PathBuf};

use super::options::RouterOptions;
use crate::amqp::Destination;
use crate::topology::{INBOUND_QUEUE, peer_user};

/// How to reach one remote device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RemoteBroker {
    pub url: String,
    pub dest: Destination,
    /// Declare the inbound queues on connecting (the installation's own user may; a peer user
    /// may not, and the receiving runtime declared them).
    pub declare: bool,
    /// The CA (PEM) that signed the other installation's entry certificate, for `amqps://`.
    pub ca: Option<String>,
}

/// Why no broker can be used for a remote device (the kanban is dead-lettered with this).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RemoteError {
    #[error(
        "no broker for device `{device}`: not in --device-amqp, no credentials file {}, and no --remote-amqp-template",
        path.as_ref().map_or_else(|| "(no --remote-credentials)".to_string(), |p| p.display().to_string())
    )]
    NoBroker {
        device: String,
        path: Option<PathBuf>,
    },
    #[error("credentials for device `{device}` ({}): {reason}", path.display())]
    BadCredentials {
        device: String,
        path: PathBuf,
        reason: String,
    },
}

/// The broker of `device` (whose `devices` entry says `addr`), seen from `own_device`.
pub(super) fn resolve(
    opts: &RouterOptions,
    own_device: &str,
    device: &str,
    addr: &str,
) -> Result<RemoteBroker, RemoteError> {
    if let Some(url) = opts.device_amqp.get(device) {
        return Ok(RemoteBroker {
            url: url.clone(),
            dest: Destination::queue(INBOUND_QUEUE),
            declare: true,
            ca: None,
        });
    }
    let path = opts
        .remote_credentials
        .as_ref()
        .map(|dir| dir.join(device))
        .filter(|p| valid_file_name(device) && p.is_file());
    if let Some(path) = path {
        return peer_broker(&path, own_device, device, addr);
    }
    match &opts.remote_template {
        Some(t) => Ok(RemoteBroker {
            url: t.replace("{addr}", addr),
            dest: Destination::queue(INBOUND_QUEUE),
            declare: true,
            ca: None,
        }),
        None => Err(RemoteError::NoBroker {
            device: device.into(),
            path: opts.remote_credentials.as_ref().map(|d| d.join(device)),
        }),
    }
}

/// A device name usable as a file name in the credentials directory (a Secret's key).
fn valid_file_name(device: &str) -> bool {
    !device.is_empty()
        && device != "."
        && device != ".."
        && device
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// The credentials file of `device`: the URL (`amqp[s]://peer.<own>:<password>@{addr}:<port>/<vhost>`)
/// on its first line, then, for an `amqps://` entry, the CA certificate (PEM) that signed the
/// other installation's entry certificate (as `aion-reconcile peer-url` prints them).
fn peer_broker(
    path: &Path,
    own_device: &str,
    device: &str,
    addr: &str,
) -> Result<RemoteBroker, RemoteError> {
    let bad = |reason: String| RemoteError::BadCredentials {
        device: device.into(),
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let text = text.trim();
    let (template, rest) = text.split_once('\n').unwrap_or((text, ""));
    let template = template.trim();
    let ca = rest.trim();
    let ca = if ca.is_empty() {
        None
    } else if ca.starts_with("-----BEGIN CERTIFICATE-----") {
        Some(format!("{ca}\n"))
    } else {
        return Err(bad(
            "after the URL line only a PEM CA certificate may follow".into(),
        ));
    };
    if ca.is_some() && !template.starts_with("amqps://") {
        return Err(bad(
            "a CA certificate is given but the URL is not amqps://".into()
        ));
    }
    if !(template.starts_with("amqp://") || template.starts_with("amqps://")) {
        return Err(bad("expected an amqp:// or amqps:// URL".into()));
    }
    let user = url_user(template).ok_or_else(|| bad("the URL names no user".into()))?;
    let expected = peer_user(own_device);
    if user != expected {
        return Err(bad(format!(
            "issued for user `{user}`, but this device logs in as `{expected}` (credentials are issued per sending device)"
        )));
    }
    Ok(RemoteBroker {
        url: template.replace("{addr}", addr),
        dest: Destination::peer_inbound(&user),
        declare: false,
        ca,
    })
}

/// The user of `scheme://user:password@host…`, percent-decoded.
fn url_user(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let (userinfo, _) = rest.split_once('@')?;
    let user = userinfo.split(':').next()?;
    let decoded = percent_decode(user)?;
    (!decoded.is_empty()).then_some(decoded)
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::options::ServicesSource;
    use crate::topology::PEER_EXCHANGE;

    fn opts(dir: Option<&Path>, template: Option<&str>) -> RouterOptions {
        let mut o = RouterOptions::new(
            ServicesSource::Value(Default::default()),
            "amqp://127.0.0.1",
        );
        o.device_amqp.insert(
            "same-inst".into(),
            "amqp://aion:pw@rabbitmq/same-inst".into(),
        );
        o.remote_credentials = dir.map(Path::to_path_buf);
        o.remote_template = template.map(str::to_string);
        o
    }

    #[test]
    fn a_device_of_this_installation_uses_its_url_and_the_default_exchange() {
        let r = resolve(&opts(None, None), "me", "same-inst", "10.0.0.9").unwrap();
        assert_eq!(r.url, "amqp://aion:pw@rabbitmq/same-inst");
        assert_eq!(r.dest, Destination::queue(INBOUND_QUEUE));
        assert!(r.declare);
    }

    #[test]
    fn a_peer_logs_in_with_its_issued_credentials_through_the_peer_exchange() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("factory-b"),
            "amqp://peer.me:s3cret@{addr}:32094/line-2\n",
        )
        .unwrap();
        let r = resolve(
            &opts(Some(dir.path()), None),
            "me",
            "factory-b",
            "192.0.2.7",
        )
        .unwrap();
        assert_eq!(r.url, "amqp://peer.me:s3cret@192.0.2.7:32094/line-2");
        assert_eq!(r.dest.exchange, PEER_EXCHANGE);
        assert_eq!(r.dest.routing_key, INBOUND_QUEUE);
        assert_eq!(r.dest.user_id.as_deref(), Some("peer.me"));
        assert!(!r.declare, "a peer user may not declare");
    }

    #[test]
    fn an_amqps_entry_comes_with_the_ca_that_signed_it() {
        let dir = tempfile::tempdir().unwrap();
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
        std::fs::write(
            dir.path().join("b"),
            format!("amqps://peer.me:pw@{{addr}}:32094/%2f\n{pem}\n"),
        )
        .unwrap();
        let r = resolve(&opts(Some(dir.path()), None), "me", "b", "10.0.0.7").unwrap();
        assert_eq!(r.url, "amqps://peer.me:pw@10.0.0.7:32094/%2f");
        assert_eq!(r.ca.as_deref(), Some(format!("{pem}\n").as_str()));
        std::fs::write(
            dir.path().join("b"),
            format!("amqp://peer.me:pw@{{addr}}/\n{pem}"),
        )
        .unwrap();
        let e = resolve(&opts(Some(dir.path()), None), "me", "b", "h").unwrap_err();
        assert!(e.to_string().contains("not amqps://"), "{e}");
        std::fs::write(dir.path().join("b"), "amqps://peer.me:pw@{addr}/\njunk").unwrap();
        let e = resolve(&opts(Some(dir.path()), None), "me", "b", "h").unwrap_err();
        assert!(e.to_string().contains("PEM"), "{e}");
    }

    #[test]
    fn credentials_issued_for_another_device_are_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b"), "amqp://peer.other:x@{addr}/%2f").unwrap();
        let e = resolve(&opts(Some(dir.path()), None), "me", "b", "h").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("peer.other") && text.contains("peer.me"),
            "{text}"
        );
        std::fs::write(dir.path().join("b"), "http://peer.me:x@{addr}/").unwrap();
        let e = resolve(&opts(Some(dir.path()), None), "me", "b", "h").unwrap_err();
        assert!(e.to_string().contains("amqp://"), "{e}");
    }

    #[test]
    fn without_credentials_or_template_there_is_no_broker_and_no_guest_default() {
        let dir = tempfile::tempdir().unwrap();
        let e = resolve(&opts(Some(dir.path()), None), "me", "elsewhere", "h").unwrap_err();
        assert!(matches!(e, RemoteError::NoBroker { .. }), "{e}");
        assert!(e.to_string().contains("elsewhere"), "{e}");
        // A name that is not a plain file name never reads outside the directory.
        let e = resolve(&opts(Some(dir.path()), None), "me", "../etc", "h").unwrap_err();
        assert!(matches!(e, RemoteError::NoBroker { .. }), "{e}");
        let r = resolve(
            &opts(None, Some("amqp://u:p@{addr}:5672/%2f")),
            "me",
            "elsewhere",
            "10.1.1.1",
        )
        .unwrap();
        assert_eq!(r.url, "amqp://u:p@10.1.1.1:5672/%2f");
        assert_eq!(r.dest, Destination::queue(INBOUND_QUEUE));
    }

    #[test]
    fn url_user_is_percent_decoded() {
        assert_eq!(
            url_user("amqp://peer.a%2Db:x@h/").as_deref(),
            Some("peer.a-b")
        );
        assert_eq!(url_user("amqp://h/"), None);
    }
}
