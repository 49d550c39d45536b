//! The W3C Trace Context `traceparent` value (https://www.w3.org/TR/trace-context/#traceparent-header), read
//! from an HTTP header or from an MCP message's `params._meta.traceparent` (SEP-414). Only its ids are kept,
//! for the audit record: a value that does not parse is ignored, as the recommendation says a receiver must,
//! so a client cannot put arbitrary text into the audit stream through it.

/// The ids of a valid `traceparent`, as the lowercase hex the value carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceIds {
    trace_id: [u8; 32],
    parent_id: [u8; 16],
    /// The trace flags' byte; of its bits only `sampled` (the lowest) is defined.
    flags: u8,
}

impl TraceIds {
    /// Parses a `traceparent` value; `None` for anything the recommendation says to ignore.
    pub fn parse(value: &str) -> Option<Self> {
        let bytes = value.as_bytes();
        // version "-" trace-id "-" parent-id "-" flags: 2 + 1 + 32 + 1 + 16 + 1 + 2.
        if bytes.len() < 55 {
            return None;
        }
        let (version, rest) = bytes.split_at(2);
        if !is_lower_hex(version) || version == b"ff" {
            return None;
        }
        // Version 00 is exactly 55 characters; a later version may append fields after another dash.
        if version == b"00" && bytes.len() != 55 || bytes.len() > 55 && bytes[55] != b'-' {
            return None;
        }
        let (dash1, rest) = rest.split_at(1);
        let (trace_id, rest) = rest.split_at(32);
        let (dash2, rest) = rest.split_at(1);
        let (parent_id, rest) = rest.split_at(16);
        let (dash3, flags) = rest.split_at(1);
        let flags = &flags[..2];
        let dashes = [dash1, dash2, dash3].iter().all(|d| *d == b"-");
        let all_zero = |id: &[u8]| id.iter().all(|&b| b == b'0');
        if !dashes
            || !is_lower_hex(trace_id)
            || !is_lower_hex(parent_id)
            || !is_lower_hex(flags)
            || all_zero(trace_id)
            || all_zero(parent_id)
        {
            return None;
        }
        let flags = u8::from_str_radix(std::str::from_utf8(flags).ok()?, 16).ok()?;
        let mut ids = TraceIds {
            trace_id: [0; 32],
            parent_id: [0; 16],
            flags,
        };
        ids.trace_id.copy_from_slice(trace_id);
        ids.parent_id.copy_from_slice(parent_id);
        Some(ids)
    }

    /// The ids of a request's `traceparent` header, given all its values: one valid value, else none (a
    /// request with several is discarded, as the recommendation says).
    pub fn of_header<'v>(values: impl IntoIterator<Item = &'v [u8]>) -> Option<Self> {
        let mut values = values.into_iter();
        match (values.next(), values.next()) {
            (Some(value), None) => Self::parse(std::str::from_utf8(value).ok()?),
            _ => None,
        }
    }

    /// The trace's id: 32 lowercase hex digits.
    pub fn trace_id(&self) -> &str {
        std::str::from_utf8(&self.trace_id).unwrap_or_default()
    }

    /// The id of the caller's span: 16 lowercase hex digits.
    pub fn parent_id(&self) -> &str {
        std::str::from_utf8(&self.parent_id).unwrap_or_default()
    }

    /// Whether the caller may have recorded its span (the `sampled` flag), which a parent-based sampler follows.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

fn is_lower_hex(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";

    #[test]
    fn valid_values_give_their_ids_and_everything_else_is_ignored() {
        let ok = format!("00-{TRACE}-{PARENT}-01");
        let ids = TraceIds::parse(&ok).expect("valid");
        assert_eq!((ids.trace_id(), ids.parent_id()), (TRACE, PARENT));
        for (flags, sampled) in [
            ("01", true),
            ("00", false),
            ("03", true),
            ("02", false),
            ("ff", true),
        ] {
            let ids = TraceIds::parse(&format!("00-{TRACE}-{PARENT}-{flags}")).expect("valid");
            assert_eq!(ids.sampled(), sampled, "{flags}");
        }
        let cases: &[(String, bool)] = &[
            (ok.clone(), true),
            (format!("00-{TRACE}-{PARENT}-00"), true),
            // A later version may carry more after a dash; version 00 may not.
            (format!("01-{TRACE}-{PARENT}-01-extra"), true),
            (format!("00-{TRACE}-{PARENT}-01-extra"), false),
            (format!("01-{TRACE}-{PARENT}-01extra"), false),
            (format!("ff-{TRACE}-{PARENT}-01"), false),
            (format!("00-{}-{PARENT}-01", TRACE.to_uppercase()), false),
            (format!("00-{}-{PARENT}-01", "0".repeat(32)), false),
            (format!("00-{TRACE}-{}-01", "0".repeat(16)), false),
            (format!("00-{TRACE}-{PARENT}-0g"), false),
            (format!("00_{TRACE}-{PARENT}-01"), false),
            (format!("00-{TRACE}-{PARENT}"), false),
            (format!("0-{TRACE}-{PARENT}-01"), false),
            (format!("00-{TRACE}-{PARENT}-01 "), false),
            (format!("00-{}\"-{PARENT}-01", &TRACE[..31]), false),
            (String::new(), false),
            ("é".repeat(30), false),
        ];
        for (value, valid) in cases {
            assert_eq!(TraceIds::parse(value).is_some(), *valid, "{value:?}");
        }
    }

    #[test]
    fn a_header_counts_only_when_it_is_there_once() {
        let ok = format!("00-{TRACE}-{PARENT}-01");
        let ok = ok.as_bytes();
        assert!(TraceIds::of_header([ok]).is_some());
        assert!(TraceIds::of_header([ok, ok]).is_none());
        assert!(TraceIds::of_header(std::iter::empty()).is_none());
        assert!(TraceIds::of_header([&b"\xff"[..]]).is_none());
    }
}
