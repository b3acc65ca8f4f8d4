//! Values the cluster makes up once and then keeps (pure, except [`fresh_password`]).
//!
//! A rendered object marked `aion.latona.io/generated: <generator>` is a placeholder without
//! its data: the broker's Secret `aion-broker` in every AION namespace
//! ([`crate::render::broker`]). Planning fills it from the live value (so a second `plan` shows
//! it unchanged, and a namespace added later gets the same password); only when no namespace
//! has one yet does `apply` generate a fresh password, once, for all of them. Its text in a diff
//! is masked ([`mask`]), so neither `plan`, `diff` nor a revision ever shows it.

use base64::Engine;
use serde_json::{Map, Value};

use crate::render::broker;

/// The annotation that marks a placeholder and names its generator.
pub const ANNOTATION: &str = "aion.latona.io/generated";
/// The generator of the broker's Secret.
pub const BROKER_CREDENTIALS: &str = "broker-credentials";

/// The generator of the entry's TLS Secret: its data are the files its placeholder names.
pub const ENTRY_TLS: &str = "entry-tls";
/// The placeholder's annotation naming the files (`{key: path}` JSON).
pub const FILES_ANNOTATION: &str = "aion.latona.io/files";

/// `desired` with the files its placeholder names read into its data (objects of other
/// generators are returned as they are). Read at every plan, so a renewed certificate is
/// planned as a change (masked, like every Secret).
///
/// # Errors
/// A file that cannot be read, naming it.
pub fn with_files(desired: &Value) -> Result<Value, String> {
    if generator(desired) != Some(ENTRY_TLS) {
        return Ok(desired.clone());
    }
    let files: std::collections::BTreeMap<String, String> = desired
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(FILES_ANNOTATION))
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    let mut data = Map::new();
    for (key, path) in files {
        let bytes = std::fs::read(&path).map_err(|e| format!("entryTls file {path}: {e}"))?;
        data.insert(
            key,
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
        );
    }
    let mut out = desired.clone();
    if let Some(o) = out.as_object_mut() {
        o.insert("data".to_owned(), Value::Object(data));
    }
    Ok(out)
}

/// The generator a rendered or live object names, if any.
pub fn generator(v: &Value) -> Option<&str> {
    v.pointer("/metadata/annotations")
        .and_then(|a| a.get(ANNOTATION))
        .and_then(Value::as_str)
}

fn is_broker_secret(v: &Value) -> bool {
    v.get("kind").and_then(Value::as_str) == Some("Secret")
        && generator(v) == Some(BROKER_CREDENTIALS)
}

/// The password a live broker Secret holds (`data.password`, base64), if it is one.
fn password_of(live: &Value) -> Option<String> {
    if !is_broker_secret(live) {
        return None;
    }
    let b64 = live
        .pointer(&format!("/data/{}", broker::SECRET_PASSWORD_KEY))?
        .as_str()?;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(raw).ok().filter(|p| !p.is_empty())
}

/// The installation's password as the cluster holds it: the broker Secret of `broker_ns` (the
/// one the broker imports at boot) when it has one, else any other namespace's.
pub fn live_password<'a>(
    live: impl IntoIterator<Item = &'a Value>,
    broker_ns: Option<&str>,
) -> Option<String> {
    let mut found: Option<String> = None;
    for v in live {
        let Some(p) = password_of(v) else { continue };
        let ns = v.pointer("/metadata/namespace").and_then(Value::as_str);
        if broker_ns.is_some() && ns == broker_ns {
            return Some(p);
        }
        found.get_or_insert(p);
    }
    found
}

/// Whether `desired` is a placeholder still waiting for its data.
pub fn needs_data(desired: &Value) -> bool {
    is_broker_secret(desired) && desired.get("data").is_none()
}

/// `desired` with its generated data for `password` (objects that are not placeholders are
/// returned as they are): the password, and the broker's user definitions.
pub fn with_password(desired: &Value, password: &str) -> Value {
    let mut out = desired.clone();
    if !is_broker_secret(desired) {
        return out;
    }
    let b64 = |s: &str| Value::String(base64::engine::general_purpose::STANDARD.encode(s));
    let mut data = Map::new();
    data.insert(broker::SECRET_PASSWORD_KEY.to_owned(), b64(password));
    data.insert(
        broker::SECRET_USER_FILE.to_owned(),
        b64(&broker::user_json(password)),
    );
    // Users of other installations' devices, their passwords derived from this one.
    let peers = peers_of(desired);
    if !peers.is_empty() {
        data.insert(
            broker::SECRET_PEERS_FILE.to_owned(),
            b64(&broker::peers_json(password, &peers)),
        );
    }
    if let Some(o) = out.as_object_mut() {
        o.insert("data".to_owned(), Value::Object(data));
    }
    out
}

/// The peer devices a broker placeholder lists ([`broker::PEERS_ANNOTATION`]).
fn peers_of(v: &Value) -> Vec<String> {
    v.pointer("/metadata/annotations")
        .and_then(|a| a.get(broker::PEERS_ANNOTATION))
        .and_then(Value::as_str)
        .map(|s| {
            s.split(',')
                .filter(|d| !d.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The installation's broker password from a live broker Secret (for `peer-url`).
pub fn password_of_secret(live: &Value) -> Option<String> {
    password_of(live)
}

/// A new password: 128 random bits from the kernel, as 32 hex digits (nothing to escape in a
/// URL or a definitions file).
///
/// # Errors
/// When `/dev/urandom` cannot be read.
pub fn fresh_password() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// A Secret as shown in a diff: every value replaced by its length and a short fingerprint, so
/// a change is visible and the value is not.
pub fn mask(v: &Value) -> Value {
    let mut out = v.clone();
    if out.get("kind").and_then(Value::as_str) != Some("Secret") {
        return out;
    }
    for field in ["data", "stringData"] {
        if let Some(map) = out.get_mut(field).and_then(Value::as_object_mut) {
            for value in map.values_mut() {
                let text = value.as_str().unwrap_or_default();
                let digest = {
                    use sha2::{Digest, Sha256};
                    hex::encode(Sha256::digest(text.as_bytes()))
                };
                *value = Value::String(format!(
                    "(hidden: {} characters, sha256 {}…)",
                    text.len(),
                    &digest[..8]
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn placeholder(ns: &str) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "aion-broker", "namespace": ns,
                         "annotations": {ANNOTATION: BROKER_CREDENTIALS}},
            "type": "Opaque",
        })
    }

    #[test]
    fn a_placeholder_gets_the_password_and_the_user_file() {
        let p = placeholder("default");
        assert!(needs_data(&p));
        let filled = with_password(&p, "00ff");
        assert!(!needs_data(&filled));
        let decode = |k: &str| {
            let b = filled["data"][k].as_str().unwrap();
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).unwrap()).unwrap()
        };
        assert_eq!(decode("password"), "00ff");
        assert_eq!(decode("20-user.json"), broker::user_json("00ff"));
        assert_eq!(password_of(&filled).as_deref(), Some("00ff"));
        // Anything else passes through.
        let cm = json!({"kind": "ConfigMap", "metadata": {"name": "x"}});
        assert_eq!(with_password(&cm, "00ff"), cm);
        assert!(!needs_data(&cm));
    }

    #[test]
    fn listed_peers_get_users_with_derived_passwords() {
        let mut p = placeholder("default");
        p["metadata"]["annotations"][broker::PEERS_ANNOTATION] = json!("line-b,line-c");
        let filled = with_password(&p, "00ff");
        let b = filled["data"][broker::SECRET_PEERS_FILE].as_str().unwrap();
        let text = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).unwrap())
            .unwrap();
        assert_eq!(
            text,
            broker::peers_json("00ff", &["line-b".into(), "line-c".into()])
        );
        let users: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(users["users"][0]["name"], "peer.line-b");
        assert_eq!(
            users["users"][1]["password"],
            broker::peer_password("00ff", "line-c")
        );
        // Without peers there is no peers file.
        let plain = with_password(&placeholder("default"), "00ff");
        assert!(plain["data"].get(broker::SECRET_PEERS_FILE).is_none());
    }

    #[test]
    fn the_entry_tls_placeholder_is_filled_from_its_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k.pem"), "KEY").unwrap();
        let files = json!({"tls.key": dir.path().join("k.pem")}).to_string();
        let p = json!({"kind": "Secret", "metadata": {"name": "aion-entry-tls",
            "annotations": {ANNOTATION: ENTRY_TLS, FILES_ANNOTATION: files}}});
        let filled = with_files(&p).unwrap();
        assert_eq!(filled["data"]["tls.key"], "S0VZ");
        std::fs::remove_file(dir.path().join("k.pem")).unwrap();
        let e = with_files(&p).unwrap_err();
        assert!(e.contains("k.pem"), "{e}");
        let cm = json!({"kind": "ConfigMap"});
        assert_eq!(with_files(&cm).unwrap(), cm);
    }

    #[test]
    fn the_broker_namespace_wins_then_any_other() {
        let a = with_password(&placeholder("edge-1"), "aaaa");
        let b = with_password(&placeholder("default"), "bbbb");
        let empty = placeholder("edge-2");
        let foreign = json!({"kind": "Secret", "metadata": {"namespace": "default"},
                             "data": {"password": "Y2NjYw=="}});
        assert_eq!(
            live_password([&empty, &a, &b, &foreign], Some("default")).as_deref(),
            Some("bbbb")
        );
        assert_eq!(
            live_password([&empty, &a, &foreign], Some("default")).as_deref(),
            Some("aaaa")
        );
        assert_eq!(live_password([&empty, &foreign], Some("default")), None);
    }

    #[test]
    fn fresh_passwords_are_long_hex_and_differ() {
        let a = fresh_password().unwrap();
        let b = fresh_password().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn masked_secrets_show_changes_not_values() {
        let s = with_password(&placeholder("default"), "s3cret-value");
        let text = serde_json::to_string(&mask(&s)).unwrap();
        let b64 = s["data"]["password"].as_str().unwrap();
        assert!(
            !text.contains(b64) && !text.contains("s3cret-value"),
            "{text}"
        );
        assert_ne!(
            mask(&s)["data"]["password"],
            mask(&with_password(&placeholder("default"), "other-value!"))["data"]["password"]
        );
        let cm = json!({"kind": "ConfigMap", "data": {"a": "b"}});
        assert_eq!(mask(&cm), cm);
    }
}
