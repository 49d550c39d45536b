//! JSON that means one thing to every reader: an object naming a member twice is refused.
//!
//! RFC 8259 §4 leaves duplicate names to each parser. Most keep the last, some the first, some refuse; a
//! request the sidecar decides on as `get_user` must not reach an upstream that reads `delete_user`.
//!
//! The parsed document borrows from the body: every request is parsed once to be decided on, and a tree of owned
//! strings and ordered maps cost about a sixth of the sidecar's work per request. serde_json still reads the
//! text (grammar, UTF-8, escapes, numbers, nesting limit); only the tree it fills is ours.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

/// A JSON value whose strings point into the text they were read from when they hold no escape.
#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, as serde_json reads it.
    Number(Number),
    /// A string.
    String(Cow<'a, str>),
    /// An array.
    Array(Vec<Json<'a>>),
    /// An object's members in the order written; names are unique.
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    /// The member `name` of an object.
    pub fn get(&self, name: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(members) => members.iter().find(|(n, _)| n == name).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The item at `index` of an array.
    pub fn at(&self, index: usize) -> Option<&Json<'a>> {
        match self {
            Json::Array(items) => items.get(index),
            _ => None,
        }
    }

    /// The text of a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    /// Whether this is `null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }

    /// Whether this is an object.
    pub fn is_object(&self) -> bool {
        matches!(self, Json::Object(_))
    }

    /// Whether this is an array.
    pub fn is_array(&self) -> bool {
        matches!(self, Json::Array(_))
    }

    /// Whether this is a string.
    pub fn is_string(&self) -> bool {
        matches!(self, Json::String(_))
    }

    /// Whether this is a number without fraction or exponent that fits 64 bits, signed or not.
    pub fn is_integer(&self) -> bool {
        matches!(self, Json::Number(n) if n.is_i64() || n.is_u64())
    }

    /// The same value as an owned `serde_json::Value`.
    pub fn to_value(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => Value::Number(n.clone()),
            Json::String(s) => Value::String(s.as_ref().to_owned()),
            Json::Array(items) => Value::Array(items.iter().map(Json::to_value).collect()),
            Json::Object(members) => Value::Object(
                members
                    .iter()
                    .map(|(n, v)| (n.as_ref().to_owned(), v.to_value()))
                    .collect(),
            ),
        }
    }
}

/// Parses `body`, refusing any object with a repeated member name.
pub fn parse(body: &[u8]) -> serde_json::Result<Json<'_>> {
    serde_json::from_slice::<Json<'_>>(body)
}

/// Parses `body` into an owned `Value`, with the same refusals as [`parse`].
pub fn from_slice(body: &[u8]) -> serde_json::Result<Value> {
    parse(body).map(|json| json.to_value())
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Json<'de>, E> {
        // JSON has no NaN or infinity, so every parsed float has a Number.
        Ok(Number::from_f64(v).map_or(Json::Null, Json::Number))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(v)))
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut members: Vec<(Cow<'de, str>, Json<'de>)> = Vec::new();
        while let Some(name) = map.next_key_seed(Name)? {
            // Small objects (every object of an MCP request) are searched as they grow; a large one is checked
            // once it is complete, sorted, so a hostile body cannot make the check quadratic.
            if members.len() < SEARCHED_AS_READ && members.iter().any(|(n, _)| *n == name) {
                return Err(repeated::<A::Error>(&name));
            }
            members.push((name, map.next_value()?));
        }
        if members.len() > SEARCHED_AS_READ {
            let mut names: Vec<&str> = members.iter().map(|(n, _)| n.as_ref()).collect();
            names.sort_unstable();
            if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
                return Err(repeated::<A::Error>(pair[0]));
            }
        }
        Ok(Json::Object(members))
    }
}

/// Members beyond which an object's names are checked sorted rather than searched one by one.
const SEARCHED_AS_READ: usize = 16;

fn repeated<E: de::Error>(name: &str) -> E {
    E::custom(format!("duplicate member {name:?}"))
}

/// A member name, borrowed when the text holds no escape (serde's own `Cow<str>` always copies).
struct Name;

impl<'de> DeserializeSeed<'de> for Name {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Name {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_parse_as_serde_json_parses_them() {
        for text in [
            r#"{"a":[1,-2,3.5,"x",true,null,{"b":{}}],"c":18446744073709551615}"#,
            r#"{"esc\u0061ped":"line\nbreak \u00e9 \ud83d\ude00","plain":"é"}"#,
            r#"[]"#,
            r#""just a string""#,
            r#"-0.0e5"#,
        ] {
            assert_eq!(
                from_slice(text.as_bytes()).unwrap(),
                serde_json::from_str::<Value>(text).unwrap(),
                "{text}"
            );
        }
    }

    #[test]
    fn strings_without_escapes_point_into_the_text() {
        let text = br#"{"name":"get_user","esc\u0061ped":"a\tb"}"#;
        let Json::Object(members) = parse(text).unwrap() else {
            panic!("an object")
        };
        assert!(matches!(members[0].0, Cow::Borrowed("name")));
        assert!(matches!(
            members[0].1,
            Json::String(Cow::Borrowed("get_user"))
        ));
        assert_eq!(members[1].0, "escaped");
        assert!(matches!(members[1].0, Cow::Owned(_)));
        assert_eq!(members[1].1.as_str(), Some("a\tb"));
    }

    #[test]
    fn a_repeated_member_is_refused_at_any_depth_and_size() {
        let many = |repeat: &str| {
            let mut text: Vec<String> = (0..40).map(|i| format!("\"m{i}\":{i}")).collect();
            text.push(format!("\"{repeat}\":0"));
            format!("{{{}}}", text.join(","))
        };
        let cases = [
            (
                r#"{"method":"tools/call","method":"tools/list"}"#.to_owned(),
                "method",
            ),
            (
                r#"{"params":{"name":"get_user","name":"delete_user"}}"#.into(),
                "name",
            ),
            (r#"[{"a":1},{"b":{"c":1,"c":2}}]"#.into(), "c"),
            (r#"{"m\u0065thod":1,"method":2}"#.into(), "method"),
            // Past the members searched as read: the sorted check finds it, first or last.
            (many("m0"), "m0"),
            (many("m39"), "m39"),
            (many("m\\u0031"), "m1"),
        ];
        for (text, name) in cases {
            let error = parse(text.as_bytes()).unwrap_err().to_string();
            assert!(
                error.starts_with(&format!("duplicate member {name:?}")),
                "{text}: {error}"
            );
        }
        // The same name in sibling objects is no repeat, and a large object of distinct names is whole.
        assert!(parse(br#"[{"a":1},{"a":2}]"#).is_ok());
        let distinct = many("m40");
        assert_eq!(
            from_slice(distinct.as_bytes()).unwrap(),
            serde_json::from_str::<Value>(&distinct).unwrap()
        );
    }

    #[test]
    fn accessors_read_what_they_name() {
        let doc =
            parse(br#"{"id":7,"big":18446744073709551615,"f":1.5,"s":"x","a":[null],"o":{}}"#)
                .unwrap();
        assert_eq!(doc.get("s").and_then(Json::as_str), Some("x"));
        assert!(doc.get("id").is_some_and(Json::is_integer));
        assert!(doc.get("big").is_some_and(Json::is_integer));
        assert!(!doc.get("f").is_some_and(Json::is_integer));
        assert!(
            doc.get("a")
                .and_then(|a| a.at(0))
                .is_some_and(Json::is_null)
        );
        assert!(doc.get("o").is_some_and(Json::is_object));
        assert!(doc.get("a").is_some_and(Json::is_array));
        assert_eq!(doc.get("missing"), None);
        assert_eq!(doc.at(0), None);
        assert_eq!(doc.get("id").unwrap().to_value(), json!(7));
    }
}
