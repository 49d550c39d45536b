//! The audit stream of mcp-authz: one record per authorization decision, from the sidecar (each MCP operation it
//! refuses, each tool call it lets through) and from the authorization server (each token, consent, sign-in,
//! registration and revocation it grants or refuses), in one schema, as JSON lines on a stream of their own
//! (stdout unless told otherwise; the programs' operational logs go to stderr).
//!
//! ```text
//! {"schema":"mcp-authz.audit/v1","time":"2026-12-04T06:14:09.123Z","source":"sidecar","event":"mcp",
//!  "outcome":"deny","reason":"insufficient_scope","action":"","subject":"alice","client_id":"https://…",
//!  "caller":"person","service":"https://mcp.example.com/files","method":"tools/call","tool":"delete_file",
//!  "scopes":"files:read","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","parent_id":"00f067aa0ba902b7"}
//! ```
//!
//! Every field is always present (an empty string where it does not apply), so a pipeline can index the
//! stream without knowing which program wrote a line. The fields are documented in the README's "Audit stream"
//! section; a field is only ever added under a new `schema` value.
//!
//! Records are handed to a writer thread through [`pipe::LogPipe`]: a stalled stdout drops and counts them, it
//! never stalls a request.

pub mod panics;
pub mod pipe;
pub mod stop;
pub mod trace;

use std::cell::RefCell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

pub use trace::TraceIds;

/// The `schema` value of this version of the record.
pub const SCHEMA: &str = "mcp-authz.audit/v1";

/// One decision. Borrowed: a record is written at once and never kept.
#[derive(Debug, Default, Clone)]
pub struct Record<'a> {
    /// `sidecar` or `authserver`.
    pub source: &'a str,
    /// What was decided on: `mcp` (an MCP operation at a sidecar) or the server's endpoint (`token`,
    /// `authorize`, `login`, `consent`, `introspect`, `register`, `revoke`, `admin`, `admin_revoke`).
    pub event: &'a str,
    /// `allow` or `deny`.
    pub outcome: &'a str,
    /// Why: at the sidecar a word from a fixed set (its metrics' `reason` labels, `batch_refused`,
    /// `more_operations`); at the server the grant type, the OAuth error with its description, or a sentence.
    pub reason: &'a str,
    /// What the server did when it allowed (`issued`, `granted`, `registered`, `revoked`) or how it refused
    /// (`refused`, `denied`); empty at the sidecar.
    pub action: &'a str,
    /// The person or client the token speaks for (`sub`), when known.
    pub subject: &'a str,
    /// The OAuth client.
    pub client_id: &'a str,
    /// `person` or `machine` (the token's `mcp_authz_caller`), when known.
    pub caller: &'a str,
    /// The MCP service: its resource URL.
    pub service: &'a str,
    /// The JSON-RPC method, or the HTTP method of a request refused before its body was read.
    pub method: &'a str,
    /// The tool, resource URI or prompt the method names.
    pub tool: &'a str,
    /// The scopes the token held (sidecar) or that were granted or asked for (server), space-separated.
    pub scopes: &'a str,
    /// The W3C trace id of the request (its `traceparent` header, else its message's `_meta.traceparent`).
    pub trace_id: &'a str,
    /// The caller's span id from the same `traceparent`.
    pub parent_id: &'a str,
}

impl<'a> Record<'a> {
    /// Takes the ids of `trace`, if any.
    pub fn traced(mut self, trace: Option<&'a TraceIds>) -> Self {
        if let Some(ids) = trace {
            self.trace_id = ids.trace_id();
            self.parent_id = ids.parent_id();
        }
        self
    }

    /// The fields after `schema` and `time`, in the schema's order.
    fn fields(&self) -> [(&'static str, &'a str); 14] {
        [
            ("source", self.source),
            ("event", self.event),
            ("outcome", self.outcome),
            ("reason", self.reason),
            ("action", self.action),
            ("subject", self.subject),
            ("client_id", self.client_id),
            ("caller", self.caller),
            ("service", self.service),
            ("method", self.method),
            ("tool", self.tool),
            ("scopes", self.scopes),
            ("trace_id", self.trace_id),
            ("parent_id", self.parent_id),
        ]
    }

    /// Appends the record as one JSON line to `line`. Written directly rather than through serde: a sidecar
    /// writes one per forwarded call, and serde's string path cost about 4,000 instructions a record (the
    /// bytes are the same as serde_json's; the tests hold them to it).
    pub fn write_line(&self, line: &mut Vec<u8>, now: time::OffsetDateTime) {
        line.extend_from_slice(b"{\"schema\":\"");
        line.extend_from_slice(SCHEMA.as_bytes());
        line.extend_from_slice(b"\",\"time\":\"");
        write_timestamp(line, now);
        for (name, value) in self.fields() {
            line.extend_from_slice(b"\",\"");
            line.extend_from_slice(name.as_bytes());
            line.extend_from_slice(b"\":\"");
            write_bounded(line, value);
        }
        line.extend_from_slice(b"\"}\n");
    }
}

/// The most bytes of a field a record carries, counted as written (escapes included: a control character is six
/// bytes there), plus the `…` that ends a cut value. Tool names, scopes, client ids and subjects come from requests (a tool name may be as long as a
/// body): a longer value is cut at a character boundary and ends with `…`. With the sidecar's cap on records
/// per request, a request's records stay a small fraction of the queue however it is made.
pub const MAX_FIELD_BYTES: usize = 1024;

/// Bytes `b` takes in a JSON string as serde_json writes it (a byte of a multi-byte character: one).
fn escaped_len(b: u8) -> usize {
    match b {
        b'"' | b'\\' | 0x08 | 0x0c | b'\n' | b'\r' | b'\t' => 2,
        0..=0x1f => 6,
        _ => 1,
    }
}

/// Writes `value` escaped, cut where it would pass [`MAX_FIELD_BYTES`] as written: before the character that
/// would pass it, with `…` after.
fn write_bounded(out: &mut Vec<u8>, value: &str) {
    // Six bytes is the most one byte can take written: shorter values can never be cut.
    if value.len() <= MAX_FIELD_BYTES / 6 {
        return write_escaped(out, value.as_bytes());
    }
    let mut written = 0;
    for (at, &b) in value.as_bytes().iter().enumerate() {
        written += escaped_len(b);
        if written > MAX_FIELD_BYTES {
            let mut cut = at;
            while !value.is_char_boundary(cut) {
                cut -= 1;
            }
            write_escaped(out, &value.as_bytes()[..cut]);
            out.extend_from_slice("…".as_bytes());
            return;
        }
    }
    write_escaped(out, value.as_bytes());
}

/// `bytes` (UTF-8) as the inside of a JSON string, escaped as serde_json escapes: the short forms where JSON
/// has one, `\u00xx` for other control characters, everything else as it is.
fn write_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut plain_from = 0;
    let mut at = 0;
    while at < bytes.len() {
        // Eight bytes at a time while none of them needs an escape, as in nearly every value (names, scopes,
        // ids): a record's fields are read once each, on the request's path.
        if let Some(word) = bytes
            .get(at..at + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            && !any_needs_escape(u64::from_le_bytes(word))
        {
            at += 8;
            continue;
        }
        let b = bytes[at];
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => {
                at += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[plain_from..at]);
        if short.is_empty() {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            out.extend_from_slice(short);
        }
        at += 1;
        plain_from = at;
    }
    out.extend_from_slice(&bytes[plain_from..]);
}

/// Whether any of the eight bytes of `word` is a control character, `"` or `\`. Exact for the word as a
/// whole (it may point at the wrong byte, so the caller then looks byte by byte): a byte below 0x20 borrows
/// through `- 0x20`, a byte equal to the other two becomes zero and borrows through `- 1`, and a byte with its
/// top bit set (part of a multi-byte character) is masked out by `!word`.
fn any_needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const TOPS: u64 = 0x8080_8080_8080_8080;
    let zero_in = |x: u64| x.wrapping_sub(ONES) & !x;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word;
    let quote = zero_in(word ^ (ONES * u64::from(b'"')));
    let backslash = zero_in(word ^ (ONES * u64::from(b'\\')));
    (below_space | quote | backslash) & TOPS != 0
}

/// RFC 3339 in UTC with milliseconds, as log pipelines parse it without a format of their own. The part up to
/// the second is formatted once a second per thread.
fn write_timestamp(out: &mut Vec<u8>, now: time::OffsetDateTime) {
    thread_local! {
        static SECOND: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    let now = now.to_offset(time::UtcOffset::UTC);
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != now.unix_timestamp() {
            let format =
                time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
            *text = now.format(&format).unwrap_or_default();
            *second = now.unix_timestamp();
        }
        out.extend_from_slice(text.as_bytes());
    });
    let millis = now.millisecond();
    out.extend_from_slice(&[
        b'.',
        b'0' + (millis / 100) as u8,
        b'0' + (millis / 10 % 10) as u8,
        b'0' + (millis % 10) as u8,
        b'Z',
    ]);
}

/// The stream audit records are written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The default: the programs' logs are on stderr, so stdout is the audit stream alone.
    Stdout,
    /// Beside the logs.
    Stderr,
    /// Nowhere (the server's store rows remain).
    Off,
}

impl std::str::FromStr for Destination {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stdout" => Ok(Self::Stdout),
            "stderr" => Ok(Self::Stderr),
            "off" => Ok(Self::Off),
            other => Err(format!(
                "audit output must be stdout, stderr or off, not {other:?}"
            )),
        }
    }
}

/// A program's two output streams, each written by a thread of its own.
pub struct Outputs {
    /// The logs, on stderr: a `MakeWriter` for `tracing_subscriber::fmt`.
    pub logs: pipe::LogPipe,
    /// The audit stream, when it has a pipe of its own (on stdout).
    audit: Option<pipe::LogPipe>,
    destination: Destination,
    /// Set once the streams were given their time: a stop already spent it, and dropping must not wait again.
    closed: AtomicBool,
}

impl Outputs {
    /// Starts the log pipe on stderr and the audit output at `destination`, each queueing at most `capacity`
    /// bytes, and makes the latter the output of [`emit`]. Audit records sent to stderr share the log pipe: two
    /// writers of one pipe could interleave inside a line.
    pub fn start(
        destination: Destination,
        capacity: usize,
        dropped: &pipe::Dropped,
    ) -> std::io::Result<Self> {
        let logs = pipe::LogPipe::spawn(std::io::stderr(), capacity, dropped.clone())?;
        let audit = match destination {
            Destination::Stdout => Some(pipe::LogPipe::spawn(
                std::io::stdout(),
                capacity,
                dropped.clone(),
            )?),
            Destination::Stderr | Destination::Off => None,
        };
        match (&audit, destination) {
            (Some(audit), _) => install(audit.clone()),
            (None, Destination::Stderr) => install(logs.clone()),
            (None, _) => false,
        };
        Ok(Outputs {
            logs,
            audit,
            destination,
            closed: AtomicBool::new(false),
        })
    }

    /// Waits up to `grace` for the audit records queued so far to be written; returns whether they were. A
    /// stopping program calls it before it stops tracing, whose flush may wait on a collector: the records are
    /// what must not be lost when the grace period ends in a SIGKILL.
    pub fn flush_audit(&self, grace: std::time::Duration) -> bool {
        match (&self.audit, self.destination) {
            (Some(audit), _) => audit.flush(grace),
            (None, Destination::Stderr) => self.logs.flush(grace),
            (None, _) => true,
        }
    }

    /// Gives each stream up to `grace` to write what it queued, for exit: a stalled reader must not keep a
    /// terminated process alive. Dropping the outputs does this with [`EXIT_GRACE`], so an early return or a
    /// panic in `main` loses no line either; only the first call waits.
    pub fn close(&self, grace: std::time::Duration) {
        if self.closed.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Some(audit) = &self.audit {
            audit.close(grace);
        }
        self.logs.close(grace);
    }

    /// The steps of a stop after the drain, each until its end point in `stop`: the audit records queued are
    /// written, then `stop_tracing` is given the instant it must be done by, then both streams are closed by
    /// the deadline. The records come before anything that waits on a collector.
    pub async fn finish_stop<F: std::future::Future<Output = ()>>(
        &self,
        stop: &stop::Stop,
        stop_tracing: impl FnOnce(std::time::Instant) -> F,
    ) {
        if !self.flush_audit(stop::Stop::left_until(stop.audited_by())) {
            tracing::warn!("the audit stream was not written out by the stop's deadline");
        }
        stop_tracing(stop.traced_by()).await;
        self.close(stop::Stop::left_until(stop.deadline()));
    }
}

/// How long each stream may take to write what it queued when the outputs are dropped without a stop (an early
/// return or a panic in `main`); a stop closes them by its own deadline first.
pub const EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

impl Drop for Outputs {
    fn drop(&mut self) {
        self.close(EXIT_GRACE);
    }
}

/// Where records go: set once by the program's `main`; a library user that sets nothing writes none.
static OUTPUT: OnceLock<pipe::LogPipe> = OnceLock::new();

/// Sends every later record to `pipe`. Returns false if an output was already set (it stays).
fn install(pipe: pipe::LogPipe) -> bool {
    OUTPUT.set(pipe).is_ok()
}

/// Sends every later record of this process to `sink`, for a test that reads what a library writes (a program
/// uses [`Outputs::start`]). Returns the pipe (to flush it), or `None` if an output was already set.
pub fn install_sink(sink: impl std::io::Write + Send + 'static) -> Option<pipe::LogPipe> {
    let pipe = pipe::LogPipe::spawn(
        sink,
        pipe::DEFAULT_CAPACITY_BYTES,
        pipe::Dropped::new("test"),
    )
    .ok()?;
    install(pipe.clone()).then_some(pipe)
}

/// Writes `record` to the installed output, or nowhere.
pub fn emit(record: &Record<'_>) {
    let Some(pipe) = OUTPUT.get() else {
        return;
    };
    thread_local! {
        // Kept between records, so that writing one allocates only its timestamp.
        static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    LINE.with_borrow_mut(|line| {
        line.clear();
        record.write_line(line, time::OffsetDateTime::now_utc());
        let kind = if record.outcome == "allow" {
            pipe::Line::Action
        } else {
            pipe::Line::Refusal
        };
        pipe.send(line, kind);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_one_line_with_every_field_in_schema_order() {
        let ids =
            TraceIds::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let record = Record {
            source: "sidecar",
            event: "mcp",
            outcome: "deny",
            reason: "insufficient_scope",
            subject: "al\"ice\n",
            method: "tools/call",
            tool: "delete",
            scopes: "a b",
            ..Default::default()
        }
        .traced(Some(&ids));
        let mut line = Vec::new();
        let at = time::macros::datetime!(2026-12-04 06:14:09.123456 UTC);
        record.write_line(&mut line, at);
        let text = String::from_utf8(line).unwrap();
        assert!(
            text.ends_with('\n') && text.matches('\n').count() == 1,
            "{text}"
        );
        assert_eq!(
            text.trim_end(),
            r#"{"schema":"mcp-authz.audit/v1","time":"2026-12-04T06:14:09.123Z","source":"sidecar","event":"mcp","outcome":"deny","reason":"insufficient_scope","action":"","subject":"al\"ice\n","client_id":"","caller":"","service":"","method":"tools/call","tool":"delete","scopes":"a b","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","parent_id":"00f067aa0ba902b7"}"#
        );
    }

    #[test]
    fn long_fields_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_FIELD_BYTES);
        let exact = "a".repeat(MAX_FIELD_BYTES);
        let record = Record {
            tool: &long,
            subject: &exact,
            ..Default::default()
        };
        let mut line = Vec::new();
        record.write_line(&mut line, time::OffsetDateTime::UNIX_EPOCH);
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        let tool = value["tool"].as_str().unwrap();
        assert_eq!(tool, format!("{}…", "é".repeat(MAX_FIELD_BYTES / 2)));
        assert_eq!(value["subject"], exact.as_str());
    }

    #[test]
    fn a_field_is_bounded_as_written_escapes_included() {
        let controls = "\u{1}".repeat(MAX_FIELD_BYTES);
        let quotes = "\"".repeat(MAX_FIELD_BYTES);
        let record = Record {
            tool: &controls,
            method: &quotes,
            ..Default::default()
        };
        let mut line = Vec::new();
        record.write_line(&mut line, time::OffsetDateTime::UNIX_EPOCH);
        let text = String::from_utf8(line.clone()).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        // 170 escapes of six bytes fit in 1 KiB, 512 of two.
        assert_eq!(
            value["tool"],
            format!("{}…", "\u{1}".repeat(MAX_FIELD_BYTES / 6))
        );
        assert_eq!(
            value["method"],
            format!("{}…", "\"".repeat(MAX_FIELD_BYTES / 2))
        );
        assert!(text.len() < 3 * MAX_FIELD_BYTES, "{}", text.len());
    }

    /// The cut as the serde path made it (by characters), for the writer to be held to.
    fn reference_cut(value: &str) -> String {
        let mut written = 0;
        for (at, c) in value.char_indices() {
            written += match c {
                '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 2,
                c if (c as u32) < 0x20 => 6,
                c => c.len_utf8(),
            };
            if written > MAX_FIELD_BYTES {
                return format!("{}…", &value[..at]);
            }
        }
        value.to_owned()
    }

    #[test]
    fn every_byte_at_every_place_of_a_word_is_escaped_as_serde_json_escapes_it() {
        let mut characters: Vec<char> = (0u8..0x80).map(char::from).collect();
        characters.extend(['é', '€', '😀', '\u{2028}']);
        for c in characters {
            for at in 0..17 {
                let mut value = "a".repeat(17);
                value.insert(at, c);
                for text in [value.clone(), value.repeat(2)] {
                    let mut out = Vec::new();
                    write_escaped(&mut out, text.as_bytes());
                    let want = serde_json::to_string(&text).expect("JSON");
                    assert_eq!(
                        String::from_utf8(out).expect("UTF-8"),
                        want[1..want.len() - 1],
                        "{c:?} at {at}"
                    );
                }
            }
        }
    }

    #[test]
    fn fields_are_written_as_serde_json_writes_them() {
        let every_control: String = (0u8..0x20).map(char::from).collect();
        let mut values: Vec<String> = vec![
            String::new(),
            "plain".into(),
            every_control,
            "\"\\/\u{7f}\u{80}é€😀".into(),
            "tail\\".into(),
        ];
        // At and around the cut, with one-, two-, four- and six-byte characters as written.
        for unit in ["a", "é", "😀", "\n", "\u{1}"] {
            for n in [
                170, 171, 255, 256, 257, 341, 342, 511, 512, 513, 1023, 1024, 1025,
            ] {
                values.push(unit.repeat(n));
                values.push(format!("{}{}", "a".repeat(1023), unit.repeat(n.min(3))));
            }
        }
        for value in &values {
            let record = Record {
                tool: value,
                ..Default::default()
            };
            let mut line = Vec::new();
            record.write_line(&mut line, time::OffsetDateTime::UNIX_EPOCH);
            let text = String::from_utf8(line).expect("UTF-8");
            let want = format!(
                r#","tool":{},"#,
                serde_json::to_string(&reference_cut(value)).expect("JSON")
            );
            assert!(text.contains(&want), "{value:?}: {text}");
            let parsed: serde_json::Value = serde_json::from_str(&text).expect("one JSON value");
            assert_eq!(parsed["tool"], reference_cut(value), "{value:?}");
        }
    }

    #[test]
    fn the_time_has_milliseconds_and_follows_the_second() {
        let mut times = Vec::new();
        for at in [
            time::macros::datetime!(2026-12-04 06:14:09.000999 UTC),
            time::macros::datetime!(2026-12-04 06:14:09.999 UTC),
            time::macros::datetime!(2026-12-04 06:14:10.05 UTC),
            time::macros::datetime!(2026-12-04 08:14:10.5 +02:00),
        ] {
            let mut line = Vec::new();
            Record::default().write_line(&mut line, at);
            let value: serde_json::Value = serde_json::from_slice(&line).expect("JSON");
            times.push(value["time"].as_str().expect("time").to_owned());
        }
        assert_eq!(
            times,
            [
                "2026-12-04T06:14:09.000Z",
                "2026-12-04T06:14:09.999Z",
                "2026-12-04T06:14:10.050Z",
                "2026-12-04T06:14:10.500Z"
            ]
        );
    }

    #[test]
    fn a_destination_is_one_of_three_words() {
        use std::str::FromStr;
        assert_eq!(Destination::from_str("stdout"), Ok(Destination::Stdout));
        assert_eq!(Destination::from_str("stderr"), Ok(Destination::Stderr));
        assert_eq!(Destination::from_str("off"), Ok(Destination::Off));
        for wrong in ["STDOUT", "file", "", "/var/log/audit"] {
            assert_eq!(
                Destination::from_str(wrong),
                Err(format!(
                    "audit output must be stdout, stderr or off, not {wrong:?}"
                ))
            );
        }
    }

    #[test]
    fn an_untraced_record_has_empty_ids() {
        let record = Record::default().traced(None);
        assert_eq!((record.trace_id, record.parent_id), ("", ""));
    }
}
