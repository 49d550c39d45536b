//! Finished spans leave the program through a bounded queue to an export thread of their own, which batches
//! them to the OTLP endpoint. A request never waits for it: a span that finds the queue full is dropped and
//! counted, and so is a batch the endpoint refused or did not take in time. The thread runs its own small
//! runtime, so encoding and sending spans never takes a turn of the program's request runtime (the sidecar's
//! is one thread).

use std::sync::Mutex;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use prometheus::IntCounterVec;

/// Spans that may wait for the export thread; past that they are dropped (the SDK's own default size).
pub const QUEUE_SPANS: usize = 2048;
/// The most spans one OTLP request carries.
const BATCH_SPANS: usize = 512;
/// The longest a finished span waits for a batch to fill.
const BATCH_WAIT: Duration = Duration::from_secs(1);
/// How long one OTLP request may take before its spans count as lost.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// At most one warning about failing exports per this long, so an endpoint that is down does not flood the log.
const WARN_EVERY: Duration = Duration::from_secs(60);

enum Message {
    Span(Box<SpanData>),
    Flush(mpsc::SyncSender<()>),
    Shutdown(mpsc::SyncSender<()>),
}

/// The span processor: hands sampled spans to the export thread.
#[derive(Debug)]
pub struct ExportQueue {
    sender: SyncSender<Message>,
    dropped: IntCounterVec,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ExportQueue {
    /// Starts the export thread sending through `exporter`; lost spans are counted in `dropped` by reason
    /// (`queue_full`, `export_failed`).
    pub fn start<E: SpanExporter + 'static>(
        mut exporter: E,
        resource: &Resource,
        dropped: IntCounterVec,
    ) -> std::io::Result<Self> {
        exporter.set_resource(resource);
        let (sender, receiver) = mpsc::sync_channel(QUEUE_SPANS);
        let lost = dropped.clone();
        let thread = std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || export_loop(exporter, receiver, lost))?;
        Ok(Self {
            sender,
            dropped,
            thread: Mutex::new(Some(thread)),
        })
    }

    fn ask(&self, make: impl FnOnce(SyncSender<()>) -> Message, wait: Duration) -> OTelSdkResult {
        let (done, finished) = mpsc::sync_channel(1);
        self.sender
            .send(make(done))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        finished
            .recv_timeout(wait)
            .map_err(|_| OTelSdkError::Timeout(wait))
    }
}

impl SpanProcessor for ExportQueue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.sender.try_send(Message::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.with_label_values(&["queue_full"]).inc()
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Message::Flush, EXPORT_TIMEOUT)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let result = self.ask(Message::Shutdown, timeout);
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take())
            && result.is_ok()
        {
            let _ = thread.join();
        }
        result
    }
}

fn export_loop<E: SpanExporter>(
    exporter: E,
    receiver: mpsc::Receiver<Message>,
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
        let outcome = runtime
            .block_on(async { tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(spans)).await });
        let failure = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        dropped.with_label_values(&["export_failed"]).inc_by(count);
        if last_warning.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            last_warning = Some(Instant::now());
            tracing::warn!(%failure, spans = count, "span export failed; the spans are dropped");
        }
    };
    let mut oldest: Option<Instant> = None;
    loop {
        let wait = oldest.map_or(BATCH_WAIT, |at| BATCH_WAIT.saturating_sub(at.elapsed()));
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
            Ok(Message::Shutdown(done)) => {
                send(&mut batch);
                let _ = exporter.shutdown();
                let _ = done.send(());
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
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
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

    #[test]
    fn a_stalled_collector_costs_spans_never_a_wait() {
        let (provider, dropped) = provider(Stalled);
        let tracer = provider.tracer("test");
        // One batch is taken by the stalled export, the queue holds the next 2,048, the rest are dropped.
        let made = BATCH_SPANS + QUEUE_SPANS + 1000;
        for _ in 0..made {
            tracer.start("request").end();
        }
        let full = dropped.with_label_values(&["queue_full"]).get() as usize;
        assert!(
            (1000..=made - QUEUE_SPANS).contains(&full),
            "{full} of {made} dropped"
        );
        assert_eq!(dropped.with_label_values(&["export_failed"]).get(), 0);
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
