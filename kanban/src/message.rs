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
/// [`Kanban::encode_for_hop`]); decoded by [`Kanban::decode`] (the derived `Deserialize` serves
/// envelopes that embed a kanban).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Kanban {
    #[serde(default = "default_key")]
    pub connection_key: String,
    #[serde(default = "one")]
    pub process_number: i32,
    #[serde(default = "yes")]
    pub prior_success: bool,
    #[serde(default)]
    pub data_path: String,
    #[serde(default)]
    pub file_list: Vec<String>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    #[serde(default)]
    pub next_device_name: String,
    #[serde(default)]
    pub start_at: String,
    #[serde(default)]
    pub finish_at: String,
    /// Any other keys, kept as they came.
    #[serde(flatten)]
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

/// Take key `key` out of `m` as a `T` (absent or `null` → `None`).
fn take<T: serde::de::DeserializeOwned>(
    m: &mut Map<String, Value>,
    key: &str,
) -> Result<Option<T>, serde_json::Error> {
    match m.shift_remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v).map(Some),
    }
}

impl Kanban {
    /// Decode a message body. `null` values count as absent (upstream's protobuf JSON omits
    /// zero values; some clients send `null`).
    ///
    /// This is on every hop's path: the body is parsed once into a map and the fields are
    /// moved out of it (no second copy of `metadata`); what is left is [`Kanban::extra`], in
    /// its order.
    pub fn decode(body: &[u8]) -> Result<Kanban, DecodeError> {
        let v: Value = serde_json::from_slice(body).map_err(DecodeError::Json)?;
        let Value::Object(mut m) = v else {
            return Err(DecodeError::Shape(serde::de::Error::custom(format!(
                "expected a JSON object, found {}",
                json_kind(&v)
            ))));
        };
        let shape = DecodeError::Shape;
        let d = Kanban::default();
        let mut k = Kanban {
            connection_key: take(&mut m, "connectionKey")
                .map_err(shape)?
                .unwrap_or(d.connection_key),
            process_number: take(&mut m, "processNumber")
                .map_err(shape)?
                .unwrap_or(d.process_number),
            prior_success: take(&mut m, "priorSuccess")
                .map_err(shape)?
                .unwrap_or(d.prior_success),
            data_path: take(&mut m, "dataPath").map_err(shape)?.unwrap_or_default(),
            file_list: take(&mut m, "fileList").map_err(shape)?.unwrap_or_default(),
            metadata: take(&mut m, "metadata").map_err(shape)?.unwrap_or_default(),
            next_device_name: take(&mut m, "nextDeviceName")
                .map_err(shape)?
                .unwrap_or_default(),
            start_at: take(&mut m, "startAt").map_err(shape)?.unwrap_or_default(),
            finish_at: take(&mut m, "finishAt").map_err(shape)?.unwrap_or_default(),
            extra: Map::new(),
        };
        m.retain(|_, v| !v.is_null());
        k.extra = m;
        Ok(k)
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
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn decode_matches_the_derived_deserializer_and_encode_for_hop_only_sets_the_device() {
        let bodies: [&[u8]; 4] = [
            br#"{"connectionKey":"k","processNumber":3,"metadata":{"b":[1,{"c":null}],"a":"x"},"z":1,"y":{"q":2},"fileList":["f"]}"#,
            br#"{"x":null,"connectionKey":null,"priorSuccess":false}"#,
            br#"{}"#,
            br#"{"nextDeviceName":"d","startAt":"s","finishAt":"f","dataPath":"p"}"#,
        ];
        for body in bodies {
            let fast = Kanban::decode(body).unwrap();
            let mut v: Value = serde_json::from_slice(body).unwrap();
            v.as_object_mut().unwrap().retain(|_, v| !v.is_null());
            let derived: Kanban = serde_json::from_value(v).unwrap();
            assert_eq!(fast, derived, "{}", String::from_utf8_lossy(body));
            assert_eq!(fast.encode(), serde_json::to_vec(&fast).unwrap());
            let mut moved = fast.clone();
            moved.next_device_name = "here".into();
            assert_eq!(fast.encode_for_hop("here"), moved.encode());
        }
        // Extras keep their order.
        let k = Kanban::decode(br#"{"z":1,"connectionKey":"k","y":2,"x":3}"#).unwrap();
        assert_eq!(k.extra.keys().collect::<Vec<_>>(), ["z", "y", "x"]);
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
            Kanban::decode(br#"{"metadata":[1]}"#),
            Err(DecodeError::Shape(_))
        ));
        assert!(matches!(
            Kanban::decode(br#"{"processNumber":"x"}"#),
            Err(DecodeError::Shape(_))
        ));
    }
}
