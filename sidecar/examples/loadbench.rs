//! Load benchmark of the whole proxy: the release `mcp-authz-sidecar` binary in front of a minimal upstream,
//! measured with `oha` at a fixed request rate against the upstream directly and through the sidecar (rounds of
//! one run each, alternating), then the sidecar's resident memory with many open SSE streams.
//!
//! `cargo run --release -p mcp-authz-sidecar --features test-support --example loadbench -- \
//!    <path to mcp-authz-sidecar> <path to oha> [seconds=15] [rate=1000] [streams=1000] [rounds=5]`
//!
//! The sidecar runs as in production: log level `info`, so every `tools/call` writes its audit line, to a stdout
//! that is a pipe drained by a thread of the harness (a container runtime's part). `LOADBENCH_RUST_LOG=warn`
//! turns audit lines off for a comparison. It inherits the environment (`MCP_AUTHZ_SIDECAR_WORKERS=2` to compare
//! thread counts); `LOADBENCH_HOLD_SECONDS=N` keeps the streams open N seconds more for a heap profile.

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mcp_authz_sidecar::testing::{ISSUER, RESOURCE, TestKey, claims_for, jwks_document, now};
use serde_json::{Value, json};
use tokio::net::TcpListener;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_user","arguments":{"id":42}}}"#;
const ANSWER: &str =
    r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"user 42"}]}}"#;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn serve(
    handler: fn(Request<Incoming>, &str) -> Response<Body>,
    data: String,
) -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let data = data.clone();
            tokio::spawn(async move {
                let service = service_fn(move |r| {
                    let response = handler(r, &data);
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(port)
}

/// A byte relay in front of the upstream, on a thread of its own like the sidecar's: the cost of a second
/// loopback hop alone (no HTTP parsing, no checks), the floor for any proxy on this machine.
fn relay(upstream_port: u16) -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let listener = TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(mut upstream) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
                    else {
                        return;
                    };
                    let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
        })
    });
    Ok(port)
}

fn upstream(request: Request<Incoming>, _: &str) -> Response<Body> {
    if request.method() == http::Method::GET {
        // An SSE stream that stays open, sending a comment now and then like a real server's keep-alive.
        let ticks = futures::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_secs(15)).await;
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b": ping\n\n"))),
                (),
            ))
        });
        let mut r = Response::new(StreamBody::new(ticks).boxed());
        r.headers_mut()
            .insert("content-type", "text/event-stream".parse().expect("static"));
        return r;
    }
    let mut r = Response::new(Full::new(Bytes::from_static(ANSWER.as_bytes())).boxed());
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("static"));
    r
}

fn jwks(_: Request<Incoming>, document: &str) -> Response<Body> {
    Response::new(Full::new(Bytes::from(document.to_owned())).boxed())
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

fn oha(
    oha: &str,
    url: &str,
    token: Option<&str>,
    seconds: u64,
    rate: u64,
) -> anyhow::Result<Value> {
    let mut command = Command::new(oha);
    command.args([
        "--no-tui",
        "--output-format",
        "json",
        "-z",
        &format!("{seconds}s"),
        "-q",
        &rate.to_string(),
    ]);
    command.args([
        "-c",
        "32",
        "-m",
        "POST",
        "-H",
        "content-type: application/json",
        "-H",
    ]);
    command.arg("accept: application/json, text/event-stream");
    if let Some(token) = token {
        command.args(["-H", &format!("authorization: Bearer {token}")]);
    }
    command.args(["-d", CALL, url]);
    let output = command.output().context("run oha")?;
    if !output.status.success() {
        bail!("oha failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// One round: the same load straight to the upstream, through the byte relay, and through the sidecar.
struct Round {
    load: f64,
    direct: Value,
    relayed: Value,
    proxied: Value,
    cpu_us_per_request: f64,
}

/// User plus system CPU time of a process, in ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) are counted from its closing parenthesis.
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

fn load_average() -> anyhow::Result<f64> {
    let text = std::fs::read_to_string("/proc/loadavg")?;
    Ok(text
        .split_whitespace()
        .next()
        .context("load average")?
        .parse()?)
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn micros(report: &Value, percentile: &str) -> f64 {
    report["latencyPercentiles"][percentile]
        .as_f64()
        .unwrap_or(f64::NAN)
        * 1e6
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        bail!("usage: loadbench <mcp-authz-sidecar> <oha> [seconds] [rate] [streams] [rounds]");
    }
    let seconds: u64 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(15);
    let rate: u64 = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let streams: usize = args.get(5).map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let rounds: usize = args.get(6).map(|s| s.parse()).transpose()?.unwrap_or(5);

    let key = TestKey::es256("k1");
    let jwks_port = serve(jwks, jwks_document(&[&key])).await?;
    let upstream_port = serve(upstream, String::new()).await?;
    let relay_port = relay(upstream_port)?;
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
    };
    let (proxy_port, admin_port) = (free()?, free()?);
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("sidecar.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{proxy_port}\nadminListen: 127.0.0.1:{admin_port}\n\
             upstream: http://127.0.0.1:{upstream_port}\nresource: {RESOURCE}\nissuer: {ISSUER}\n\
             jwksUri: http://127.0.0.1:{jwks_port}/jwks\nscopesSupported: [mcp:read]\n\
             rules:\n- {{method: tools/call, name: 'get_*', scopes: [mcp:read]}}\n"
        ),
    )?;
    let log_level = std::env::var("LOADBENCH_RUST_LOG").unwrap_or_else(|_| "info".into());
    let mut child = Command::new(&args[1])
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", &log_level)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start the sidecar")?;
    let audit_lines = Arc::new(AtomicU64::new(0));
    let stdout = child.stdout.take().context("stdout")?;
    let counted = audit_lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if line.contains(r#""target":"audit""#) {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let sidecar = Killed(child);
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut ready = false;
    for _ in 0..100 {
        let req = Request::get(format!("http://127.0.0.1:{admin_port}/readyz"))
            .body(Full::new(Bytes::new()))?;
        if client.request(req).await.is_ok_and(|r| r.status() == 200) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !ready {
        bail!("the sidecar never became ready");
    }
    let mut claims = claims_for(now());
    claims["scope"] = json!("mcp:read");
    let token = key.sign(&claims);
    let pid = sidecar.0.id();
    let idle_rss = rss_kib(pid)?;

    let (oha_bin, direct_url, relay_url, proxy_url) = (
        args[2].clone(),
        format!("http://127.0.0.1:{upstream_port}/mcp"),
        format!("http://127.0.0.1:{relay_port}/mcp"),
        format!("http://127.0.0.1:{proxy_port}/mcp"),
    );
    // Direct and proxied runs alternate, so a neighbour's load drifting over minutes hits both alike; the
    // medians over the rounds are the figures.
    let t = token.clone();
    let runs = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Round>> {
        let mut runs = Vec::new();
        for _ in 0..rounds {
            let direct = oha(&oha_bin, &direct_url, None, seconds, rate)?;
            let relayed = oha(&oha_bin, &relay_url, None, seconds, rate)?;
            let load = load_average()?;
            let cpu_before = cpu_ticks(pid)?;
            let proxied = oha(&oha_bin, &proxy_url, Some(&t), seconds, rate)?;
            let cpu = cpu_ticks(pid)? - cpu_before;
            let answered = proxied["statusCodeDistribution"]["200"]
                .as_u64()
                .unwrap_or(0);
            runs.push(Round {
                load,
                direct,
                relayed,
                proxied,
                // /proc counts CPU time in ticks of 10 ms (USER_HZ 100).
                cpu_us_per_request: cpu as f64 * 10_000.0 / answered.max(1) as f64,
            });
        }
        Ok(runs)
    })
    .await??;
    let load_rss = rss_kib(pid)?;
    let ok = |r: &Value| r["statusCodeDistribution"]["200"].as_u64().unwrap_or(0);
    println!(
        "sidecar log level {log_level}: {} audit lines read from its stdout",
        audit_lines.load(Ordering::Relaxed)
    );
    println!(
        "| round | load avg (1 min) | run | requests 200 | p50 µs | p90 µs | p99 µs | p99.9 µs | sidecar CPU µs/request |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (i, round) in runs.iter().enumerate() {
        let load = round.load;
        for (name, r) in [
            ("direct", &round.direct),
            ("byte relay", &round.relayed),
            ("sidecar", &round.proxied),
        ] {
            let cpu = if name == "sidecar" {
                format!("{:.1}", round.cpu_us_per_request)
            } else {
                String::new()
            };
            println!(
                "| {} | {load:.2} | {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {cpu} |",
                i + 1,
                ok(r),
                micros(r, "p50"),
                micros(r, "p90"),
                micros(r, "p99"),
                micros(r, "p99.9")
            );
        }
    }
    println!(
        "median sidecar CPU over {rounds} rounds: {:.1} µs per request",
        median(runs.iter().map(|r| r.cpu_us_per_request))
    );
    for p in ["p50", "p90", "p99"] {
        let of = |pick: fn(&Round) -> &Value| median(runs.iter().map(|r| micros(pick(r), p)));
        let added = |pick: fn(&Round) -> &Value| {
            median(
                runs.iter()
                    .map(|r| micros(pick(r), p) - micros(&r.direct, p)),
            )
        };
        println!(
            "median {p} over {rounds} rounds: direct {:.0} µs; byte relay {:.0} µs (added {:.0}); \
             sidecar {:.0} µs (added {:.0})",
            of(|r| &r.direct),
            of(|r| &r.relayed),
            added(|r| &r.relayed),
            of(|r| &r.proxied),
            added(|r| &r.proxied),
        );
    }

    // Open streams: each a GET SSE stream held open through the sidecar.
    let mut open = Vec::with_capacity(streams);
    for _ in 0..streams {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", proxy_port)).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let req = Request::get(format!("http://127.0.0.1:{proxy_port}/mcp"))
            .header("host", format!("127.0.0.1:{proxy_port}"))
            .header("authorization", format!("Bearer {token}"))
            .header("accept", "text/event-stream")
            .body(Full::new(Bytes::new()))?;
        let response = sender.send_request(req).await?;
        if response.status() != 200 {
            bail!("stream refused: {}", response.status());
        }
        open.push((sender, response));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let streams_rss = rss_kib(pid)?;
    println!(
        "resident memory: idle {:.1} MiB, after the load runs {:.1} MiB, with {} open streams {:.1} MiB",
        idle_rss as f64 / 1024.0,
        load_rss as f64 / 1024.0,
        open.len(),
        streams_rss as f64 / 1024.0
    );
    if let Some(hold) = std::env::var("LOADBENCH_HOLD_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        // Time to take a heap profile of the sidecar (valgrind's `vgdb detailed_snapshot`) with the streams open.
        println!("holding the streams open for {hold} s (sidecar pid {pid})");
        tokio::time::sleep(Duration::from_secs(hold)).await;
    }
    Ok(())
}
