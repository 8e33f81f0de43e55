//! KurrentDB's stream metadata streams (`$$name`) over Skald's stream
//! metadata: a stream's metadata is read as the last event of `$$name`, of
//! type `$metadata`, and written by appending one such event. Its JSON maps
//! both ways: `$maxCount`, `$maxAge` (seconds) and `$tb` are Skald's
//! `max_count`, `max_age_secs` and `truncate_before`; every other field is
//! Skald's custom metadata, kept as given. `$acl` is refused: Skald's access
//! control is its tokens, and an ACL stored but not enforced would mislead.
//!
//! Skald keeps the current metadata and its version, not the history, so
//! `$$name` holds one event: the current metadata at the revision of its
//! version (0 for the first change, one more for each).

use serde_json::{Map, Value};
use tonic::Status;

use crate::model::{check_json_text, MetadataVersion, StreamMetadata, StreamName};

/// The prefix that turns a stream name into its metadata stream's.
pub const PREFIX: &str = "$$";
/// The type of a metadata stream's events.
pub const EVENT_TYPE: &str = "$metadata";

const MAX_COUNT: &str = "$maxCount";
const MAX_AGE: &str = "$maxAge";
const TRUNCATE_BEFORE: &str = "$tb";
const ACL: &str = "$acl";

/// A stream's metadata as the JSON of a `$metadata` event.
pub fn to_json(metadata: &StreamMetadata) -> Vec<u8> {
    let mut fields: Map<String, Value> = metadata
        .custom
        .as_deref()
        .and_then(|custom| serde_json::from_str(custom).ok())
        .unwrap_or_default();
    for (key, value) in [
        (MAX_COUNT, metadata.max_count),
        (MAX_AGE, metadata.max_age_secs),
        (TRUNCATE_BEFORE, metadata.truncate_before),
    ] {
        // A custom field of the same name (set over HTTP) is not a limit.
        fields.remove(key);
        if let Some(value) = value {
            fields.insert(key.to_owned(), value.into());
        }
    }
    serde_json::to_vec(&Value::Object(fields)).unwrap_or_else(|_| b"{}".to_vec())
}

/// The metadata a `$metadata` event's JSON sets; `INVALID_ARGUMENT` naming
/// the field when it is not one Skald takes.
pub fn from_json(data: &[u8], max_custom_bytes: usize) -> Result<StreamMetadata, Status> {
    let invalid = |message: String| Status::invalid_argument(format!("stream metadata: {message}"));
    let text = std::str::from_utf8(data).map_err(|_| invalid("not UTF-8".into()))?;
    check_json_text(text).map_err(|e| invalid(e.to_string()))?;
    let mut fields: Map<String, Value> = match serde_json::from_str(text) {
        Ok(Value::Object(fields)) => fields,
        Ok(_) => return Err(invalid("must be a JSON object".into())),
        Err(e) => return Err(invalid(format!("not JSON: {e}"))),
    };
    if fields.remove(ACL).is_some_and(|acl| !acl.is_null()) {
        return Err(invalid(
            "$acl is not supported: Skald's access control is its API tokens (docs/security.md)"
                .into(),
        ));
    }
    let mut number = |key: &str, min: u64| -> Result<Option<u64>, Status> {
        match fields.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => match value.as_u64() {
                Some(n) if n >= min => Ok(Some(n)),
                _ => Err(invalid(format!(
                    "{key} must be a whole number of at least {min}, not {value}"
                ))),
            },
        }
    };
    let max_count = number(MAX_COUNT, 1)?;
    let max_age_secs = number(MAX_AGE, 1)?;
    let truncate_before = number(TRUNCATE_BEFORE, 0)?;
    let custom = if fields.is_empty() {
        None
    } else {
        let custom = Value::Object(fields).to_string();
        if custom.len() > max_custom_bytes {
            return Err(invalid(format!(
                "the custom fields are {} bytes, above the limit of {max_custom_bytes} bytes (set by --max-custom-metadata-bytes)",
                custom.len()
            )));
        }
        Some(custom)
    };
    Ok(StreamMetadata {
        max_count,
        max_age_secs,
        truncate_before,
        custom,
    })
}

/// The id of the event that stands for a metadata version: derived from the
/// stream and the revision, so every read of one version gives the same id.
pub fn event_id(stream: &StreamName, version: &MetadataVersion) -> uuid::Uuid {
    let hash = u64::from(crc32fast::hash(stream.as_str().as_bytes()));
    uuid::Uuid::from_u64_pair(hash << 32 | 0x4d45_5441, version.revision)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn metadata(json: &str) -> Result<StreamMetadata, Status> {
        from_json(json.as_bytes(), 64 << 10)
    }

    #[test]
    fn kurrentdb_fields_map_to_skald_limits_and_the_rest_is_custom() {
        let m = metadata(r#"{"$maxCount": 10, "$maxAge": 60, "$tb": 3, "owner": "ops", "n": [1]}"#)
            .expect("valid");
        assert_eq!(
            (m.max_count, m.max_age_secs, m.truncate_before),
            (Some(10), Some(60), Some(3))
        );
        assert_eq!(m.custom.as_deref(), Some(r#"{"n":[1],"owner":"ops"}"#));
        let back: Value = serde_json::from_slice(&to_json(&m)).expect("json");
        assert_eq!(
            back,
            serde_json::json!({"$maxCount": 10, "$maxAge": 60, "$tb": 3, "owner": "ops", "n": [1]})
        );
        let empty = metadata("{}").expect("valid");
        assert_eq!(empty, StreamMetadata::default());
        assert_eq!(to_json(&empty), b"{}");
        assert_eq!(
            metadata(r#"{"$maxCount": null}"#).expect("valid").max_count,
            None
        );
    }

    #[test]
    fn what_skald_cannot_keep_is_refused_by_name() {
        for (json, names) in [
            (r#"{"$maxCount": 0}"#, "$maxCount"),
            (r#"{"$maxCount": -1}"#, "$maxCount"),
            (r#"{"$maxAge": "1h"}"#, "$maxAge"),
            (r#"{"$tb": 1.5}"#, "$tb"),
            (r#"{"$acl": {"$r": "$all"}}"#, "$acl"),
            (r#"{"$acl": "$admins"}"#, "$acl"),
            ("[1]", "object"),
            ("{", "JSON"),
        ] {
            let refused = metadata(json).expect_err(json);
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{json}");
            assert!(
                refused.message().contains(names),
                "{json}: {}",
                refused.message()
            );
        }
        let large = format!(r#"{{"k": "{}"}}"#, "x".repeat(100));
        let refused = from_json(large.as_bytes(), 64).expect_err("too large");
        assert!(refused.message().contains("--max-custom-metadata-bytes"));
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config(256))]
        #[test]
        fn metadata_round_trips_through_its_json(
            max_count in proptest::option::of(1u64..),
            max_age_secs in proptest::option::of(1u64..),
            truncate_before in proptest::option::of(any::<u64>()),
            custom in proptest::collection::btree_map("[a-z]{1,8}", any::<i64>(), 0..4),
        ) {
            let custom = (!custom.is_empty()).then(|| serde_json::to_string(&custom).expect("json"));
            let m = StreamMetadata { max_count, max_age_secs, truncate_before, custom };
            prop_assert_eq!(from_json(&to_json(&m), 64 << 10).expect("valid"), m);
        }
    }
}
