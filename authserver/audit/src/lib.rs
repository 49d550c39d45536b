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

pub mod pipe;
pub mod trace;

use std::cell::RefCell;
use std::sync::OnceLock;

use serde::Serialize;

pub use trace::TraceIds;

/// The `schema` value of this version of the record.
pub const SCHEMA: &str = "mcp-authz.audit/v1";

/// One decision. Borrowed: a record is written at once and never kept.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Record<'a> {
    /// `sidecar` or `authserver`.
    #[serde(serialize_with = "bounded")]
    pub source: &'a str,
    /// What was decided on: `mcp` (an MCP operation at a sidecar) or the server's endpoint (`token`,
    /// `authorize`, `login`, `consent`, `introspect`, `register`, `revoke`, `admin`, `admin_revoke`).
    #[serde(serialize_with = "bounded")]
    pub event: &'a str,
    /// `allow` or `deny`.
    #[serde(serialize_with = "bounded")]
    pub outcome: &'a str,
    /// Why: at the sidecar a word from a fixed set (its metrics' `reason` labels, `batch_refused`,
    /// `more_operations`); at the server the grant type, the OAuth error with its description, or a sentence.
    #[serde(serialize_with = "bounded")]
    pub reason: &'a str,
    /// What the server did when it allowed (`issued`, `granted`, `registered`, `revoked`) or how it refused
    /// (`refused`, `denied`); empty at the sidecar.
    #[serde(serialize_with = "bounded")]
    pub action: &'a str,
    /// The person or client the token speaks for (`sub`), when known.
    #[serde(serialize_with = "bounded")]
    pub subject: &'a str,
    /// The OAuth client.
    #[serde(serialize_with = "bounded")]
    pub client_id: &'a str,
    /// `person` or `machine` (the token's `mcp_authz_caller`), when known.
    #[serde(serialize_with = "bounded")]
    pub caller: &'a str,
    /// The MCP service: its resource URL.
    #[serde(serialize_with = "bounded")]
    pub service: &'a str,
    /// The JSON-RPC method, or the HTTP method of a request refused before its body was read.
    #[serde(serialize_with = "bounded")]
    pub method: &'a str,
    /// The tool, resource URI or prompt the method names.
    #[serde(serialize_with = "bounded")]
    pub tool: &'a str,
    /// The scopes the token held (sidecar) or that were granted or asked for (server), space-separated.
    #[serde(serialize_with = "bounded")]
    pub scopes: &'a str,
    /// The W3C trace id of the request (its `traceparent` header, else its message's `_meta.traceparent`).
    #[serde(serialize_with = "bounded")]
    pub trace_id: &'a str,
    /// The caller's span id from the same `traceparent`.
    #[serde(serialize_with = "bounded")]
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

    /// Appends the record as one JSON line to `line`.
    pub fn write_line(&self, line: &mut Vec<u8>, now: time::OffsetDateTime) {
        #[derive(Serialize)]
        struct Stamped<'r, 'a> {
            schema: &'static str,
            time: &'r str,
            #[serde(flatten)]
            record: &'r Record<'a>,
        }
        let time = timestamp(now);
        let stamped = Stamped {
            schema: SCHEMA,
            time: &time,
            record: self,
        };
        // Writing borrowed strings into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *line, &stamped);
        line.push(b'\n');
    }
}

/// The most bytes of a field a record carries, counted as written (escapes included: a control character is six
/// bytes there), plus the `…` that ends a cut value. Tool names, scopes, client ids and subjects come from requests (a tool name may be as long as a
/// body): a longer value is cut at a character boundary and ends with `…`. With the sidecar's cap on records
/// per request, a request's records stay a small fraction of the queue however it is made.
pub const MAX_FIELD_BYTES: usize = 1024;

/// Bytes `c` takes in a JSON string as serde_json writes it.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

fn bounded<S: serde::Serializer>(value: &&str, serializer: S) -> Result<S::Ok, S::Error> {
    let mut written = 0;
    for (at, c) in value.char_indices() {
        written += escaped_len(c);
        if written > MAX_FIELD_BYTES {
            return serializer.serialize_str(&format!("{}…", &value[..at]));
        }
    }
    serializer.serialize_str(value)
}

/// RFC 3339 in UTC with milliseconds, as log pipelines parse it without a format of their own.
fn timestamp(now: time::OffsetDateTime) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    now.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_default()
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
        Ok(Outputs { logs, audit })
    }

    /// Gives each stream up to `grace` to write what it queued, for exit: a stalled reader must not keep a
    /// terminated process alive. Dropping the outputs does this with [`EXIT_GRACE`], so an early return or a
    /// panic in `main` loses no line either.
    pub fn close(&self, grace: std::time::Duration) {
        if let Some(audit) = &self.audit {
            audit.close(grace);
        }
        self.logs.close(grace);
    }
}

/// How long each stream may take to write what it queued when the outputs are dropped.
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
        pipe.send(line, true);
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
