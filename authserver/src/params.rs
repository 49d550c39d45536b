//! Request parameters: form bodies and query strings parsed into a map that refuses repeats (RFC 6749 §3.1,
//! §3.2: parameters MUST NOT be included more than once) and bodies read with a size limit.

use std::collections::HashMap;

use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, header};

use crate::oauth_error::OAuthError;

/// Largest form body any endpoint reads.
pub const MAX_FORM_BYTES: usize = 16 * 1024;
/// Longest single parameter value.
pub const MAX_VALUE_BYTES: usize = 8 * 1024;

/// Parameters of one request, each at most once.
#[derive(Debug, Default, Clone)]
pub struct Params(HashMap<String, String>);

impl Params {
    /// Parses `application/x-www-form-urlencoded` text, refusing repeated names and oversized values.
    /// Empty values count as absent (RFC 6749 §3.1).
    pub fn parse(text: &str) -> Result<Self, OAuthError> {
        let mut map = HashMap::new();
        for (name, value) in url::form_urlencoded::parse(text.as_bytes()) {
            if value.len() > MAX_VALUE_BYTES {
                return Err(OAuthError::invalid_request(format!(
                    "parameter {name} is too long"
                )));
            }
            if value.is_empty() {
                continue;
            }
            if map.insert(name.to_string(), value.into_owned()).is_some() {
                return Err(OAuthError::invalid_request(format!(
                    "parameter {name} is repeated"
                )));
            }
        }
        Ok(Params(map))
    }

    /// Reads a form body: the content type must be a form and the body at most [`MAX_FORM_BYTES`].
    pub async fn from_form(headers: &HeaderMap, body: Body) -> Result<Self, OAuthError> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        if !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(OAuthError::invalid_request(
                "the body must be application/x-www-form-urlencoded",
            ));
        }
        let bytes = to_bytes(body, MAX_FORM_BYTES).await.map_err(|_| {
            OAuthError::invalid_request(format!("the body is larger than {MAX_FORM_BYTES} bytes"))
        })?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| OAuthError::invalid_request("the body is not UTF-8"))?;
        Self::parse(text)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn require(&self, name: &str) -> Result<&str, OAuthError> {
        self.get(name)
            .ok_or_else(|| OAuthError::invalid_request(format!("parameter {name} is missing")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_repeats_and_long_values_and_skips_empty() {
        let p = Params::parse("a=1&b=&c=x%20y").unwrap();
        assert_eq!(p.get("a"), Some("1"));
        assert_eq!(p.get("b"), None);
        assert_eq!(p.get("c"), Some("x y"));
        assert_eq!(
            Params::parse("a=1&a=2").unwrap_err().description,
            "parameter a is repeated"
        );
        let long = format!("a={}", "x".repeat(MAX_VALUE_BYTES + 1));
        assert_eq!(
            Params::parse(&long).unwrap_err().description,
            "parameter a is too long"
        );
        assert_eq!(
            p.require("z").unwrap_err().description,
            "parameter z is missing"
        );
    }
}
