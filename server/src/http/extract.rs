//! Reading requests into validated values, with JSON errors instead of axum's
//! plain-text rejections: bodies under a size limit, query strings field by field.

use std::collections::HashMap;

use axum::body::Body;
use axum::http::HeaderMap;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Reads a body of at most `limit` bytes within `timeout`; `flag` names the
/// setting for the 413 message. The time limit keeps a client that trickles its
/// body from holding a connection and a request slot forever.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    flag: &str,
    timeout: std::time::Duration,
) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::TooLarge {
        code: "payload_too_large",
        message: format!("request body exceeds the limit of {limit} bytes (set by {flag})"),
        limit,
    };
    check_content_type(headers)?;
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect())
        .await
        .map_err(|_| ApiError::RequestTimeout(timeout))?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ApiError::bad_request(
            "invalid_body",
            format!("cannot read the request body: {e}"),
        )),
    }
}

/// Bodies are JSON: a request may say so (`application/json`, any `+json`
/// type), say nothing, or send curl's default for `-d`
/// (`application/x-www-form-urlencoded`, taken as JSON so the walk-through's
/// one-liners work); any other type is answered 415 before the body is read.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(axum::http::header::CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    let accepted = essence.as_deref().is_some_and(|t| {
        t == "application/json" || t == "application/x-www-form-urlencoded" || t.ends_with("+json")
    });
    if accepted {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        ))
    }
}

/// Parses a JSON body; errors name the field that is wrong (`events[2].type: ...`).
///
/// A body that parses takes serde_json's plain path; only a refused one is
/// parsed again with the path tracking that names the field (which costs
/// about a third of the parse on every request).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match serde_json::from_slice(bytes) {
        Ok(value) => Ok(value),
        Err(_) => parse_json_explained(bytes),
    }
}

/// The slow path of `parse_json`: the same parse, tracking where it fails.
fn parse_json_explained<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("malformed JSON: {inner}")
        } else if path == "." {
            format!("invalid request body: {inner}")
        } else {
            format!("{path}: {inner}")
        };
        ApiError::bad_request("invalid_body", message)
    })?;
    // Only whitespace may follow the value.
    de.end()
        .map_err(|e| ApiError::bad_request("invalid_body", format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// Query parameters, taken one by one; unknown ones are an error.
pub struct QueryParams(HashMap<String, String>);

impl QueryParams {
    /// Parses `a=1&b=x` (form encoding: `+` is a space, `%XX` a byte). Every
    /// name and value must decode to UTF-8; a name given twice is an error.
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let decode = |part: &str| -> Result<String, ApiError> {
            let spaced = part.replace('+', " ");
            percent_encoding::percent_decode_str(&spaced)
                .decode_utf8()
                .map(|text| text.into_owned())
                .map_err(|_| {
                    ApiError::bad_request(
                        "invalid_query",
                        format!("query string part '{part}' does not decode to UTF-8"),
                    )
                })
        };
        let mut map = HashMap::new();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode(key)?;
            if map.insert(key.clone(), decode(value)?).is_some() {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("query parameter '{key}' is given twice"),
                ));
            }
        }
        Ok(Self(map))
    }

    pub fn take_str(&mut self, name: &str) -> Option<String> {
        self.0.remove(name)
    }

    pub fn take_u64(&mut self, name: &str) -> Result<Option<u64>, ApiError> {
        self.take_str(name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(
                        "invalid_query",
                        format!(
                            "query parameter '{name}' must be a non-negative integer, got '{v}'"
                        ),
                    )
                })
            })
            .transpose()
    }

    /// A number in `min..=max`, or `default` when absent.
    /// `true` or `false`; `None` when absent.
    pub fn take_bool(&mut self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.take_str(name).as_deref() {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(other) => Err(ApiError::bad_request(
                "invalid_query",
                format!("{name} must be true or false, got '{other}'"),
            )),
        }
    }

    pub fn take_bounded(
        &mut self,
        name: &str,
        min: u64,
        max: u64,
        default: u64,
    ) -> Result<u64, ApiError> {
        let value = self.take_u64(name)?.unwrap_or(default);
        if !(min..=max).contains(&value) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("query parameter '{name}' must be between {min} and {max}, got {value}"),
            ));
        }
        Ok(value)
    }

    /// Rejects every parameter not taken.
    pub fn finish(self) -> Result<(), ApiError> {
        match self.0.keys().min() {
            Some(name) => Err(ApiError::bad_request(
                "invalid_query",
                format!("unknown query parameter '{name}'"),
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode_strictly() {
        let mut params = QueryParams::parse(Some("a=x%20y+z&b=%C3%A9&c&d=")).expect("parses");
        assert_eq!(params.take_str("a").as_deref(), Some("x y z"));
        assert_eq!(params.take_str("b").as_deref(), Some("é"));
        assert_eq!(params.take_str("c").as_deref(), Some(""));
        assert_eq!(params.take_str("d").as_deref(), Some(""));
        assert!(params.finish().is_ok());
        for bad in ["a=%FF", "%FE=1", "a=1&a=2", "a=%C0%AE"] {
            assert!(QueryParams::parse(Some(bad)).is_err(), "{bad}");
        }
        assert!(QueryParams::parse(None).expect("empty").finish().is_ok());
    }
}
