//! Revisions of an installation's cluster part, as data: what one successful cluster apply put in
//! the cluster (the rendered objects, hashes of the inputs, the images), how a revision is stored
//! (one gzip-compressed Secret per revision, like Helm's release Secrets), what changed between
//! two revisions per microservice, and which revisions to keep. Pure: the Kubernetes side
//! (list, record, prune, roll back) is [`crate::cluster::history`].
//!
//! A revision Secret carries the labels below but not the ownership pair
//! (`managed-by` + `aion.latona.io/inventory`) that prune selects on, so an apply never prunes
//! its own history; `down` removes it explicitly.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::manifest::{LABEL_MANAGED_BY, MANAGED_BY, Manifests, NodeManifests, Object, ObjectKey};

/// Label naming the inventory whose history a Secret belongs to.
pub const LABEL_REVISION_OF: &str = "aion.latona.io/revision-of";
/// Label with the revision number (decimal).
pub const LABEL_REVISION: &str = "aion.latona.io/revision";
/// Label with the revision's [`Status`] (changes when an `--atomic` apply fails).
pub const LABEL_STATUS: &str = "aion.latona.io/revision-status";
/// Annotation with why a revision failed.
pub const ANNOTATION_REASON: &str = "aion.latona.io/revision-reason";
/// The Secret `type` of a revision.
pub const SECRET_TYPE: &str = "aion.latona.io/revision.v1";
/// The data key holding the gzip-compressed JSON of a [`Revision`].
const DATA_KEY: &str = "revision";
/// The format of the stored JSON; a newer tool refuses a revision it cannot read.
const FORMAT: u32 = 1;

/// How a revision came to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Origin {
    /// `apply` with changes in the cluster.
    Apply,
    /// `rollback --to N`, or the automatic rollback of a failed `apply --atomic`.
    Rollback {
        to: u32,
        /// The revision whose failure triggered it (`apply --atomic`); None for `rollback`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_failed: Option<u32>,
    },
}

/// Whether a revision's objects came up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Applied (and, under `--atomic`, ready).
    Applied,
    /// Applied under `--atomic`, not ready in time, and rolled back.
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Applied => "applied",
            Status::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Status> {
        match s {
            "applied" => Some(Status::Applied),
            "failed" => Some(Status::Failed),
            _ => None,
        }
    }
}

/// One object as recorded: enough to apply it again exactly as it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredObject {
    pub node: String,
    pub namespace: String,
    pub owner: String,
    pub value: Value,
}

/// What one cluster apply put in the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    pub format: u32,
    pub number: u32,
    pub inventory: String,
    pub origin: Origin,
    /// RFC 3339, UTC.
    pub time: String,
    pub tool_version: String,
    /// `user@machine` of whoever ran it.
    pub applied_by: String,
    /// sha256 of every input file, by what it is (`inventory`, `services.yml of <host>`).
    pub inputs: BTreeMap<String, String>,
    /// Container images per owner (microservice or `core/<part>`), sorted.
    pub images: BTreeMap<String, BTreeSet<String>>,
    /// The manifest digest of each image, by the reference the objects name, where `apply`
    /// sent it from `imageSources` (absent in revisions of installations without them, and in
    /// revisions written before digests were recorded: the format is unchanged). A tag that
    /// points at new content (`:latest` rebuilt) is a change in `history` through these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub digests: BTreeMap<String, String>,
    /// The rendered objects, node by node, each node in apply order.
    pub objects: Vec<StoredObject>,
}

/// A revision Secret that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RevisionError {
    #[error("revision Secret {secret}: {what}")]
    Corrupt { secret: String, what: String },
    #[error(
        "revision Secret {secret} has format {found}; this aion-reconcile reads format {FORMAT} \
         (use the version that wrote it)"
    )]
    Format { secret: String, found: u32 },
}

impl Revision {
    /// A revision of `manifests`, numbered `number`; `digests`: normalised reference ([`crate::images::normalize`]) → manifest digest of
    /// the images `apply` sent (only those the objects name are kept, by the reference they name).
    pub fn new(
        number: u32,
        manifests: &Manifests,
        origin: Origin,
        inputs: BTreeMap<String, String>,
        digests: &BTreeMap<String, String>,
        applied_by: String,
    ) -> Revision {
        let mut objects = Vec::new();
        for node in &manifests.nodes {
            for o in &node.objects {
                objects.push(StoredObject {
                    node: node.node.clone(),
                    namespace: node.namespace.clone(),
                    owner: o.owner.clone(),
                    value: o.value.clone(),
                });
            }
        }
        let images = images_of(objects.iter().map(|o| (o.owner.as_str(), &o.value)));
        let digests = images
            .values()
            .flatten()
            .filter_map(|r| {
                let d = digests.get(&crate::images::normalize(r))?;
                Some((r.clone(), d.clone()))
            })
            .collect();
        Revision {
            format: FORMAT,
            number,
            inventory: manifests.inventory.clone(),
            origin,
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            tool_version: env!("CARGO_PKG_VERSION").to_owned(),
            applied_by,
            inputs,
            images,
            digests,
            objects,
        }
    }

    /// The recorded objects as [`Manifests`], ready for [`crate::cluster::plan_with`]: the
    /// same plan, diff and prune machinery as for freshly rendered ones.
    pub fn manifests(&self) -> Manifests {
        let mut nodes: Vec<NodeManifests> = Vec::new();
        for o in &self.objects {
            let Some(key) = ObjectKey::of(&o.value) else {
                continue;
            };
            if nodes.last().is_none_or(|n| n.node != o.node) {
                nodes.push(NodeManifests {
                    node: o.node.clone(),
                    namespace: o.namespace.clone(),
                    objects: Vec::new(),
                });
            }
            let text = serde_saphyr::to_string(&o.value).unwrap_or_default();
            if let Some(n) = nodes.last_mut() {
                n.objects.push(Object {
                    key,
                    node: o.node.clone(),
                    owner: o.owner.clone(),
                    value: o.value.clone(),
                    text,
                });
            }
        }
        Manifests {
            inventory: self.inventory.clone(),
            nodes,
        }
    }

    /// One line saying where it came from: `apply`, `rollback to 3`, `rollback to 3 after 4
    /// failed`.
    pub fn describe(&self) -> String {
        match &self.origin {
            Origin::Apply => "apply".into(),
            Origin::Rollback {
                to,
                after_failed: None,
            } => format!("rollback to {to}"),
            Origin::Rollback {
                to,
                after_failed: Some(f),
            } => format!("rollback to {to} after {f} failed (--atomic)"),
        }
    }
}

/// Every container image per owner of `objects`.
fn images_of<'a>(
    objects: impl Iterator<Item = (&'a str, &'a Value)>,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (owner, v) in objects {
        let spec = v
            .pointer("/spec/template/spec")
            .or_else(|| v.pointer("/spec/jobTemplate/spec/template/spec"));
        let Some(spec) = spec else { continue };
        for list in ["initContainers", "containers"] {
            for c in spec
                .get(list)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(image) = c.get("image").and_then(Value::as_str) {
                    out.entry(owner.to_owned())
                        .or_default()
                        .insert(image.to_owned());
                }
            }
        }
    }
    out
}

/// The name of revision `number`'s Secret. Secret names are DNS subdomains: an inventory name
/// may hold `_` (a valid label value), which becomes `-`.
pub fn secret_name(inventory: &str, number: u32) -> String {
    let inv: String = inventory
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("aion-revision.{inv}.v{number}")
}

/// The label selector for every revision of `inventory`.
pub fn selector(inventory: &str) -> String {
    format!("{LABEL_REVISION_OF}={inventory}")
}

/// The Secret that stores `rev` in `namespace`: labels for listing without decoding, the
/// revision as gzip-compressed JSON.
pub fn to_secret(rev: &Revision, namespace: &str) -> Value {
    let json = serde_json::to_vec(rev).unwrap_or_default();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let _ = gz.write_all(&json);
    let compressed = gz.finish().unwrap_or_default();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret_name(&rev.inventory, rev.number),
            "namespace": namespace,
            "labels": {
                LABEL_MANAGED_BY: MANAGED_BY,
                LABEL_REVISION_OF: rev.inventory,
                LABEL_REVISION: rev.number.to_string(),
                LABEL_STATUS: Status::Applied.as_str(),
            },
        },
        "type": SECRET_TYPE,
        "data": { DATA_KEY: base64_encode(&compressed) },
    })
}

/// What a revision Secret's labels say, without decoding its data (for `history` and for
/// choosing a rollback target).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub secret: String,
    pub number: u32,
    pub status: Status,
    /// Why it failed (`--atomic`), from the annotation.
    pub reason: Option<String>,
}

/// The [`Header`] of a revision Secret (as JSON); None when it is not one (no number label).
pub fn header(secret: &Value) -> Option<Header> {
    let labels = secret.pointer("/metadata/labels")?;
    let number = labels.get(LABEL_REVISION)?.as_str()?.parse().ok()?;
    let status = labels
        .get(LABEL_STATUS)
        .and_then(Value::as_str)
        .and_then(Status::parse)
        .unwrap_or(Status::Applied);
    Some(Header {
        secret: secret
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        number,
        status,
        reason: secret
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(ANNOTATION_REASON))
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// Decode a revision Secret (as JSON, `data` base64 as the API returns it).
///
/// # Errors
/// [`RevisionError`] naming the Secret when the data is missing, not base64, not gzip, not the
/// JSON of a revision, of another format, or numbered differently from its label.
pub fn from_secret(secret: &Value) -> Result<Revision, RevisionError> {
    let name = secret
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)")
        .to_owned();
    let corrupt = |what: String| RevisionError::Corrupt {
        secret: name.clone(),
        what,
    };
    let data = secret
        .pointer(&format!("/data/{DATA_KEY}"))
        .and_then(Value::as_str)
        .ok_or_else(|| corrupt(format!("no `{DATA_KEY}` data")))?;
    let compressed =
        base64_decode(data).map_err(|e| corrupt(format!("data is not base64: {e}")))?;
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_end(&mut json)
        .map_err(|e| corrupt(format!("data is not gzip-compressed: {e}")))?;
    let raw: Value =
        serde_json::from_slice(&json).map_err(|e| corrupt(format!("data is not JSON: {e}")))?;
    let format = raw.get("format").and_then(Value::as_u64).unwrap_or(0);
    if format != u64::from(FORMAT) {
        return Err(RevisionError::Format {
            secret: name,
            found: u32::try_from(format).unwrap_or(u32::MAX),
        });
    }
    let rev: Revision =
        serde_json::from_value(raw).map_err(|e| corrupt(format!("not a revision: {e}")))?;
    if let Some(h) = header(secret)
        && h.number != rev.number
    {
        return Err(corrupt(format!(
            "labelled revision {} but holds revision {}",
            h.number, rev.number
        )));
    }
    Ok(rev)
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn base64_decode(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s)
}

/// The revisions to delete so that `keep` remain: the oldest beyond the newest `keep`.
pub fn to_prune(numbers: &[u32], keep: u32) -> Vec<u32> {
    let mut sorted = numbers.to_vec();
    sorted.sort_unstable();
    let excess = sorted.len().saturating_sub(keep as usize);
    sorted.truncate(excess);
    sorted
}

/// The revision a rollback without `--to` returns to: the newest applied (not failed) one
/// before the newest revision.
pub fn previous(headers: &[Header]) -> Option<u32> {
    let newest = headers.iter().map(|h| h.number).max()?;
    headers
        .iter()
        .filter(|h| h.number < newest && h.status == Status::Applied)
        .map(|h| h.number)
        .max()
}

/// How one owner (microservice or `core/<part>`) changed between two revisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnerChange {
    pub owner: String,
    /// `+` new, `~` changed, `-` gone.
    pub symbol: &'static str,
    /// Images that changed: `(before, after)`; one side empty when only one revision has it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<(String, String)>,
}

/// What changed from `before` (None: nothing before, the first revision) to `after`, per owner,
/// sorted by owner.
pub fn changes(before: Option<&Revision>, after: &Revision) -> Vec<OwnerChange> {
    let group = |r: &Revision| -> BTreeMap<String, Vec<Value>> {
        let mut m: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for o in &r.objects {
            m.entry(o.owner.clone()).or_default().push(o.value.clone());
        }
        m
    };
    // An image as `ref@digest` where the digest is known in both revisions (so one without
    // digests, older or without imageSources, does not show every image as changed).
    let both = |r: &String| {
        before.is_some_and(|b| b.digests.contains_key(r)) && after.digests.contains_key(r)
    };
    let pinned = |rev: &Revision, owner: &String| -> BTreeSet<String> {
        rev.images
            .get(owner)
            .into_iter()
            .flatten()
            .map(|r| match rev.digests.get(r) {
                Some(d) if both(r) => format!("{r}@{d}"),
                _ => r.clone(),
            })
            .collect()
    };
    let (old, new) = (before.map(group).unwrap_or_default(), group(after));
    let owners: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let mut out = Vec::new();
    for owner in owners {
        let (was, is) = (
            before.map(|b| pinned(b, owner)).unwrap_or_default(),
            pinned(after, owner),
        );
        let symbol = match (old.get(owner), new.get(owner)) {
            (None, Some(_)) => "+",
            (Some(_), None) => "-",
            (Some(a), Some(b)) if a != b || was != is => "~",
            _ => continue,
        };
        let gone: Vec<&String> = was.difference(&is).collect();
        let came: Vec<&String> = is.difference(&was).collect();
        let mut images = Vec::new();
        for i in 0..gone.len().max(came.len()) {
            images.push((
                gone.get(i).map(|s| s.to_string()).unwrap_or_default(),
                came.get(i).map(|s| s.to_string()).unwrap_or_default(),
            ));
        }
        out.push(OwnerChange {
            owner: owner.clone(),
            symbol,
            images,
        });
    }
    out
}

/// sha256 (hex) of some bytes: the input hashes of a revision.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(name: &str, image: &str, env: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"template": {"spec": {"containers": [
                {"name": name, "image": image, "env": [{"name": "X", "value": env}]}
            ]}}}
        })
    }

    fn manifests(objs: &[(&str, Value)]) -> Manifests {
        Manifests {
            inventory: "lab_1".into(),
            nodes: vec![NodeManifests {
                node: "edge-master".into(),
                namespace: "default".into(),
                objects: objs
                    .iter()
                    .map(|(owner, v)| Object {
                        key: ObjectKey::of(v).unwrap(),
                        node: "edge-master".into(),
                        owner: (*owner).into(),
                        value: v.clone(),
                        text: serde_saphyr::to_string(v).unwrap(),
                    })
                    .collect(),
            }],
        }
    }

    fn rev(number: u32, objs: &[(&str, Value)]) -> Revision {
        rev_with(number, objs, &BTreeMap::new())
    }

    fn rev_with(
        number: u32,
        objs: &[(&str, Value)],
        digests: &BTreeMap<String, String>,
    ) -> Revision {
        let inputs = BTreeMap::from([("inventory".to_string(), sha256_hex(b"x"))]);
        Revision::new(
            number,
            &manifests(objs),
            Origin::Apply,
            inputs,
            digests,
            "me@here".into(),
        )
    }

    #[test]
    fn a_revision_survives_the_secret_round_trip() {
        let r = rev(
            3,
            &[("sensor", deployment("sensor", "aion.local/sensor:1", "a"))],
        );
        let secret = to_secret(&r, "default");
        assert_eq!(
            secret.pointer("/metadata/name").unwrap(),
            "aion-revision.lab-1.v3"
        );
        assert_eq!(secret["type"], SECRET_TYPE);
        let back = from_secret(&secret).unwrap();
        assert_eq!(back, r);
        assert_eq!(
            back.manifests(),
            manifests(&[("sensor", deployment("sensor", "aion.local/sensor:1", "a"))])
        );
        assert_eq!(
            header(&secret).unwrap(),
            Header {
                secret: "aion-revision.lab-1.v3".into(),
                number: 3,
                status: Status::Applied,
                reason: None
            }
        );
        // Ownership labels are absent: prune never selects the history.
        assert!(
            secret
                .pointer("/metadata/labels/aion.latona.io~1inventory")
                .is_none()
        );
    }

    #[test]
    fn a_corrupted_revision_is_an_error_naming_its_secret() {
        let r = rev(2, &[("sensor", deployment("sensor", "i:1", "a"))]);
        let mut secret = to_secret(&r, "default");
        secret["data"]["revision"] = json!(base64_encode(b"not gzip at all"));
        let e = from_secret(&secret).unwrap_err().to_string();
        assert!(
            e.contains("aion-revision.lab-1.v2") && e.contains("not gzip"),
            "{e}"
        );
        secret["data"]["revision"] = json!("%%%");
        let e = from_secret(&secret).unwrap_err().to_string();
        assert!(e.contains("not base64"), "{e}");
        secret["metadata"]["labels"][LABEL_REVISION] = json!("7");
        secret["data"] = to_secret(&r, "default")["data"].clone();
        let e = from_secret(&secret).unwrap_err().to_string();
        assert!(
            e.contains("labelled revision 7 but holds revision 2"),
            "{e}"
        );
    }

    #[test]
    fn a_revision_of_another_format_is_refused_with_the_reason() {
        let mut r = rev(1, &[]);
        r.format = 9;
        let e = from_secret(&to_secret(&r, "default"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("format 9") && e.contains("reads format 1"),
            "{e}"
        );
    }

    #[test]
    fn changes_per_owner_call_out_images() {
        let a = rev(
            1,
            &[
                ("sensor", deployment("sensor", "aion.local/sensor:1", "a")),
                ("sink", deployment("sink", "aion.local/sink:1", "a")),
                ("old", deployment("old", "aion.local/old:1", "a")),
            ],
        );
        let b = rev(
            2,
            &[
                ("sensor", deployment("sensor", "aion.local/sensor:2", "a")),
                ("sink", deployment("sink", "aion.local/sink:1", "b")),
                ("new", deployment("new", "aion.local/new:1", "a")),
            ],
        );
        let c = changes(Some(&a), &b);
        let short: Vec<(&str, &str)> = c.iter().map(|c| (c.symbol, c.owner.as_str())).collect();
        assert_eq!(
            short,
            [("+", "new"), ("-", "old"), ("~", "sensor"), ("~", "sink")]
        );
        assert_eq!(
            c[2].images,
            [(
                "aion.local/sensor:1".to_string(),
                "aion.local/sensor:2".to_string()
            )]
        );
        assert!(c[3].images.is_empty(), "only its env changed");
        // Against nothing: everything is new; against itself: nothing changed.
        assert!(changes(None, &a).iter().all(|c| c.symbol == "+"));
        assert!(changes(Some(&a), &a).is_empty());
    }

    /// A tag rebuilt with new content (`:latest`): the objects are the same, the digest is not;
    /// `history` shows it as a change of that microservice's image. Revisions without digests
    /// (older ones, installations without imageSources) compare by reference as before.
    #[test]
    fn a_retagged_image_is_a_change_through_its_digest() {
        let objs = [
            ("sink", deployment("sink", "aion.local/sink:latest", "a")),
            ("redis", deployment("redis", "redis:7", "a")),
        ];
        // keyed by the normalised reference, as apply passes them
        let v1 = BTreeMap::from([
            (
                "aion.local/sink:latest".to_string(),
                "sha256:1111".to_string(),
            ),
            (
                "docker.io/library/redis:7".to_string(),
                "sha256:7777".to_string(),
            ),
            ("aion.local/unused:1".to_string(), "sha256:0000".to_string()),
        ]);
        let mut v2 = v1.clone();
        v2.insert("aion.local/sink:latest".into(), "sha256:2222".into());
        let (a, b) = (rev_with(1, &objs, &v1), rev_with(2, &objs, &v2));
        // recorded by the reference the objects name, only for images they name
        assert_eq!(
            a.digests,
            BTreeMap::from([
                (
                    "aion.local/sink:latest".to_string(),
                    "sha256:1111".to_string()
                ),
                ("redis:7".to_string(), "sha256:7777".to_string()),
            ])
        );
        let c = changes(Some(&a), &b);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!((c[0].symbol, c[0].owner.as_str()), ("~", "sink"));
        assert_eq!(
            c[0].images,
            [(
                "aion.local/sink:latest@sha256:1111".to_string(),
                "aion.local/sink:latest@sha256:2222".to_string()
            )]
        );
        assert!(changes(Some(&b), &b).is_empty());
        // against a revision without digests: nothing to compare, no change
        assert!(changes(Some(&rev(1, &objs)), &b).is_empty());
        // and the digests survive the Secret round trip
        let back = from_secret(&to_secret(&b, "default")).unwrap();
        assert_eq!(back.digests, b.digests);
    }

    #[test]
    fn pruning_keeps_the_newest() {
        assert_eq!(to_prune(&[4, 1, 3, 2, 5], 3), [1, 2]);
        assert!(to_prune(&[1, 2], 10).is_empty());
    }

    #[test]
    fn the_default_rollback_target_skips_failed_revisions() {
        let h = |number, status| Header {
            secret: String::new(),
            number,
            status,
            reason: None,
        };
        let hs = [
            h(1, Status::Applied),
            h(2, Status::Applied),
            h(3, Status::Failed),
            h(4, Status::Applied),
        ];
        assert_eq!(previous(&hs), Some(2));
        assert_eq!(previous(&hs[..2]), Some(1));
        assert_eq!(previous(&hs[..1]), None);
    }
}
