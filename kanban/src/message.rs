//! The kanban message: upstream's `StatusKanban` fields as JSON with protobuf-JSON (lowerCamel)
//! names, as upstream's RabbitMQ-era clients exchange them (`shared/docs/upstream-aion.md` §5).
//!
//! Unknown top-level keys are kept and re-emitted unchanged, so a client that sends extra fields
//! (upstream's clients send arbitrary JSON maps) loses nothing when a kanban is routed.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Connection key of upstream's terminate kanban.
pub const TERMINATE_KEY: &str = "service-broker";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

impl Kanban {
    /// Decode a message body. `null` values count as absent (upstream's protobuf JSON omits
    /// zero values; some clients send `null`).
    pub fn decode(body: &[u8]) -> Result<Kanban, DecodeError> {
        let v: Value = serde_json::from_slice(body).map_err(DecodeError::Json)?;
        let v = match v {
            Value::Object(mut m) => {
                m.retain(|_, v| !v.is_null());
                Value::Object(m)
            }
            other => other,
        };
        serde_json::from_value(v).map_err(DecodeError::Shape)
    }

    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings, numbers and JSON maps always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn is_terminate(&self) -> bool {
        self.connection_key == TERMINATE_KEY
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
            Kanban::decode(br#"{"processNumber":"x"}"#),
            Err(DecodeError::Shape(_))
        ));
    }
}
