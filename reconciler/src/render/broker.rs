//! The installation's RabbitMQ (pure): who may log in, which virtual hosts exist, and the URL
//! each pod gets.
//!
//! One broker serves the whole installation (on the master). Each AION namespace gets its own
//! virtual host (cluster mode: the namespace's name; single mode: `/`, as upstream), so queue
//! names (`<name>-NNN.in`, `aion-kanban.inbound`, …) of two namespaces never meet. The user and
//! the virtual hosts come from a definitions file the broker imports at boot
//! (`load_definitions`); a blank node that imports definitions creates neither the default
//! user `guest` nor the default virtual host `/` (RabbitMQ's "Nuances of Boot-time Definition
//! Import"), so both are listed here when wanted.
//!
//! The password hash uses RabbitMQ's `rabbit_password_hashing_sha256` scheme:
//! `base64(salt ‖ sha256(salt ‖ utf8(password)))` with a 4-byte salt. The salt is derived from
//! the user and password instead of drawn at random, so a re-render gives the same bytes and
//! `diff` shows nothing.

use base64::Engine;
use sha2::{Digest, Sha256};

/// The broker user every aion-kanban runtime and microservice pod logs in as.
pub const USER: &str = "aion";
/// Its password. Fixed, like upstream's (`guest:guest` in its manifests): the broker is a
/// ClusterIP Service, reachable only from inside the cluster (README, differences).
pub const PASSWORD: &str = "aion";
/// `hashing_algorithm` of the user in the definitions file.
pub const HASHING: &str = "rabbit_password_hashing_sha256";
/// Where the broker reads the definitions (the ConfigMap's `definitions.json`).
pub const DEFINITIONS_PATH: &str = "/etc/rabbitmq/definitions.json";
/// Extra config file, beside the image's own `conf.d/10-defaults.conf`.
pub const CONF_PATH: &str = "/etc/rabbitmq/conf.d/20-aion.conf";

/// The AMQP port of the broker's Service.
const PORT: u16 = 5672;

/// RabbitMQ's salted SHA-256 password hash with the given salt.
pub fn password_hash_with_salt(password: &str, salt: [u8; 4]) -> String {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    let mut out = salt.to_vec();
    out.extend_from_slice(&h.finalize());
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// The hash with a salt derived from `user` and `password` (deterministic).
pub fn password_hash(user: &str, password: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"aion-reconcile rabbitmq salt\0");
    h.update(user.as_bytes());
    h.update(b"\0");
    h.update(password.as_bytes());
    let d = h.finalize();
    password_hash_with_salt(password, [d[0], d[1], d[2], d[3]])
}

/// The virtual host of a namespace's pods: its own name in cluster mode, `/` in single mode
/// (one namespace, upstream's URL).
pub fn vhost(cluster: bool, namespace: &str) -> String {
    if cluster {
        namespace.to_owned()
    } else {
        "/".to_owned()
    }
}

/// `amqp://user:pass@rabbitmq.<broker_ns>.svc.cluster.local:5672/<vhost>` with the virtual host
/// percent-encoded (`/` → `%2f`).
pub fn amqp_url(broker_ns: &str, vhost: &str) -> String {
    format!(
        "amqp://{USER}:{PASSWORD}@rabbitmq.{broker_ns}.svc.cluster.local:{PORT}/{}",
        encode_vhost(vhost)
    )
}

/// Percent-encode a virtual host name for the URL path (RFC 3986 unreserved characters stay).
fn encode_vhost(vhost: &str) -> String {
    let mut out = String::with_capacity(vhost.len());
    for b in vhost.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

/// The definitions file: the user, every virtual host, and the user's full permissions on each
/// (`configure`/`write`/`read` = `.*`). Virtual hosts are deduplicated, in the given order.
pub fn definitions(vhosts: &[String]) -> serde_json::Value {
    let mut seen: Vec<&str> = Vec::new();
    for v in vhosts {
        if !seen.contains(&v.as_str()) {
            seen.push(v);
        }
    }
    serde_json::json!({
        "users": [{
            "name": USER,
            "password_hash": password_hash(USER, PASSWORD),
            "hashing_algorithm": HASHING,
            "tags": [],
        }],
        "vhosts": seen.iter().map(|v| serde_json::json!({"name": v})).collect::<Vec<_>>(),
        "permissions": seen.iter().map(|v| serde_json::json!({
            "user": USER,
            "vhost": v,
            "configure": ".*",
            "write": ".*",
            "read": ".*",
        })).collect::<Vec<_>>(),
    })
}

/// `definitions.json` as written into the ConfigMap (pretty, trailing newline).
pub fn definitions_json(vhosts: &[String]) -> String {
    let mut s =
        serde_json::to_string_pretty(&definitions(vhosts)).expect("a JSON value always serializes");
    s.push('\n');
    s
}

/// The config file added to the image's `conf.d`: import the definitions at boot.
pub fn config() -> String {
    format!(
        "# Written by aion-reconcile: the user and one virtual host per AION namespace.\n\
         load_definitions = {DEFINITIONS_PATH}\n"
    )
}

/// Hex SHA-256 over the config and the definitions: a pod-template annotation, so the broker
/// restarts (and imports the new definitions) when a namespace is added.
pub fn config_checksum(config: &str, definitions: &str) -> String {
    let mut h = Sha256::new();
    h.update(config.as_bytes());
    h.update(b"\0");
    h.update(definitions.as_bytes());
    hex::encode(h.finalize())
}

/// `--device-amqp NAME=URL` values for the runtime of `own_device`: every other device of the
/// installation, `(device, vhost)` per host in inventory order, mapped to its namespace's
/// virtual host on the shared broker. A device name claimed by several other hosts is ambiguous
/// and left out (the runtime then falls back to its `--remote-amqp-template`).
pub fn device_amqp(own_device: &str, devices: &[(String, String)], broker_ns: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (device, vhost) in devices {
        if device == own_device || out.iter().any(|(d, _): &(String, String)| d == device) {
            continue;
        }
        if devices.iter().filter(|(d, _)| d == device).count() > 1 {
            continue;
        }
        out.push((device.clone(), amqp_url(broker_ns, vhost)));
    }
    out.into_iter().map(|(d, u)| format!("{d}={u}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of RabbitMQ's password guide: salt `908D C60A`, password `test12`.
    #[test]
    fn hash_matches_rabbitmq_worked_example() {
        assert_eq!(
            password_hash_with_salt("test12", [0x90, 0x8d, 0xc6, 0x0a]),
            "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR"
        );
    }

    /// Deterministic, and it verifies: salt ‖ sha256(salt ‖ password).
    #[test]
    fn hash_is_deterministic_and_verifies() {
        let a = password_hash(USER, PASSWORD);
        assert_eq!(a, password_hash(USER, PASSWORD));
        assert_ne!(a, password_hash(USER, "other"));
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&a)
            .unwrap();
        assert_eq!(raw.len(), 4 + 32);
        let mut h = Sha256::new();
        h.update(&raw[..4]);
        h.update(PASSWORD.as_bytes());
        assert_eq!(&raw[4..], h.finalize().as_slice());
    }

    #[test]
    fn definitions_list_user_vhosts_and_permissions() {
        let d = definitions(&["default".into(), "edge-worker-1".into(), "default".into()]);
        assert_eq!(d["users"][0]["name"], USER);
        assert_eq!(d["users"][0]["hashing_algorithm"], HASHING);
        assert_eq!(d["users"][0]["tags"], serde_json::json!([]));
        assert_eq!(
            d["vhosts"],
            serde_json::json!([{"name": "default"}, {"name": "edge-worker-1"}])
        );
        let perms = d["permissions"].as_array().unwrap();
        assert_eq!(perms.len(), 2);
        for (p, v) in perms.iter().zip(["default", "edge-worker-1"]) {
            assert_eq!(
                p,
                &serde_json::json!({"user": USER, "vhost": v, "configure": ".*", "write": ".*", "read": ".*"})
            );
        }
        assert_eq!(
            definitions_json(&["/".into()]),
            definitions_json(&["/".into()])
        );
    }

    #[test]
    fn urls_encode_the_vhost() {
        assert_eq!(
            amqp_url("default", "/"),
            "amqp://aion:aion@rabbitmq.default.svc.cluster.local:5672/%2f"
        );
        assert_eq!(
            amqp_url("prj", "edge-worker-1"),
            "amqp://aion:aion@rabbitmq.prj.svc.cluster.local:5672/edge-worker-1"
        );
        assert_eq!(encode_vhost("a b/c"), "a%20b%2fc");
        assert_eq!(vhost(false, "prj"), "/");
        assert_eq!(vhost(true, "prj"), "prj");
    }

    #[test]
    fn device_amqp_maps_every_other_device_once() {
        let devices = vec![
            ("m".to_owned(), "default".to_owned()),
            ("w1".to_owned(), "edge-worker-1".to_owned()),
            ("w2".to_owned(), "edge-worker-2".to_owned()),
        ];
        assert_eq!(
            device_amqp("w1", &devices, "default"),
            [
                "m=amqp://aion:aion@rabbitmq.default.svc.cluster.local:5672/default",
                "w2=amqp://aion:aion@rabbitmq.default.svc.cluster.local:5672/edge-worker-2",
            ]
        );
        // A shared services.yml with one deviceName: every host is "the same" device, no map.
        let shared = vec![
            ("d".to_owned(), "default".to_owned()),
            ("d".to_owned(), "w1".to_owned()),
        ];
        assert!(device_amqp("d", &shared, "default").is_empty());
        // Two other hosts claiming one name: ambiguous, left out.
        let ambiguous = vec![
            ("me".to_owned(), "default".to_owned()),
            ("x".to_owned(), "w1".to_owned()),
            ("x".to_owned(), "w2".to_owned()),
        ];
        assert!(device_amqp("me", &ambiguous, "default").is_empty());
    }

    #[test]
    fn config_loads_the_definitions_and_checksum_tracks_both() {
        assert!(config().contains("load_definitions = /etc/rabbitmq/definitions.json\n"));
        let a = config_checksum(&config(), &definitions_json(&["a".into()]));
        assert_eq!(
            a,
            config_checksum(&config(), &definitions_json(&["a".into()]))
        );
        assert_ne!(
            a,
            config_checksum(&config(), &definitions_json(&["a".into(), "b".into()]))
        );
    }
}
