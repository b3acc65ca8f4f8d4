//! The kanban message: upstream's `StatusKanban` fields as JSON with protobuf-JSON (lowerCamel)
//! names, as upstream's RabbitMQ-era clients exchange them (`shared/docs/upstream-aion.md` §5).
//!
//! Unknown top-level keys are kept and re-emitted unchanged, so a client that sends extra fields
//! (upstream's clients send arbitrary JSON maps) loses nothing when a kanban is routed.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Connection key of upstream's terminate kanban.
pub const TERMINATE_KEY: &str = "service-broker";

/// Serialised through [`KanbanView`] (one field list for [`Kanban::encode`] and
/// [`Kanban::encode_for_hop`]); deserialised in one pass by [`KanbanVisitor`] (which
/// [`Kanban::decode`] and envelopes that embed a kanban both use).
#[derive(Debug, Clone, PartialEq)]
pub struct Kanban {
    pub connection_key: String,
    pub process_number: i32,
    pub prior_success: bool,
    pub data_path: String,
    pub file_list: Vec<String>,
    pub metadata: Map<String, Value>,
    pub next_device_name: String,
    pub start_at: String,
    pub finish_at: String,
    /// Any other keys, kept as they came.
    pub extra: Map<String, Value>,
}

fn default_key() -> String {
    "default".to_string()
}
fn one() -> i32 {
    1
}
fn yes() -> bool {
    true
}

impl Default for Kanban {
    fn default() -> Self {
        Kanban {
            connection_key: default_key(),
            process_number: 1,
            prior_success: true,
            data_path: String::new(),
            file_list: Vec::new(),
            metadata: Map::new(),
            next_device_name: String::new(),
            start_at: String::new(),
            finish_at: String::new(),
            extra: Map::new(),
        }
    }
}

/// Why a message body is not a kanban.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message body is not UTF-8 JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("message body is JSON but not a kanban object: {0}")]
    Shape(#[source] serde_json::Error),
}

/// A kanban as serialised, borrowed, with `nextDeviceName` possibly replaced: a routed
/// kanban is encoded without cloning it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KanbanView<'a> {
    connection_key: &'a str,
    process_number: i32,
    prior_success: bool,
    data_path: &'a str,
    file_list: &'a [String],
    metadata: &'a Map<String, Value>,
    next_device_name: &'a str,
    start_at: &'a str,
    finish_at: &'a str,
    #[serde(flatten)]
    extra: &'a Map<String, Value>,
}

impl Serialize for Kanban {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.view(&self.next_device_name).serialize(s)
    }
}

/// A top-level key of a kanban.
enum Field {
    ConnectionKey,
    ProcessNumber,
    PriorSuccess,
    DataPath,
    FileList,
    Metadata,
    NextDeviceName,
    StartAt,
    FinishAt,
    Other(String),
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Field, D::Error> {
        struct FieldVisitor;
        impl serde::de::Visitor<'_> for FieldVisitor {
            type Value = Field;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a kanban field name")
            }
            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Field, E> {
                Ok(match key {
                    "connectionKey" => Field::ConnectionKey,
                    "processNumber" => Field::ProcessNumber,
                    "priorSuccess" => Field::PriorSuccess,
                    "dataPath" => Field::DataPath,
                    "fileList" => Field::FileList,
                    "metadata" => Field::Metadata,
                    "nextDeviceName" => Field::NextDeviceName,
                    "startAt" => Field::StartAt,
                    "finishAt" => Field::FinishAt,
                    other => Field::Other(other.to_string()),
                })
            }
        }
        d.deserialize_identifier(FieldVisitor)
    }
}

/// Reads a kanban object straight into [`Kanban`]: every field typed as it is parsed, unknown
/// keys into [`Kanban::extra`] in their order. This is on every hop's path, so no tree is
/// built first (and no `#[serde(flatten)]`, which buffers every key). `null` counts as absent
/// (upstream's protobuf JSON omits zero values; some clients send `null`); a key given twice
/// keeps its last value, as a JSON object parsed into a map would.
struct KanbanVisitor;

/// `slot` = the next value, or `default` when it is `null`.
fn set<'de, A: serde::de::MapAccess<'de>, T: Deserialize<'de>>(
    m: &mut A,
    slot: &mut T,
    default: T,
) -> Result<(), A::Error> {
    *slot = m.next_value::<Option<T>>()?.unwrap_or(default);
    Ok(())
}

impl<'de> serde::de::Visitor<'de> for KanbanVisitor {
    type Value = Kanban;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a kanban (a JSON object)")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Kanban, A::Error> {
        let mut k = Kanban::default();
        while let Some(field) = m.next_key::<Field>()? {
            match field {
                Field::ConnectionKey => set(&mut m, &mut k.connection_key, default_key())?,
                Field::ProcessNumber => set(&mut m, &mut k.process_number, one())?,
                Field::PriorSuccess => set(&mut m, &mut k.prior_success, yes())?,
                Field::DataPath => set(&mut m, &mut k.data_path, String::new())?,
                Field::FileList => set(&mut m, &mut k.file_list, Vec::new())?,
                Field::Metadata => set(&mut m, &mut k.metadata, Map::new())?,
                Field::NextDeviceName => set(&mut m, &mut k.next_device_name, String::new())?,
                Field::StartAt => set(&mut m, &mut k.start_at, String::new())?,
                Field::FinishAt => set(&mut m, &mut k.finish_at, String::new())?,
                Field::Other(key) => match m.next_value::<Value>()? {
                    Value::Null => {
                        k.extra.shift_remove(&key);
                    }
                    v => {
                        k.extra.insert(key, v);
                    }
                },
            }
        }
        Ok(k)
    }
}

impl<'de> Deserialize<'de> for Kanban {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Kanban, D::Error> {
        d.deserialize_map(KanbanVisitor)
    }
}

impl Kanban {
    /// Decode a message body (see [`KanbanVisitor`]).
    pub fn decode(body: &[u8]) -> Result<Kanban, DecodeError> {
        serde_json::from_slice(body).map_err(|e| match e.classify() {
            // Valid JSON of the wrong shape (not an object, a field of the wrong type).
            serde_json::error::Category::Data => DecodeError::Shape(e),
            _ => DecodeError::Json(e),
        })
    }

    fn view<'a>(&'a self, next_device_name: &'a str) -> KanbanView<'a> {
        KanbanView {
            connection_key: &self.connection_key,
            process_number: self.process_number,
            prior_success: self.prior_success,
            data_path: &self.data_path,
            file_list: &self.file_list,
            metadata: &self.metadata,
            next_device_name,
            start_at: &self.start_at,
            finish_at: &self.finish_at,
            extra: &self.extra,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings, numbers and JSON maps always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// [`Kanban::encode`] with `nextDeviceName` set to `device`: the kanban as delivered to a
    /// next hop on this device (upstream sets it to this device), without cloning it.
    pub fn encode_for_hop(&self, device: &str) -> Vec<u8> {
        serde_json::to_vec(&self.view(device)).unwrap_or_default()
    }

    pub fn is_terminate(&self) -> bool {
        self.connection_key == TERMINATE_KEY
    }

    /// The kanban a microservice starts from when no kanban started it (a `startup` service at
    /// the head of a chain), as upstream's status-kanban made it for `START_SERVICE_WITHOUT_KANBAN`
    /// (`SetKanban`): `startAt` now in upstream's format ([`upstream_time`]), `dataPath`
    /// `<data_root>/<name>_<number>` (`GetMsDataPath`; `data_root` is `$AION_HOME/Data`),
    /// `processNumber` = `number`, empty `metadata`; the rest at their defaults.
    pub fn initial(name: &str, number: i32, data_root: &std::path::Path) -> Kanban {
        Kanban::initial_at(name, number, data_root, chrono::Utc::now())
    }

    /// [`Kanban::initial`] started at `now`.
    pub fn initial_at(
        name: &str,
        number: i32,
        data_root: &std::path::Path,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Kanban {
        Kanban {
            process_number: number,
            data_path: data_root
                .join(format!("{name}_{number}"))
                .to_string_lossy()
                .into_owned(),
            start_at: upstream_time(now),
            ..Kanban::default()
        }
    }
}

/// A time as upstream writes `startAt`/`finishAt`: ISO 8601 with milliseconds in Japan time,
/// whatever the device's zone (`pkg/common/date.go`: `2006-01-02T15:04:05.000+09:00`).
pub fn upstream_time(t: chrono::DateTime<chrono::Utc>) -> String {
    let jst = t.naive_utc() + chrono::TimeDelta::hours(9);
    jst.format("%Y-%m-%dT%H:%M:%S%.3f+09:00").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_kanban_as_upstream_makes_it() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-04T16:05:09.123456Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let k = Kanban::initial_at("sensor", 2, std::path::Path::new("/var/lib/aion/Data"), now);
        // Japan time, milliseconds, a fixed +09:00 (the date rolls over past 15:00 UTC).
        assert_eq!(k.start_at, "2026-12-05T01:05:09.123+09:00");
        assert_eq!(k.data_path, "/var/lib/aion/Data/sensor_2");
        assert_eq!(k.process_number, 2);
        assert_eq!(k.connection_key, "default");
        assert!(k.metadata.is_empty() && k.finish_at.is_empty() && k.file_list.is_empty());
        // On the wire under upstream's names.
        let v: Value = serde_json::from_slice(&k.encode()).unwrap();
        assert_eq!(v["startAt"], "2026-12-05T01:05:09.123+09:00");
        assert_eq!(v["dataPath"], "/var/lib/aion/Data/sensor_2");
        assert_eq!(v["processNumber"], 2);
        assert_eq!(
            upstream_time(
                chrono::DateTime::parse_from_rfc3339("2021-01-01T00:00:00Z")
                    .unwrap()
                    .with_timezone(&chrono::Utc)
            ),
            "2021-01-01T09:00:00.000+09:00"
        );
    }

    #[test]
    fn decodes_upstream_fields_and_keeps_extras() {
        let k = Kanban::decode(
            br#"{"connectionKey":"delete","processNumber":2,"priorSuccess":false,
                "dataPath":"/var/lib/aion/Data/a_2","fileList":["x.jpg"],
                "metadata":{"a":1},"nextDeviceName":"hera","startAt":"s","finishAt":"f",
                "custom":[1,2]}"#,
        )
        .unwrap();
        assert_eq!(k.connection_key, "delete");
        assert_eq!(k.process_number, 2);
        assert!(!k.prior_success);
        assert_eq!(k.file_list, vec!["x.jpg"]);
        assert_eq!(k.metadata["a"], 1);
        assert_eq!(k.next_device_name, "hera");
        assert_eq!(k.extra["custom"], serde_json::json!([1, 2]));
        let back: Value = serde_json::from_slice(&k.encode()).unwrap();
        assert_eq!(back["custom"], serde_json::json!([1, 2]));
        assert_eq!(back["connectionKey"], "delete");
    }

    /// The two-pass reading the one-pass visitor replaced (parse a map, move the fields out):
    /// the reference for what a body means.
    fn reference(body: &[u8]) -> Kanban {
        fn take<T: serde::de::DeserializeOwned>(
            m: &mut Map<String, Value>,
            key: &str,
        ) -> Option<T> {
            match m.shift_remove(key) {
                None | Some(Value::Null) => None,
                Some(v) => Some(serde_json::from_value(v).unwrap()),
            }
        }
        let Value::Object(mut m) = serde_json::from_slice(body).unwrap() else {
            panic!("not an object")
        };
        let d = Kanban::default();
        let mut k = Kanban {
            connection_key: take(&mut m, "connectionKey").unwrap_or(d.connection_key),
            process_number: take(&mut m, "processNumber").unwrap_or(d.process_number),
            prior_success: take(&mut m, "priorSuccess").unwrap_or(d.prior_success),
            data_path: take(&mut m, "dataPath").unwrap_or_default(),
            file_list: take(&mut m, "fileList").unwrap_or_default(),
            metadata: take(&mut m, "metadata").unwrap_or_default(),
            next_device_name: take(&mut m, "nextDeviceName").unwrap_or_default(),
            start_at: take(&mut m, "startAt").unwrap_or_default(),
            finish_at: take(&mut m, "finishAt").unwrap_or_default(),
            extra: Map::new(),
        };
        m.retain(|_, v| !v.is_null());
        k.extra = m;
        k
    }

    #[test]
    fn decode_matches_the_two_pass_reading_and_encode_for_hop_only_sets_the_device() {
        let bodies: [&[u8]; 7] = [
            br#"{"connectionKey":"k","processNumber":3,"metadata":{"b":[1,{"c":null}],"a":"x"},"z":1,"y":{"q":2},"fileList":["f"]}"#,
            br#"{"x":null,"connectionKey":null,"priorSuccess":false}"#,
            br#"{}"#,
            br#"{"nextDeviceName":"d","startAt":"s","finishAt":"f","dataPath":"p"}"#,
            // Keys given twice: the last value counts, a later null included.
            br#"{"connectionKey":"a","connectionKey":"b","z":1,"y":2,"z":3,"processNumber":4,"processNumber":null}"#,
            br#"{"x":1,"x":null,"metadata":{"a":1},"metadata":null,"startAt":"s"}"#,
            br#"{"con\u006eectionKey":"escaped","\u00e9":"\n"}"#,
        ];
        for body in bodies {
            let fast = Kanban::decode(body).unwrap();
            assert_eq!(fast, reference(body), "{}", String::from_utf8_lossy(body));
            assert_eq!(fast.encode(), serde_json::to_vec(&fast).unwrap());
            let mut moved = fast.clone();
            moved.next_device_name = "here".into();
            assert_eq!(fast.encode_for_hop("here"), moved.encode());
            // An envelope embedding a kanban reads it the same way.
            let env = format!(r#"{{"k":{}}}"#, String::from_utf8_lossy(body));
            let v: std::collections::HashMap<String, Kanban> = serde_json::from_str(&env).unwrap();
            assert_eq!(v["k"], fast);
        }
        // Extras keep their order.
        let k = Kanban::decode(br#"{"z":1,"connectionKey":"k","y":2,"x":3}"#).unwrap();
        assert_eq!(k.extra.keys().collect::<Vec<_>>(), ["z", "y", "x"]);
        assert_eq!(
            Kanban::decode(br#"{"con\u006eectionKey":"escaped"}"#)
                .unwrap()
                .connection_key,
            "escaped"
        );
    }

    #[test]
    fn defaults_match_upstream_clients() {
        let k = Kanban::decode(br#"{"metadata":null}"#).unwrap();
        assert_eq!(k.connection_key, "default");
        assert_eq!(k.process_number, 1);
        assert!(k.prior_success);
    }

    #[test]
    fn rejects_garbage_and_wrong_shapes() {
        assert!(matches!(
            Kanban::decode(b"\xff\x00"),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(Kanban::decode(b"[1]"), Err(DecodeError::Shape(_))));
        assert!(matches!(
            Kanban::decode(b"\"x\""),
            Err(DecodeError::Shape(_))
        ));
        assert!(matches!(Kanban::decode(b"{} x"), Err(DecodeError::Json(_))));
        assert!(matches!(
            Kanban::decode(br#"{"a":"#),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            Kanban::decode(br#"{"metadata":[1]}"#),
            Err(DecodeError::Shape(_))
        ));
        assert!(matches!(
            Kanban::decode(br#"{"processNumber":"x"}"#),
            Err(DecodeError::Shape(_))
        ));
    }
}
