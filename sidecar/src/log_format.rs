//! The JSON log line of an audit event, written straight into the line (issue 15's CPU target).
//!
//! `tracing_subscriber`'s JSON formatter serialises through serde into an adaptor that checks every piece
//! for UTF-8 and passes it on through `fmt::Write`, and formats its timestamp with `write!` each time: about
//! 21,000 instructions per audit line, a fifth of the sidecar's user-space work per proxied `tools/call`
//! (callgrind, sidecar/README.md). Audit lines are the one kind written for every call, so they take a direct
//! path that writes the very same bytes: the same keys in the same order, strings escaped as serde_json
//! escapes them, the timestamp as the formatter's `SystemTime` writes it (its date formatted once a second).
//! Every other line, and any audit line this path cannot write exactly (inside a span, a field that is not a
//! string, a year outside 0..=9999), goes to the formatter itself. The tests hold the two to the same bytes.
//!
//! ```text
//! {"timestamp":"2026-12-03T09:13:26.123456Z","level":"INFO","fields":{"message":"…",…},"target":"audit"}
//! ```

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::audit;

/// The sidecar's JSON event format: audit lines written directly, everything else by `inner`.
pub struct AuditJson<F = Format<Json>> {
    inner: F,
}

/// The format `main` installs: `tracing_subscriber`'s JSON format with its defaults, audit lines direct.
pub fn json() -> AuditJson {
    AuditJson {
        inner: tracing_subscriber::fmt::format().json(),
    }
}

impl<S, N, F> FormatEvent<S, N> for AuditJson<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        // The formatter adds the current span's fields to a line written inside one.
        let direct = meta.target() == audit::TARGET
            && event.parent().is_none()
            && ctx.lookup_current().is_none();
        if direct {
            let written = LINE.with_borrow_mut(|line| {
                line.clear();
                write_line(line, SystemTime::now(), meta.level().as_str(), event)
                    .then(|| writer.write_str(line))
            });
            if let Some(result) = written {
                return result;
            }
        }
        self.inner.format_event(ctx, writer, event)
    }
}

thread_local! {
    /// The line being written, kept between lines so that writing one allocates nothing.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
    /// `YYYY-MM-DDTHH:MM:SS.` of the second last written, and that second.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Writes the whole line into `line`; `false` when it cannot be written exactly as the formatter would.
fn write_line(line: &mut String, now: SystemTime, level: &str, event: &Event<'_>) -> bool {
    line.push_str("{\"timestamp\":\"");
    if !write_timestamp(line, now) {
        return false;
    }
    line.push_str("\",\"level\":\"");
    line.push_str(level);
    line.push_str("\",\"fields\":{");
    let mut fields = Fields {
        line,
        first: true,
        exact: true,
    };
    event.record(&mut fields);
    if !fields.exact {
        return false;
    }
    line.push_str("},\"target\":");
    escaped(line, event.metadata().target());
    line.push_str("}\n");
    true
}

/// The fields as `tracing_serde` writes them: strings as JSON strings, `Debug` (and `Display`) values as the
/// JSON string of their formatting. Numbers and booleans, which it writes as JSON numbers and booleans, send
/// the line to the formatter.
struct Fields<'a> {
    line: &'a mut String,
    first: bool,
    exact: bool,
}

impl Fields<'_> {
    fn key(&mut self, field: &Field) {
        if !self.first {
            self.line.push(',');
        }
        self.first = false;
        escaped(self.line, field.name());
        self.line.push(':');
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        escaped(self.line, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        self.line.push('"');
        if write!(Escaping(self.line), "{value:?}").is_err() {
            self.exact = false;
        }
        self.line.push('"');
    }

    fn record_f64(&mut self, _: &Field, _: f64) {
        self.exact = false;
    }

    fn record_i64(&mut self, _: &Field, _: i64) {
        self.exact = false;
    }

    fn record_u64(&mut self, _: &Field, _: u64) {
        self.exact = false;
    }

    fn record_i128(&mut self, _: &Field, _: i128) {
        self.exact = false;
    }

    fn record_u128(&mut self, _: &Field, _: u128) {
        self.exact = false;
    }

    fn record_bool(&mut self, _: &Field, _: bool) {
        self.exact = false;
    }

    fn record_bytes(&mut self, _: &Field, _: &[u8]) {
        self.exact = false;
    }

    fn record_error(&mut self, _: &Field, _: &(dyn std::error::Error + 'static)) {
        self.exact = false;
    }
}

/// `value` as a JSON string, escaped as serde_json escapes it.
fn escaped(line: &mut String, value: &str) {
    line.push('"');
    escape_into(line, value);
    line.push('"');
}

/// serde_json's escapes: `"` and `\` with a backslash, the control characters below 0x20 as `\b \t \n \f \r`
/// or `\u00xx` (lowercase hex); everything else, non-ASCII included, as itself.
fn escape_into(line: &mut String, value: &str) {
    let bytes = value.as_bytes();
    // Names, scopes and methods rarely hold anything to escape: then the value is copied whole.
    let Some(first) = bytes
        .iter()
        .position(|&b| b < 0x20 || b == b'"' || b == b'\\')
    else {
        line.push_str(value);
        return;
    };
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate().skip(first) {
        let escape: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            b'\t' => "\\t",
            b'\n' => "\\n",
            0x0c => "\\f",
            b'\r' => "\\r",
            0x00..=0x1f => "",
            _ => continue,
        };
        // Every byte escaped is ASCII, so `start..i` lies on character boundaries.
        line.push_str(&value[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            line.push_str("\\u00");
            line.push(char::from(HEX[usize::from(b >> 4)]));
            line.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            line.push_str(escape);
        }
        start = i + 1;
    }
    line.push_str(&value[start..]);
}

/// A `fmt::Write` that escapes what it is given into a JSON string's contents.
struct Escaping<'a>(&'a mut String);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_into(self.0, s);
        Ok(())
    }
}

/// `now` as `tracing_subscriber`'s `SystemTime` timer writes it (RFC 3339, UTC, microseconds); `false` for a
/// time it would write differently (before 1970, after 9999).
fn write_timestamp(line: &mut String, now: SystemTime) -> bool {
    let Ok(since) = now.duration_since(UNIX_EPOCH) else {
        return false;
    };
    let second = since.as_secs();
    let ok = SECOND.with_borrow_mut(|(at, text)| {
        if *at != second {
            text.clear();
            if !write_second(text, second) {
                return false;
            }
            *at = second;
        }
        line.push_str(text);
        true
    });
    if ok {
        let micros = since.subsec_micros();
        let mut digits = [b'0'; 6];
        let mut rest = micros;
        for digit in digits.iter_mut().rev() {
            *digit = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        line.extend(digits.iter().map(|&d| char::from(d)));
        line.push('Z');
    }
    ok
}

/// `YYYY-MM-DDTHH:MM:SS.` of a Unix second (proleptic Gregorian calendar, UTC).
fn write_second(text: &mut String, second: u64) -> bool {
    let days = second / 86_400;
    let of_day = second % 86_400;
    let (year, month, day) = civil_from_days(days);
    if year > 9999 {
        return false;
    }
    write!(
        text,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
    .is_ok()
}

/// Year, month and day of the `days`th day after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;
    use crate::audit::AuditEvent;
    use crate::token::Identity;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// The lines `emit` writes through `tracing_subscriber`'s JSON format and through ours.
    fn both(emit: impl Fn()) -> (String, String) {
        let (theirs, ours) = (Captured::default(), Captured::default());
        let reference = tracing_subscriber::fmt()
            .json()
            .with_writer(theirs.clone())
            .finish();
        tracing::subscriber::with_default(reference, &emit);
        let direct = tracing_subscriber::fmt()
            .json()
            .event_format(json())
            .with_writer(ours.clone())
            .finish();
        tracing::subscriber::with_default(direct, &emit);
        (theirs.text(), ours.text())
    }

    /// The line with its timestamp's value cut out, and the timestamp.
    fn split_timestamp(line: &str) -> (String, String) {
        let start = line.find("\"timestamp\":\"").expect("timestamp") + 13;
        let end = start + line[start..].find('"').expect("end of timestamp");
        (
            format!("{}{}", &line[..start], &line[end..]),
            line[start..end].to_owned(),
        )
    }

    fn identity(subject: &str, client_id: &str, scopes: &[&str]) -> Identity {
        Identity {
            subject: subject.into(),
            client_id: client_id.into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            expires_at: 0,
            token_id: None,
            caller: crate::caller::Caller::Person,
        }
    }

    #[test]
    fn audit_lines_are_the_bytes_the_json_formatter_writes() {
        let every_control: String = (0u8..0x20).map(char::from).collect();
        let awkward = [
            identity("alice", "client-1", &["mcp:read", "mcp:admin"]),
            identity("", "", &[]),
            identity("quote\" back\\slash", "tab\tnl\ncr\r", &["a\"b"]),
            identity(&every_control, "\u{7f}del", &["\u{8}\u{c}"]),
            identity("josé 🦀 \u{2028}", "ünïcode", &["é"]),
        ];
        for id in &awkward {
            for (target, decision) in [(None, "allow"), (Some("get_\"x\"\\\u{1}"), "deny")] {
                let (theirs, ours) = both(|| {
                    audit::record(&AuditEvent {
                        identity: Some(id),
                        method: "tools/call",
                        target,
                        decision,
                        reason: "ok",
                    });
                    audit::record(&AuditEvent {
                        identity: None,
                        method: "POST",
                        target,
                        decision,
                        reason: "token_missing",
                    });
                });
                let (theirs, ours): (Vec<_>, Vec<_>) = (
                    theirs.lines().map(split_timestamp).collect(),
                    ours.lines().map(split_timestamp).collect(),
                );
                assert_eq!(theirs.len(), 2, "{theirs:?}");
                for ((t, t_time), (o, o_time)) in theirs.iter().zip(&ours) {
                    assert_eq!(o, t, "for {id:?}");
                    assert_eq!(o_time.len(), t_time.len(), "{o_time} / {t_time}");
                }
            }
        }
    }

    #[test]
    fn other_lines_and_lines_it_cannot_write_exactly_go_to_the_formatter() {
        let (theirs, ours) = both(|| {
            tracing::info!(count = 3, "not audit");
            tracing::warn!(target: "audit", count = 3u64, ok = true, "a number and a boolean");
            tracing::info!(target: "audit", ratio = 0.5, "a float");
            let span = tracing::info_span!("connection", peer = "p");
            let _entered = span.enter();
            tracing::info!(target: "audit", subject = "s", "inside a span");
        });
        let strip =
            |text: &str| -> Vec<String> { text.lines().map(|l| split_timestamp(l).0).collect() };
        assert_eq!(strip(&ours), strip(&theirs));
        assert_eq!(strip(&ours).len(), 4);
        assert!(ours.contains("\"spans\""), "{ours}");
    }

    #[test]
    fn escapes_are_serde_jsons() {
        let all: String = (0u32..0x300)
            .filter_map(char::from_u32)
            .chain("🦀\u{2028}\u{fffd}".chars())
            .collect();
        for text in [all.as_str(), "", "plain", "\"", "\\\\", "a\u{0}b"] {
            let mut line = String::new();
            escaped(&mut line, text);
            assert_eq!(line, serde_json::to_string(text).unwrap(), "{text:?}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        for (seconds, micros, expected) in [
            (0, 0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400, 7, "2000-02-29T00:00:00.000007Z"),
            (951_868_799, 999_999, "2000-02-29T23:59:59.999999Z"),
            (1_709_164_800, 120_000, "2024-02-29T00:00:00.120000Z"),
            (1_798_761_599, 1, "2026-12-31T23:59:59.000001Z"),
            (1_798_761_600, 0, "2027-01-01T00:00:00.000000Z"),
            (4_102_444_800, 5, "2100-01-01T00:00:00.000005Z"),
            (253_402_300_799, 0, "9999-12-31T23:59:59.000000Z"),
        ] {
            let at = UNIX_EPOCH + Duration::new(seconds, micros * 1000 + 999);
            let mut line = String::new();
            assert!(write_timestamp(&mut line, at), "{expected}");
            assert_eq!(line, expected);
        }
        let mut line = String::new();
        assert!(!write_timestamp(
            &mut line,
            UNIX_EPOCH + Duration::from_secs(253_402_300_800)
        ));
        assert!(!write_timestamp(
            &mut line,
            UNIX_EPOCH - Duration::from_secs(1)
        ));
    }

    #[test]
    fn the_timestamp_is_the_timers() {
        use tracing_subscriber::fmt::time::FormatTime;
        // Within one second both read the same clock the same way; a second boundary between the two reads
        // is retried.
        for _ in 0..5 {
            let mut theirs = String::new();
            tracing_subscriber::fmt::time::SystemTime
                .format_time(&mut Writer::new(&mut theirs))
                .unwrap();
            let mut ours = String::new();
            assert!(write_timestamp(&mut ours, SystemTime::now()));
            if ours[..20] == theirs[..20] {
                assert_eq!(ours.len(), theirs.len(), "{ours} / {theirs}");
                return;
            }
        }
        panic!("timestamps never agreed on their second");
    }
}
