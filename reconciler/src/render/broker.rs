//! The installation's RabbitMQ (pure): who may log in, which virtual hosts exist, and the URL
//! each pod gets.
//!
//! One broker serves the whole installation (on the master). Each AION namespace gets its own
//! virtual host (cluster mode: the namespace's name; single mode: `/`, as upstream), so queue
//! names (`<name>-NNN.in`, `aion-kanban.inbound`, …) of two namespaces never meet.
//!
//! The broker imports, at every boot, a directory of definition files (`load_definitions`
//! pointing at a directory: RabbitMQ imports its `*.json` files one by one, in name order; a
//! blank node that imports definitions creates neither the default user `guest` nor the default
//! virtual host `/`, so both are listed here when wanted):
//! * `10-vhosts.json` (ConfigMap `rabbitmq-config`, rendered): the virtual hosts;
//! * `20-user.json` (Secret `aion-broker`, generated at the first apply, never rendered): the
//!   user `aion` and its password;
//! * `30-permissions.json` (ConfigMap, rendered): the user's permissions on each virtual host
//!   (after the user exists: a permission for a missing user is refused).
//!
//! The password exists only in the Secret `aion-broker` of every AION namespace (the same value
//! in each). Pods read it into [`PASSWORD_ENV`] and the URLs rendered here say
//! `$(AION_BROKER_PASSWORD)`, which Kubernetes expands in `env` values and `args`; so no
//! rendered file, plan or revision ever holds it.

/// The broker user every aion-kanban runtime and microservice pod logs in as.
pub const USER: &str = "aion";
/// The Secret (in every AION namespace) that holds the broker password.
pub const SECRET_NAME: &str = "aion-broker";
/// The Secret's key with the password alone.
pub const SECRET_PASSWORD_KEY: &str = "password";
/// The Secret's key with the user's definitions file.
pub const SECRET_USER_FILE: &str = "20-user.json";
/// The ConfigMap's key with the virtual hosts' definitions file.
pub const VHOSTS_FILE: &str = "10-vhosts.json";
/// The Secret's key with the users of other installations' devices (`peers`), when any.
pub const SECRET_PEERS_FILE: &str = "25-peers.json";
/// The placeholder Secret's annotation listing the peer devices whose users the generated
/// data holds (comma-separated).
pub const PEERS_ANNOTATION: &str = "aion.latona.io/peers";
/// The NodePort Service other installations reach the broker through (rendered with peers).
pub const ENTRY_SERVICE: &str = "rabbitmq-entry";
/// The Secret (in every AION namespace) with the credentials other installations issued to this
/// one's devices: key = remote device, value = its URL (`aion-reconcile remote-credentials`
/// writes it; never rendered, never pruned). The runtime reads it mounted at
/// [`REMOTE_CREDENTIALS_DIR`].
pub const REMOTES_SECRET: &str = "aion-remotes";
/// Where the runtime's pod mounts [`REMOTES_SECRET`] (`--remote-credentials`).
pub const REMOTE_CREDENTIALS_DIR: &str = "/etc/aion/remotes";
/// The ConfigMap's key with the permissions' definitions file.
pub const PERMISSIONS_FILE: &str = "30-permissions.json";
/// The pod environment variable that carries the password (from the Secret); it comes first in
/// a container's `env`, so later values (and `args`) can say `$(AION_BROKER_PASSWORD)`.
pub const PASSWORD_ENV: &str = "AION_BROKER_PASSWORD";
/// Where the broker reads the definition files (a projected volume of the ConfigMap and the
/// Secret).
pub const DEFINITIONS_DIR: &str = "/etc/rabbitmq/definitions.d";
/// Extra config file, beside the image's own `conf.d/10-defaults.conf`.
pub const CONF_PATH: &str = "/etc/rabbitmq/conf.d/20-aion.conf";

/// The AMQP port of the broker's Service.
const PORT: u16 = 5672;

/// The virtual host of a namespace's pods: its own name in cluster mode, `/` in single mode
/// (one namespace, upstream's URL).
pub fn vhost(cluster: bool, namespace: &str) -> String {
    if cluster {
        namespace.to_owned()
    } else {
        "/".to_owned()
    }
}

/// `amqp://aion:$(AION_BROKER_PASSWORD)@rabbitmq.<broker_ns>.svc.cluster.local:5672/<vhost>`
/// with the virtual host percent-encoded (`/` → `%2f`). The password reference is expanded by
/// Kubernetes in the pod (the generated password is hex: nothing to encode).
pub fn amqp_url(broker_ns: &str, vhost: &str) -> String {
    format!(
        "amqp://{USER}:$({PASSWORD_ENV})@rabbitmq.{broker_ns}.svc.cluster.local:{PORT}/{}",
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

/// Virtual hosts deduplicated, in the given order.
fn unique(vhosts: &[String]) -> Vec<&str> {
    let mut seen: Vec<&str> = Vec::new();
    for v in vhosts {
        if !seen.contains(&v.as_str()) {
            seen.push(v);
        }
    }
    seen
}

/// Pretty JSON with a trailing newline, as written into the ConfigMap or the Secret.
fn file(v: serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(&v).expect("a JSON value always serializes");
    s.push('\n');
    s
}

/// `10-vhosts.json`: every virtual host.
pub fn vhosts_json(vhosts: &[String]) -> String {
    file(serde_json::json!({
        "vhosts": unique(vhosts).iter().map(|v| serde_json::json!({"name": v})).collect::<Vec<_>>(),
    }))
}

/// `30-permissions.json`: the user's full permissions (`configure`/`write`/`read` = `.*`) on
/// every virtual host; each peer's (`(device, vhosts it may reach)`) only `write` on the peer
/// exchange of those virtual hosts: it can deliver to their inbound queue and nothing else
/// (not the default exchange, so no other queue; no reading, no declaring).
pub fn permissions_json(vhosts: &[String], peers: &[(String, Vec<String>)]) -> String {
    let mut all: Vec<serde_json::Value> = unique(vhosts)
        .iter()
        .map(|v| {
            serde_json::json!({
                "user": USER,
                "vhost": v,
                "configure": ".*",
                "write": ".*",
                "read": ".*",
            })
        })
        .collect();
    let exchange = format!("^{}$", regex_escape(aion_model::peer::PEER_EXCHANGE));
    for (device, reach) in peers {
        for v in unique(reach) {
            all.push(serde_json::json!({
                "user": aion_model::peer::peer_user(device),
                "vhost": v,
                "configure": "^$",
                "write": exchange,
                "read": "^$",
            }));
        }
    }
    file(serde_json::json!({ "permissions": all }))
}

/// `s` with the regex metacharacters it may hold escaped (`.` in exchange names).
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `25-peers.json` (the Secret's): one user per peer device, `peer.<device>`, with the
/// password [`peer_password`] derives from the installation's.
pub fn peers_json(installation_password: &str, devices: &[String]) -> String {
    file(serde_json::json!({
        "users": devices.iter().map(|d| serde_json::json!({
            "name": aion_model::peer::peer_user(d),
            "password": peer_password(installation_password, d),
            "tags": [],
        })).collect::<Vec<_>>(),
    }))
}

/// A peer's password: HMAC-SHA256 of its device name under the installation's generated
/// broker password, 32 hex digits. Derived rather than stored: nothing new to keep, the same at
/// every plan, and rotating the installation's password rotates every peer's.
pub fn peer_password(installation_password: &str, device: &str) -> String {
    let message = [b"aion peer ".as_slice(), device.as_bytes()].concat();
    hex::encode(&hmac_sha256(installation_password.as_bytes(), &message)[..16])
}

/// HMAC-SHA256 (RFC 2104) over sha2, the one keyed hash this crate needs.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| k.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// `amqp://peer.<device>:<password>@{addr}:<port>/<vhost>`: what a peer device's installation
/// stores (`aion-reconcile remote-credentials`); its runtime puts the `devices` entry's `addr`
/// in place of `{addr}`.
pub fn peer_url(
    installation_password: &str,
    device: &str,
    port: u16,
    vhost: &str,
    tls: bool,
) -> String {
    format!(
        "{}://{}:{}@{{addr}}:{port}/{}",
        if tls { "amqps" } else { "amqp" },
        aion_model::peer::peer_user(device),
        peer_password(installation_password, device),
        encode_vhost(vhost)
    )
}

/// `20-user.json` (the Secret's): the user with its password. RabbitMQ hashes a `password`
/// given in definitions with its configured algorithm at import.
pub fn user_json(password: &str) -> String {
    file(serde_json::json!({
        "users": [{"name": USER, "password": password, "tags": []}],
    }))
}

/// The Secret with the entry's certificate, key and CA (from the inventory's `entryTls` files,
/// filled by `plan`; rendered as a placeholder naming the files, so no rendered file holds the key).
pub const ENTRY_TLS_SECRET: &str = "aion-entry-tls";
/// Where the broker mounts [`ENTRY_TLS_SECRET`].
pub const ENTRY_TLS_DIR: &str = "/etc/rabbitmq/entry-tls";
/// The broker's TLS listener (only the entry Service points at it).
pub const TLS_PORT: u16 = 5671;
/// The keys of [`ENTRY_TLS_SECRET`], in the order of `entryTls`' `ca`, `cert`, `key`.
pub const ENTRY_TLS_KEYS: [&str; 3] = ["ca.crt", "tls.crt", "tls.key"];

/// The config file added to the image's `conf.d`: import the definitions directory at boot;
/// with `tls`, also a TLS listener for the entry (server authentication only: peers log in
/// with their password, the CA lets them check they reached this installation).
pub fn config(tls: bool) -> String {
    let mut c = format!(
        "# Written by aion-reconcile: the user and one virtual host per AION namespace.\n\
         load_definitions = {DEFINITIONS_DIR}\n"
    );
    if tls {
        let [ca, cert, key] = ENTRY_TLS_KEYS;
        c.push_str(&format!(
            "# The entry for other installations' devices speaks TLS only.\n\
             listeners.ssl.default = {TLS_PORT}\n\
             ssl_options.cacertfile = {ENTRY_TLS_DIR}/{ca}\n\
             ssl_options.certfile = {ENTRY_TLS_DIR}/{cert}\n\
             ssl_options.keyfile = {ENTRY_TLS_DIR}/{key}\n\
             ssl_options.verify = verify_none\n\
             ssl_options.fail_if_no_peer_cert = false\n"
        ));
    }
    c
}

/// Hex SHA-256 over the config and the rendered definition files: a pod-template annotation,
/// so the broker restarts (and imports the new definitions) when a namespace is added.
pub fn config_checksum(config: &str, files: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(config.as_bytes());
    for f in files {
        h.update(b"\0");
        h.update(f.as_bytes());
    }
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

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        // Test case 2.
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block is hashed first.
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn definition_files_list_vhosts_user_and_permissions() {
        let vhosts = [
            "default".to_owned(),
            "edge-worker-1".into(),
            "default".into(),
        ];
        let v: serde_json::Value = serde_json::from_str(&vhosts_json(&vhosts)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"vhosts": [{"name": "default"}, {"name": "edge-worker-1"}]})
        );
        let p: serde_json::Value = serde_json::from_str(&permissions_json(&vhosts, &[])).unwrap();
        let perms = p["permissions"].as_array().unwrap();
        assert_eq!(perms.len(), 2);
        for (p, v) in perms.iter().zip(["default", "edge-worker-1"]) {
            assert_eq!(
                p,
                &serde_json::json!({"user": USER, "vhost": v, "configure": ".*", "write": ".*", "read": ".*"})
            );
        }
        let u: serde_json::Value = serde_json::from_str(&user_json("0123abcd")).unwrap();
        assert_eq!(
            u,
            serde_json::json!({"users": [{"name": USER, "password": "0123abcd", "tags": []}]})
        );
        // The files RabbitMQ reads in name order: vhosts, then the user, then permissions.
        let mut names = [PERMISSIONS_FILE, SECRET_USER_FILE, VHOSTS_FILE];
        names.sort();
        assert_eq!(names, [VHOSTS_FILE, SECRET_USER_FILE, PERMISSIONS_FILE]);
    }

    #[test]
    fn urls_encode_the_vhost() {
        assert_eq!(
            amqp_url("default", "/"),
            "amqp://aion:$(AION_BROKER_PASSWORD)@rabbitmq.default.svc.cluster.local:5672/%2f"
        );
        assert_eq!(
            amqp_url("prj", "edge-worker-1"),
            "amqp://aion:$(AION_BROKER_PASSWORD)@rabbitmq.prj.svc.cluster.local:5672/edge-worker-1"
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
                "m=amqp://aion:$(AION_BROKER_PASSWORD)@rabbitmq.default.svc.cluster.local:5672/default",
                "w2=amqp://aion:$(AION_BROKER_PASSWORD)@rabbitmq.default.svc.cluster.local:5672/edge-worker-2",
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
    fn config_loads_the_definitions_and_checksum_tracks_every_file() {
        assert!(config(false).contains("load_definitions = /etc/rabbitmq/definitions.d\n"));
        let a = config_checksum(&config(false), &["x", "y"]);
        assert_eq!(a, config_checksum(&config(false), &["x", "y"]));
        assert_ne!(a, config_checksum(&config(false), &["x", "z"]));
        assert_ne!(a, config_checksum(&config(false), &["xy", ""]));
    }
}
