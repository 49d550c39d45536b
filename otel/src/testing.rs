//! A real Jaeger (v2, built by `tests/jaeger/build.sh`; its path in `MCP_AUTHZ_JAEGER`) for the tracing tests:
//! OTLP over HTTP in, traces kept in memory, read back from its query API (`/api/traces/<id>`). Every port is
//! a free one on loopback, so tests run side by side.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running Jaeger, killed on drop.
pub struct Jaeger {
    child: Child,
    /// The OTLP/HTTP base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub otlp: String,
    /// The query API's base URL.
    pub query: String,
    _dir: tempfile::TempDir,
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The collector pipeline of an all-in-one Jaeger on the given ports, with nothing else listening.
fn config(otlp: u16, query_http: u16, query_grpc: u16, health: u16) -> String {
    format!(
        r#"service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: []
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  healthcheckv2:
    use_v2: true
    http:
      endpoint: 127.0.0.1:{health}
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query_http}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{otlp}
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"#
    )
}

impl Jaeger {
    /// Starts Jaeger. Panics when `MCP_AUTHZ_JAEGER` is unset (`tests/run-all` sets it, through
    /// `tests/setup/17-jaeger.sh`: a test that needs a real part fails without it rather than passing unrun) or
    /// when Jaeger does not come up.
    pub async fn start() -> Self {
        let binary = std::env::var_os("MCP_AUTHZ_JAEGER").expect(
            "MCP_AUTHZ_JAEGER is not set: source tests/setup/17-jaeger.sh (tests/run-all does)",
        );
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (otlp, query_http, query_grpc, health) =
            (free_port(), free_port(), free_port(), free_port());
        let path = dir.path().join("jaeger.yaml");
        std::fs::write(&path, config(otlp, query_http, query_grpc, health)).unwrap();
        // Its log (warnings only) goes to a file, shown if it does not come up.
        let log_path = dir.path().join("jaeger.log");
        let log = std::fs::File::create(&log_path).expect("a log file");
        let child = Command::new(binary)
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("MCP_AUTHZ_JAEGER runs");
        let jaeger = Self {
            child,
            otlp: format!("http://127.0.0.1:{otlp}"),
            query: format!("http://127.0.0.1:{query_http}"),
            _dir: dir,
        };
        let http = reqwest::Client::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            let ready = http
                .get(format!("http://127.0.0.1:{health}/status"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            let query = http
                .get(format!("{}/api/services", jaeger.query))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready && query {
                return jaeger;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        panic!("Jaeger did not come up within 60 s; its log:\n{log}");
    }

    /// The trace `trace_id` (32 hex digits) once `complete` says it is (Jaeger shows spans as they arrive,
    /// and each program exports on its own schedule); panics after 30 s with what arrived.
    pub async fn trace(&self, trace_id: &str, complete: impl Fn(&Trace) -> bool) -> Trace {
        let http = reqwest::Client::new();
        let started = Instant::now();
        let mut last = Trace(Value::Null);
        while started.elapsed() < Duration::from_secs(30) {
            let response = http
                .get(format!("{}/api/traces/{trace_id}", self.query))
                .send()
                .await;
            if let Ok(response) = response
                && response.status().is_success()
                && let Ok(body) = response.json::<Value>().await
            {
                last = Trace(body["data"][0].clone());
                if complete(&last) {
                    return last;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "trace {trace_id} never became complete; last seen: {}",
            last.0
        );
    }
}

/// One trace as Jaeger's query API shows it.
#[derive(Debug, Clone)]
pub struct Trace(pub Value);

impl Trace {
    /// Every span.
    pub fn spans(&self) -> Vec<&Value> {
        self.0["spans"]
            .as_array()
            .map(|s| s.iter().collect())
            .unwrap_or_default()
    }

    /// The spans named `operation`.
    pub fn named(&self, operation: &str) -> Vec<&Value> {
        self.spans()
            .into_iter()
            .filter(|s| s["operationName"] == operation)
            .collect()
    }

    /// The one span named `operation`; panics if there is not exactly one.
    pub fn one(&self, operation: &str) -> &Value {
        let found = self.named(operation);
        assert_eq!(found.len(), 1, "spans named {operation}: {}", self.0);
        found[0]
    }

    /// The service that recorded `span`.
    pub fn service_of(&self, span: &Value) -> String {
        let process = span["processID"].as_str().unwrap_or_default();
        self.0["processes"][process]["serviceName"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Every string in the trace: span names, attribute and event values, process tags. What a test
    /// searches for secrets.
    pub fn all_text(&self) -> String {
        let mut text = String::new();
        collect_strings(&self.0, &mut text);
        text
    }
}

/// The value of the attribute `key` of `span`, as Jaeger shows it.
pub fn tag<'s>(span: &'s Value, key: &str) -> Option<&'s Value> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .map(|t| &t["value"])
}

/// The span id `span` names as its parent (`CHILD_OF`), if any.
pub fn parent_of(span: &Value) -> Option<&str> {
    span["references"]
        .as_array()?
        .iter()
        .find(|r| r["refType"] == "CHILD_OF")
        .and_then(|r| r["spanID"].as_str())
}

fn collect_strings(value: &Value, out: &mut String) {
    match value {
        Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

/// A collector that takes connections and never answers, as a hung one does: what a program's stop must not
/// wait on past its budget. The connections stay open as long as the test process runs.
pub struct SilentCollector {
    /// Its base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub endpoint: String,
}

impl SilentCollector {
    /// Listens on a free loopback port.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let endpoint = format!("http://{}", listener.local_addr().expect("its address"));
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                held.push(stream);
            }
        });
        SilentCollector { endpoint }
    }
}

/// Stops `child` as the kubelet does: SIGTERM, then up to `grace` for it to exit on its own; returns how long it
/// took, or `None` when the grace ran out (it is then killed, as the kubelet would).
pub fn terminate(child: &mut Child, grace: Duration) -> Option<Duration> {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "kill -TERM {}", child.id());
    let started = Instant::now();
    while started.elapsed() < grace {
        if child.try_wait().expect("the child's status").is_some() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}
