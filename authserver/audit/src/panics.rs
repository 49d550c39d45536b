//! A panic as one line of the program's log stream. Rust's default hook writes its own text to stderr, beside
//! the JSON log lines a collector parses, and a panic is the event least to be missed.
//!
//! The line holds where the panic happened and its message when the message is fixed text in the code
//! (`panic!("…")`, `unreachable!()`, `.expect("…")` on an `Option`). A formatted message is withheld: it may
//! carry what a request sent (an `.expect` on a `Result` prints the error, and errors quote their input), and
//! the log stream is no place for a client's token or password.

use std::panic::PanicHookInfo;

/// What the line says of a message built at run time.
pub const WITHHELD: &str = "(formatted at run time; withheld)";

/// Replaces the panic hook for the whole process: every panic becomes one `error` event, logged through the
/// subscriber in force (the program's JSON log stream).
pub fn install() {
    std::panic::set_hook(Box::new(log));
}

fn log(info: &PanicHookInfo<'_>) {
    let location = info
        .location()
        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
        .unwrap_or_default();
    let message = info
        .payload()
        .downcast_ref::<&'static str>()
        .copied()
        .unwrap_or(WITHHELD);
    let thread = std::thread::current();
    tracing::error!(
        location,
        panic = message,
        thread = thread.name().unwrap_or(""),
        "panicked"
    );
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The panics of `body`, as the JSON lines the hook logs.
    fn logged(body: impl FnOnce() + std::panic::UnwindSafe) -> Vec<serde_json::Value> {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .without_time()
            .with_writer(move || writer.clone())
            .finish();
        super::install();
        let result =
            tracing::subscriber::with_default(subscriber, || std::panic::catch_unwind(body));
        let _ = std::panic::take_hook();
        assert!(result.is_err(), "the body did not panic");
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn a_panic_is_one_json_error_line_with_its_location_and_never_a_formatted_message() {
        let line = line!() + 1;
        let fixed = logged(|| panic!("the store handed back no row"));
        let secret = "Bearer eyJhbGciOi.secret";
        let formatted = logged(move || panic!("refused {secret}"));
        let location = format!("{}:{line}:31", file!());
        assert_eq!(
            fixed,
            [serde_json::json!({
                "level": "ERROR",
                "fields": {"message": "panicked", "location": location, "panic": "the store handed back no row",
                    "thread": std::thread::current().name().unwrap_or("")},
                "target": "mcp_authz_audit::panics",
            })]
        );
        assert_eq!(formatted.len(), 1);
        assert_eq!(formatted[0]["fields"]["panic"], super::WITHHELD);
        assert!(!formatted[0].to_string().contains("secret"));
    }
}
