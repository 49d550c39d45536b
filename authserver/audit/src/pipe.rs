//! Output off the request path (issue 15): audit records, and the sidecar's log lines, are handed to one
//! writer thread per stream through a queue bounded in bytes.
//!
//! ```text
//!  request path ── audit record / tracing event ── LogPipe::send: append to the queue (a mutex held for a
//!                                                  memcpy), or drop the line and count it when it would not fit
//!  writer thread ── woken by a batch's first line, lets it gather 10 ms, takes the whole queue ── one write(2)
//!                   to the stream (stdout, stderr) ── waits on it, alone
//! ```
//!
//! In a pod stdout is a pipe drained by the container runtime. Written from the runtime's only thread, a slow
//! reader stalled every request of the pod (and cost +490 µs at p99 even when the reader kept up). Here a
//! stalled stdout costs requests nothing: the queue fills, and further lines are dropped and counted
//! (`mcp_authz_<program>_audit_dropped_total` for audit records, `mcp_authz_<program>_log_dropped_total` for
//! the rest) until the reader catches up. Records of what was done (a call forwarded, a token issued) and the
//! rest (refusals, log lines) may each fill three quarters of the queue, so each keeps at least a quarter: a
//! flood of refusals, which cost a client nothing to cause, cannot crowd out the record of an action taken under
//! it, and a flood of allowed calls cannot hide the refusals of a probe made meanwhile. Dropping is the choice of a proxy that must keep answering; a
//! reviewer who needs every line alerts on the counter (the chart's `McpAuthzSidecarAuditLinesDropped`), and
//! the authorization server keeps its own record of every token it issued in its store.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use tracing_subscriber::fmt::MakeWriter;

/// The default bound of a queue: about 2,300 audit records of 450 bytes (a typical `tools/call` record), two
/// seconds of a stalled reader at 1,000 requests/s.
pub const DEFAULT_CAPACITY_BYTES: usize = 1 << 20;

/// How long the writer lets lines gather after the first of a batch arrives: how late a line may reach stdout.
const BATCH_DELAY: Duration = Duration::from_millis(10);

/// Lines dropped because the queue was full (or because the sink refused them).
#[derive(Clone)]
pub struct Dropped {
    /// Audit lines (target `audit`).
    pub audit: IntCounter,
    /// Every other line.
    pub other: IntCounter,
}

impl Dropped {
    /// Fresh counters named for `program` (`sidecar`, `authserver`), for a pipe of its own (tests).
    pub fn new(program: &str) -> Self {
        let counter = |kind: &str, help: &str| {
            IntCounter::new(format!("mcp_authz_{program}_{kind}_dropped_total"), help)
                .expect("metric")
        };
        Dropped {
            audit: counter(
                "audit",
                "Audit records dropped because their output could not keep up (stdout stalled)",
            ),
            other: counter(
                "log",
                "Log lines dropped because the log output could not keep up",
            ),
        }
    }

    /// The process's counters for `program`: each stream is one per process, and so is the pipe in front of
    /// it. The program's metrics register these (an in-process plane has a program of each kind).
    pub fn process(program: &str) -> &'static Dropped {
        static PROCESS: Mutex<Vec<(String, &'static Dropped)>> = Mutex::new(Vec::new());
        let mut known = PROCESS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, dropped)) = known.iter().find(|(p, _)| p == program) {
            return dropped;
        }
        // A handful per process, made once each: leaking them gives the `'static` every registry holds.
        let dropped: &'static Dropped = Box::leak(Box::new(Dropped::new(program)));
        known.push((program.to_owned(), dropped));
        dropped
    }
}

/// What a line is, which decides how much of the queue it may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// A log line.
    Log,
    /// The audit record of a refusal: as many as anyone can send requests.
    Refusal,
    /// The audit record of something done: bounded by credentials and rate limits.
    Action,
}

impl Line {
    fn is_audit(self) -> bool {
        self != Line::Log
    }
}

/// The most bytes of a queue of `capacity` either class of lines may hold (actions; refusals and logs).
fn class_room(capacity: usize) -> usize {
    capacity - capacity / 4
}

#[derive(Default)]
struct Queue {
    /// Whole lines, one after another.
    bytes: Vec<u8>,
    audit_lines: u64,
    other_lines: u64,
    /// Bytes of action records queued; the rest of `bytes` is refusals and log lines.
    action_bytes: usize,
    /// The writer holds a batch it has not finished writing.
    writing: bool,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the writer: lines arrived, or the pipe closed.
    arrived: Condvar,
    /// Wakes `close`: the writer finished a batch.
    written: Condvar,
    capacity: usize,
    dropped: Dropped,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic elsewhere while holding it leaves whole lines behind: the queue stays usable.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The log output: a `MakeWriter` for `tracing_subscriber::fmt`, cheap to clone.
#[derive(Clone)]
pub struct LogPipe {
    shared: Arc<Shared>,
}

impl LogPipe {
    /// Starts the writer thread in front of `sink`, with a queue of at most `capacity` bytes.
    pub fn spawn(
        sink: impl Write + Send + 'static,
        capacity: usize,
        dropped: Dropped,
    ) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            arrived: Condvar::new(),
            written: Condvar::new(),
            capacity,
            dropped,
        });
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_lines(&writer, sink))?;
        Ok(LogPipe { shared })
    }

    /// Queues one line, or drops and counts it. Never waits for the sink.
    pub fn send(&self, line: &[u8], kind: Line) {
        let shared = &*self.shared;
        let audit = kind.is_audit();
        let mut queue = shared.lock();
        let class_bytes = if kind == Line::Action {
            queue.action_bytes
        } else {
            queue.bytes.len() - queue.action_bytes
        };
        if queue.closed
            || queue.bytes.len() + line.len() > shared.capacity
            || class_bytes + line.len() > class_room(shared.capacity)
        {
            drop(queue);
            if audit {
                shared.dropped.audit.inc();
            } else {
                shared.dropped.other.inc();
            }
            return;
        }
        // The writer sleeps only on an empty queue, so only the first line of a batch needs to wake it.
        let was_empty = queue.bytes.is_empty();
        queue.bytes.extend_from_slice(line);
        if kind == Line::Action {
            queue.action_bytes += line.len();
        }
        if audit {
            queue.audit_lines += 1;
        } else {
            queue.other_lines += 1;
        }
        drop(queue);
        if was_empty {
            shared.arrived.notify_one();
        }
    }

    /// Refuses further lines and waits up to `grace` for the queued ones to be written; returns whether they
    /// were. For exit: a stalled stdout must not keep a terminated pod alive.
    pub fn close(&self, grace: Duration) -> bool {
        self.drain(grace, true)
    }

    /// Waits up to `grace` for the lines queued so far to be written, still taking new ones; returns whether
    /// they were. For a stopping program, before anything else that may take its time (tracing's flush).
    pub fn flush(&self, grace: Duration) -> bool {
        self.drain(grace, false)
    }

    fn drain(&self, grace: Duration, close: bool) -> bool {
        let shared = &*self.shared;
        let deadline = Instant::now() + grace;
        let mut queue = shared.lock();
        queue.closed |= close;
        shared.arrived.notify_one();
        while !queue.bytes.is_empty() || queue.writing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            queue = shared
                .written
                .wait_timeout(queue, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// One line per `write`: the fmt layer formats an event whole and writes it with one `write_all`, and `write`
/// takes all it is given, so a line is queued whole or dropped whole, never torn.
pub struct LineWriter<'a> {
    pipe: &'a LogPipe,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.pipe.send(line, Line::Log);
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogPipe {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { pipe: self }
    }
}

/// The writer thread: takes everything queued, writes it at once, and again, until the pipe is closed and
/// empty.
fn write_lines(shared: &Shared, mut sink: impl Write) {
    let mut batch = Vec::new();
    loop {
        let (audit_lines, other_lines) = {
            let mut queue = shared.lock();
            queue.writing = false;
            shared.written.notify_all();
            while queue.bytes.is_empty() && !queue.closed {
                queue = shared
                    .arrived
                    .wait(queue)
                    .unwrap_or_else(|p| p.into_inner());
            }
            if queue.bytes.is_empty() {
                return;
            }
            if !queue.closed {
                // Let the batch gather: one wake-up of this thread and one write(2) for the lines of the next
                // few milliseconds, instead of one of each per line.
                drop(queue);
                std::thread::sleep(BATCH_DELAY);
                queue = shared.lock();
            }
            std::mem::swap(&mut queue.bytes, &mut batch);
            queue.action_bytes = 0;
            queue.writing = true;
            (
                std::mem::take(&mut queue.audit_lines),
                std::mem::take(&mut queue.other_lines),
            )
        };
        if sink.write_all(&batch).and_then(|()| sink.flush()).is_err() {
            // stdout closed: these lines are lost like dropped ones, and counted with them.
            shared.dropped.audit.inc_by(audit_lines);
            shared.dropped.other.inc_by(other_lines);
        }
        batch.clear();
        // A burst may have grown the batch to the whole capacity; a quiet pipe need not keep that much.
        batch.shrink_to(64 << 10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A sink that writes nothing until the test opens its gate, then records what it gets.
    struct Gated {
        open: mpsc::Receiver<()>,
        opened: bool,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if !self.opened {
                let _ = self.open.recv();
                self.opened = true;
            }
            self.out.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn gated(capacity: usize) -> (LogPipe, mpsc::Sender<()>, Arc<Mutex<Vec<u8>>>) {
        let (open, gate) = mpsc::channel();
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = Gated {
            open: gate,
            opened: false,
            out: out.clone(),
        };
        let pipe = LogPipe::spawn(sink, capacity, Dropped::new("test")).unwrap();
        (pipe, open, out)
    }

    #[test]
    fn a_stalled_sink_never_blocks_a_sender_and_what_does_not_fit_is_counted() {
        let (pipe, open, out) = gated(100);
        // The first line is taken by the writer, which then stalls on it; 100 bytes more fit in the queue.
        pipe.send(b"first\n", Line::Action);
        let started = Instant::now();
        while !pipe.shared.lock().writing && started.elapsed() < Duration::from_secs(10) {
            std::thread::yield_now();
        }
        let line = [b'a'; 9];
        for _ in 0..1000 {
            pipe.send(&[&line[..], b"\n"].concat(), Line::Action);
        }
        for _ in 0..1000 {
            pipe.send(b"a log line\n", Line::Log);
        }
        // 100 bytes in all, at most 75 a class: 7 action lines of 10 bytes and 2 log lines of 11 fit (the
        // third log line passes the whole capacity); the others were dropped, each counted once.
        assert_eq!(pipe.shared.dropped.audit.get(), 993);
        assert_eq!(pipe.shared.dropped.other.get(), 998);
        open.send(()).unwrap();
        assert!(pipe.close(Duration::from_secs(10)));
        let out = out.lock().unwrap();
        assert_eq!(out.len(), 6 + 70 + 22);
    }

    #[test]
    fn every_line_is_written_once_in_order_when_the_sink_keeps_up() {
        let (pipe, open, out) = gated(1 << 20);
        open.send(()).unwrap();
        let expected: Vec<u8> = (0..5000)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        for i in 0..5000 {
            pipe.send(
                format!("line {i}\n").as_bytes(),
                [Line::Action, Line::Refusal, Line::Log][i % 3],
            );
        }
        assert!(pipe.close(Duration::from_secs(10)));
        assert_eq!(*out.lock().unwrap(), expected);
        assert_eq!(pipe.shared.dropped.audit.get(), 0);
        assert_eq!(pipe.shared.dropped.other.get(), 0);
        // Closed: later lines are refused and counted, not queued for a writer that is gone.
        pipe.send(b"late\n", Line::Refusal);
        assert_eq!(pipe.shared.dropped.audit.get(), 1);
    }

    #[test]
    fn a_flood_of_either_class_leaves_a_quarter_of_the_queue_to_the_other() {
        for (flood, other) in [(Line::Refusal, Line::Action), (Line::Action, Line::Refusal)] {
            let (pipe, open, out) = gated(100);
            pipe.send(b"first\n", Line::Action);
            let started = Instant::now();
            while !pipe.shared.lock().writing && started.elapsed() < Duration::from_secs(10) {
                std::thread::yield_now();
            }
            for _ in 0..1000 {
                pipe.send(b"flooding.\n", flood);
                if flood == Line::Refusal {
                    pipe.send(b"a warning\n", Line::Log);
                }
            }
            let dropped = || pipe.shared.dropped.audit.get() + pipe.shared.dropped.other.get();
            // 75 bytes for the flooding class: 7 lines of 10, the rest dropped and counted.
            let sent = if flood == Line::Refusal { 2000 } else { 1000 };
            assert_eq!(dropped(), sent - 7, "{flood:?}");
            // The other class still has the queue's last bytes: three lines, and a fourth passes the capacity.
            for _ in 0..4 {
                pipe.send(b"the other\n", other);
            }
            assert_eq!(dropped(), sent - 7 + 1, "{flood:?}");
            open.send(()).unwrap();
            assert!(pipe.close(Duration::from_secs(10)));
            let out = out.lock().unwrap();
            assert_eq!(out.len(), 6 + 70 + 30, "{flood:?}");
            assert!(
                out.ends_with(b"the other\nthe other\nthe other\n"),
                "{flood:?}"
            );
        }
    }

    #[test]
    fn close_gives_up_on_a_sink_that_never_drains() {
        let (pipe, _open, _out) = gated(1 << 10);
        pipe.send(b"stuck\n", Line::Action);
        assert!(!pipe.close(Duration::from_millis(50)));
    }

    #[test]
    fn lines_a_closed_sink_refuses_are_counted_as_dropped() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let pipe = LogPipe::spawn(Closed, 1 << 10, Dropped::new("test")).unwrap();
        pipe.send(b"a\n", Line::Refusal);
        assert!(pipe.close(Duration::from_secs(10)));
        assert_eq!(pipe.shared.dropped.audit.get(), 1);
    }
}
