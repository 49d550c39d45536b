//! Finished spans leave the program through a bounded queue to an export thread of their own, which batches
//! them to the OTLP endpoint. A request never waits for it: a span that finds the queue full is dropped and
//! counted, and so is a batch the endpoint refused or did not take in time. The thread runs its own small
//! runtime, so encoding and sending spans never takes a turn of the program's request runtime (the sidecar's
//! is one thread).
//!
//! Stopping is bounded as a whole, not per request: a pod being terminated has a grace period, and an export
//! that was waiting on a collector that never answers is cut at the stop's deadline, with what was still queued
//! dropped and counted, so the program exits long before the kubelet's SIGKILL.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use prometheus::IntCounterVec;
use tokio::sync::watch;

/// Spans that may wait for the export thread; past that they are dropped (the SDK's own default size).
pub const QUEUE_SPANS: usize = 2048;
/// The most spans one OTLP request carries.
const BATCH_SPANS: usize = 512;
/// The longest a finished span waits for a batch to fill.
const BATCH_WAIT: Duration = Duration::from_secs(1);
/// How long one OTLP request may take before its spans count as lost.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest stopping the export may take, all batches together. Fixed: the OTEL variables name no stop
/// timeout (`OTEL_BSP_EXPORT_TIMEOUT` bounds each export, 30 s by default, which is as long as a pod's whole
/// default grace period), and the audit stream, flushed before, must keep most of that grace.
pub const STOP_BUDGET: Duration = Duration::from_secs(2);
/// At most one warning about failing exports per this long, so an endpoint that is down does not flood the log.
const WARN_EVERY: Duration = Duration::from_secs(60);

enum Message {
    Span(Box<SpanData>),
    Flush(mpsc::SyncSender<()>),
    /// Send what is batched and stop (the deadline is in the stop signal).
    Shutdown,
}

/// The span processor: hands sampled spans to the export thread.
#[derive(Debug)]
pub struct ExportQueue {
    sender: SyncSender<Message>,
    dropped: IntCounterVec,
    /// Sampled spans started and not yet ended. The SDK hands no span that ends after its provider was shut
    /// down to a processor (a request cut at the stop, a task still running): these are the spans it drops
    /// silently, so the stop counts them.
    open: AtomicU64,
    /// When the export thread must have stopped: set once, at shutdown. A signal beside the queue rather than
    /// a message in it, so that a full queue cannot keep it from the thread.
    stop: watch::Sender<Option<Instant>>,
    /// Disconnected when the export thread has ended.
    exited: Mutex<mpsc::Receiver<()>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ExportQueue {
    /// Starts the export thread sending through `exporter`; lost spans are counted in `dropped` by reason
    /// (`queue_full`, `export_failed`, `after_shutdown`).
    pub fn start<E: SpanExporter + 'static>(
        mut exporter: E,
        resource: &Resource,
        dropped: IntCounterVec,
    ) -> std::io::Result<Self> {
        exporter.set_resource(resource);
        let (sender, receiver) = mpsc::sync_channel(QUEUE_SPANS);
        let (stop, stopping) = watch::channel(None);
        let (alive, exited) = mpsc::sync_channel(0);
        let lost = dropped.clone();
        let thread = std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || {
                export_loop(exporter, receiver, stopping, lost);
                drop(alive);
            })?;
        Ok(Self {
            sender,
            dropped,
            open: AtomicU64::new(0),
            stop,
            exited: Mutex::new(exited),
            thread: Mutex::new(Some(thread)),
        })
    }
}

impl SpanProcessor for ExportQueue {
    fn on_start(&self, span: &mut Span, _cx: &Context) {
        use opentelemetry::trace::Span as _;
        if span.span_context().is_sampled() {
            self.open.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        // Saturating: a span that ends while the stop counts the open ones was counted there.
        let _ = self
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if self.stop.borrow().is_some() {
            self.dropped.with_label_values(&["after_shutdown"]).inc();
            return;
        }
        match self.sender.try_send(Message::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.dropped.with_label_values(&["queue_full"]).inc(),
            Err(TrySendError::Disconnected(_)) => {
                self.dropped.with_label_values(&["after_shutdown"]).inc()
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        let (done, finished) = mpsc::sync_channel(1);
        // Never waits for room: with the queue full the thread is already sending as fast as it can.
        self.sender
            .try_send(Message::Flush(done))
            .map_err(|e| match e {
                TrySendError::Full(_) => {
                    OTelSdkError::InternalFailure("the span queue is full".into())
                }
                TrySendError::Disconnected(_) => OTelSdkError::AlreadyShutdown,
            })?;
        finished
            .recv_timeout(EXPORT_TIMEOUT)
            .map_err(|_| OTelSdkError::Timeout(EXPORT_TIMEOUT))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let budget = timeout.min(STOP_BUDGET);
        let deadline = Instant::now() + budget;
        self.stop.send_replace(Some(deadline));
        // The spans still open will end after the provider is shut down, where the SDK drops them unseen.
        let open = self.open.swap(0, Ordering::Relaxed);
        self.dropped
            .with_label_values(&["after_shutdown"])
            .inc_by(open);
        // Wakes a thread waiting for spans; with the queue full it sees the deadline between batches instead.
        let _ = self.sender.try_send(Message::Shutdown);
        let exited = self.exited.lock().unwrap_or_else(|p| p.into_inner());
        let left = deadline.saturating_duration_since(Instant::now());
        match exited.recv_timeout(left) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
                    let _ = thread.join();
                }
                Ok(())
            }
            // Left running: the process is on its way out, and a thread blocked past its deadline would only
            // be waited for.
            Err(RecvTimeoutError::Timeout) => Err(OTelSdkError::Timeout(budget)),
        }
    }
}

/// Resolves at the stop's deadline; never before a stop is asked for.
async fn stop_deadline(mut stopping: watch::Receiver<Option<Instant>>) {
    loop {
        if let Some(at) = *stopping.borrow_and_update() {
            return tokio::time::sleep_until(at.into()).await;
        }
        if stopping.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

fn export_loop<E: SpanExporter>(
    exporter: E,
    receiver: mpsc::Receiver<Message>,
    stopping: watch::Receiver<Option<Instant>>,
    dropped: IntCounterVec,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the span export thread's runtime; spans are dropped");
            return;
        }
    };
    let mut batch: Vec<SpanData> = Vec::with_capacity(BATCH_SPANS);
    let mut last_warning: Option<Instant> = None;
    let mut send = |batch: &mut Vec<SpanData>| {
        if batch.is_empty() {
            return;
        }
        let spans = std::mem::take(batch);
        let count = spans.len() as u64;
        let stop = stop_deadline(stopping.clone());
        let outcome = runtime.block_on(async {
            tokio::select! {
                sent = tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(spans)) => sent.map_err(|_| "timed out"),
                () = stop => Err("cut at the stop's deadline"),
            }
        });
        let failure = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error.to_string(),
            Err(why) => why.to_owned(),
        };
        dropped.with_label_values(&["export_failed"]).inc_by(count);
        if last_warning.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            last_warning = Some(Instant::now());
            tracing::warn!(%failure, spans = count, "span export failed; the spans are dropped");
        }
    };
    let mut oldest: Option<Instant> = None;
    loop {
        let deadline = *stopping.borrow();
        if deadline.is_some_and(|at| Instant::now() >= at) {
            // Out of time: what is left is lost, and counted as such.
            let left = batch.len()
                + receiver
                    .try_iter()
                    .filter(|m| matches!(m, Message::Span(_)))
                    .count();
            dropped
                .with_label_values(&["export_failed"])
                .inc_by(left as u64);
            let _ = exporter.shutdown();
            return;
        }
        let mut wait = oldest.map_or(BATCH_WAIT, |at| BATCH_WAIT.saturating_sub(at.elapsed()));
        if let Some(at) = deadline {
            wait = wait.min(at.saturating_duration_since(Instant::now()));
        }
        match receiver.recv_timeout(wait) {
            Ok(Message::Span(span)) => {
                oldest.get_or_insert_with(Instant::now);
                batch.push(*span);
                if batch.len() >= BATCH_SPANS {
                    send(&mut batch);
                    oldest = None;
                }
            }
            Ok(Message::Flush(done)) => {
                send(&mut batch);
                oldest = None;
                let _ = done.send(());
            }
            Ok(Message::Shutdown) => {
                send(&mut batch);
                let _ = exporter.shutdown();
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                send(&mut batch);
                oldest = None;
            }
            Err(RecvTimeoutError::Disconnected) => {
                send(&mut batch);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    /// A collector that takes a batch and never answers.
    #[derive(Debug)]
    struct Stalled;

    impl SpanExporter for Stalled {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            std::future::pending().await
        }
    }

    /// A collector that refuses every batch.
    #[derive(Debug)]
    struct Refusing;

    impl SpanExporter for Refusing {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            Err(OTelSdkError::InternalFailure("refused".into()))
        }
    }

    fn provider<E: SpanExporter + 'static>(exporter: E) -> (SdkTracerProvider, IntCounterVec) {
        let dropped = crate::dropped_counter("test");
        let queue = ExportQueue::start(
            exporter,
            &Resource::builder_empty().build(),
            dropped.clone(),
        )
        .expect("export thread");
        (
            SdkTracerProvider::builder()
                .with_span_processor(queue)
                .build(),
            dropped,
        )
    }

    /// A stalled collector and `made` spans: one batch is taken by the stalled export, the queue holds the next
    /// 2,048, the rest are dropped.
    fn stalled_with(made: usize) -> (SdkTracerProvider, IntCounterVec) {
        let (provider, dropped) = provider(Stalled);
        let tracer = provider.tracer("test");
        for _ in 0..made {
            tracer.start("request").end();
        }
        (provider, dropped)
    }

    #[test]
    fn a_stalled_collector_costs_spans_never_a_wait() {
        let made = BATCH_SPANS + QUEUE_SPANS + 1000;
        let (_provider, dropped) = stalled_with(made);
        let full = dropped.with_label_values(&["queue_full"]).get() as usize;
        assert!(
            (1000..=made - QUEUE_SPANS).contains(&full),
            "{full} of {made} dropped"
        );
        assert_eq!(dropped.with_label_values(&["export_failed"]).get(), 0);
    }

    #[test]
    fn stopping_with_a_stalled_collector_and_a_full_queue_takes_at_most_the_budget() {
        // The queue behind the stalled batch fills, so the stop cannot be queued as a message either.
        let made = BATCH_SPANS + QUEUE_SPANS + 100;
        let (provider, dropped) = stalled_with(made);
        let started = Instant::now();
        let result = provider.shutdown_with_timeout(Duration::from_secs(30));
        let took = started.elapsed();
        assert!(
            took < STOP_BUDGET + Duration::from_millis(300),
            "stopping took {took:?}: {result:?}"
        );
        // Every span made is either dropped at the full queue or lost at the stop, and counted.
        let lost = |reason| dropped.with_label_values(&[reason]).get() as usize;
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(lost("queue_full") + lost("export_failed"), made);
    }

    #[test]
    fn spans_ending_after_the_stop_are_counted_as_dropped() {
        let (provider, dropped) = provider(Refusing);
        let tracer = provider.tracer("test");
        let mut open = [tracer.start("request"), tracer.start("request")];
        let mut unsampled = tracer.start_with_context(
            "request",
            &Context::new().with_remote_span_context(opentelemetry::trace::SpanContext::new(
                opentelemetry::trace::TraceId::from(1),
                opentelemetry::trace::SpanId::from(1),
                opentelemetry::trace::TraceFlags::default(),
                true,
                Default::default(),
            )),
        );
        tracer.start("request").end();
        provider.force_flush().expect("flushed");
        provider.shutdown().expect("shut down");
        for span in &mut open {
            span.end();
        }
        unsampled.end();
        let lost = |reason| dropped.with_label_values(&[reason]).get();
        assert_eq!(
            (
                lost("after_shutdown"),
                lost("export_failed"),
                lost("queue_full")
            ),
            (2, 1, 0)
        );
    }

    #[test]
    fn a_refused_batch_is_counted_span_by_span() {
        let (provider, dropped) = provider(Refusing);
        let tracer = provider.tracer("test");
        for _ in 0..7 {
            tracer.start("request").end();
        }
        provider.force_flush().expect("flushed");
        assert_eq!(dropped.with_label_values(&["export_failed"]).get(), 7);
        assert_eq!(dropped.with_label_values(&["queue_full"]).get(), 0);
        provider.shutdown().expect("shut down");
    }
}
