//! Load benchmark of the whole proxy: the release `mcp-authz-sidecar` binary in front of a minimal upstream,
//! measured with `oha` at a fixed request rate against the upstream directly, through a byte relay, through
//! nginx as a plain reverse proxy (no auth) and through the sidecar (rounds of one run each, alternating), then
//! each proxy's maximum throughput and CPU per request, then its resident memory with many open SSE streams.
//!
//! `cargo run --release -p mcp-authz-sidecar --features test-support --example loadbench -- \
//!    <path to mcp-authz-sidecar> <path to oha> [seconds=15] [rate=1000] [streams=1000] [rounds=5]`
//!
//! `tests/bench/sidecar-vs-nginx.sh` runs it as issue 15 asks: each proxy pinned to one core, the load (and this
//! harness with the upstream) on the other. Settings from the environment:
//! - `LOADBENCH_NGINX=/usr/sbin/nginx`: nginx runs too (one worker, upstream keep-alive, `proxy_buffering off`
//!   as SSE needs, its access log written to a file as it ships; `LOADBENCH_NGINX_ACCESS_LOG=off` turns it off);
//! - `LOADBENCH_PROXY_CPUS=1`: each proxy is started under `taskset -c` with this CPU list;
//! - `LOADBENCH_WRK=/usr/bin/wrk` and `LOADBENCH_MAX_SECONDS=10`: each round also drives each proxy as fast as
//!   `wrk` can (64 connections) and reads its CPU time from `/proc`;
//! - `LOADBENCH_PERF_SECONDS=N`: instead of the rounds, one unlimited run through the sidecar (or the proxy
//!   named by `LOADBENCH_PERF_PROXY`), N seconds long, its pid printed first (for `perf record -p`);
//! - `LOADBENCH_PERF_REQUESTS=N`: instead of the rounds, 1,000 requests through that proxy to warm it, then
//!   the shell command `LOADBENCH_PERF_HOOK` run with `start <pid>`, exactly N requests (oha, 32 connections,
//!   unlimited rate), the hook again with `stop <pid>`: a fixed amount of work between the two calls, for
//!   counts that do not depend on the machine's load (`callgrind_control -z` / `-d`, `strace -c -p`);
//! - `LOADBENCH_AWAKE=1` (with `LOADBENCH_PROXY_CPUS`): during each proxy's fixed-rate run a busy loop at the
//!   lowest priority runs on the proxy's CPUs, so that the core is never idle and halted: what is left of
//!   the added latency is the proxy's own and a context switch, not a virtual machine waking a halted core
//!   (about 45 µs of the added p50 on the 2-core machine of issue 16, for nginx and the sidecar alike);
//! - `LOADBENCH_PROXY_WRAP="valgrind --tool=callgrind"`: each proxy starts under this command (after
//!   `taskset`); proxies are stopped with SIGTERM, so such a tool writes its report.
//!
//! The sidecar runs as in production: every `tools/call` writes its audit record to stdout, a pipe drained by a
//! thread of the harness (a container runtime's part), and its logs (level `info`, `LOADBENCH_RUST_LOG`) go to
//! stderr. `MCP_AUTHZ_AUDIT_OUTPUT=off` turns audit records off for a comparison. It inherits the environment (`MCP_AUTHZ_SIDECAR_WORKERS=2` to compare
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
        // SIGTERM first, so that a tool the proxy runs under (LOADBENCH_PROXY_WRAP) writes its report.
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        for _ in 0..100 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// nginx's master, stopped with SIGTERM: it then stops its workers and waits for them. SIGKILL would leave
/// the workers running, orphaned.
struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let stopped = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            let _ = self.0.kill();
        }
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

/// How much load one oha run sends.
#[derive(Clone, Copy)]
enum Amount {
    /// `rate` requests per second for `seconds`.
    Rate { seconds: u64, rate: u64 },
    /// Exactly this many requests, as fast as they are answered.
    Count(u64),
}

fn oha(oha: &str, url: &str, token: Option<&str>, amount: Amount) -> anyhow::Result<Value> {
    let mut command = Command::new(oha);
    command.args(["--no-tui", "--output-format", "json"]);
    match amount {
        Amount::Rate { seconds, rate } => {
            command.args(["-z", &format!("{seconds}s"), "-q", &rate.to_string()])
        }
        Amount::Count(n) => command.args(["-n", &n.to_string()]),
    };
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

/// User plus system CPU time of processes, in ticks.
fn cpu_ticks(pids: &[u32]) -> anyhow::Result<u64> {
    let mut total = 0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name (which may hold spaces) are counted from its closing parenthesis.
        let rest = stat.rsplit_once(')').context("stat format")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11).context("utime")?.parse()?;
        let stime: u64 = fields.get(12).context("stime")?.parse()?;
        total += utime + stime;
    }
    Ok(total)
}

/// A process and its children (nginx's master and workers).
fn with_children(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        pids.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
    }
    pids
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

fn ok(report: &Value) -> u64 {
    report["statusCodeDistribution"]["200"]
        .as_u64()
        .unwrap_or(0)
}

/// The busy loop of `LOADBENCH_AWAKE`, if asked for: the lowest priority, on the proxies' CPUs.
fn keep_awake() -> anyhow::Result<Option<Killed>> {
    let cpus = std::env::var("LOADBENCH_PROXY_CPUS").unwrap_or_default();
    if std::env::var("LOADBENCH_AWAKE").as_deref() != Ok("1") || cpus.is_empty() {
        return Ok(None);
    }
    let child = Command::new("nice")
        .args([
            "-n",
            "19",
            "taskset",
            "-c",
            &cpus,
            "sh",
            "-c",
            "while :; do :; done",
        ])
        .spawn()
        .context("the busy loop of LOADBENCH_AWAKE")?;
    Ok(Some(Killed(child)))
}

/// A proxy under test: where it listens and which processes' CPU time and memory are its own.
#[derive(Clone)]
struct Proxied {
    name: &'static str,
    port: u16,
    pids: Vec<u32>,
}

/// `taskset -c <cpus> [wrap...] program` when the proxies are pinned, else `[wrap...] program`.
fn pinned(program: &str) -> Command {
    let mut line: Vec<String> = Vec::new();
    if let Ok(cpus) = std::env::var("LOADBENCH_PROXY_CPUS")
        && !cpus.is_empty()
    {
        line.extend(["taskset".into(), "-c".into(), cpus]);
    }
    if let Ok(wrap) = std::env::var("LOADBENCH_PROXY_WRAP") {
        line.extend(wrap.split_whitespace().map(str::to_owned));
    }
    line.push(program.into());
    let mut command = Command::new(&line[0]);
    command.args(&line[1..]);
    command
}

/// nginx as a plain reverse proxy in front of the same upstream: one worker (one core, like the sidecar),
/// upstream connections kept alive, responses not buffered (what SSE needs), the access log on as shipped.
fn start_nginx(
    nginx: &str,
    dir: &std::path::Path,
    upstream_port: u16,
) -> anyhow::Result<(Nginx, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let d = dir.display();
    let access_log = match std::env::var("LOADBENCH_NGINX_ACCESS_LOG").as_deref() {
        Ok("off") => "off".to_owned(),
        _ => format!("{d}/access.log"),
    };
    let config = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         worker_rlimit_nofile 16384;\nevents {{ worker_connections 8192; }}\n\
         http {{\n  access_log {access_log};\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           upstream mcp {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}\n\
           server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://mcp;\n\
               proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_buffering off;\n\
               proxy_read_timeout 1h;\n    }}\n  }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, config)?;
    let child = pinned(nginx)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start nginx")?;
    let child = Nginx(child);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok((child, port));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nginx never listened; see {d}/error.log")
}

/// The pid nginx runs as: taskset execs it, so the child's pid is nginx's master.
fn nginx_pids(child: &Nginx) -> Vec<u32> {
    with_children(child.0.id())
}

/// `wrk` as fast as it goes for `seconds`: (requests answered 2xx, all requests).
fn wrk(wrk: &str, script: &std::path::Path, url: &str, seconds: u64) -> anyhow::Result<(u64, u64)> {
    let output = Command::new(wrk)
        .args(["-t", "1", "-c", "64", "-d", &format!("{seconds}s"), "-s"])
        .arg(script)
        .arg(url)
        .output()
        .context("run wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .with_context(|| format!("wrk printed no result: {text}"))?;
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('=')?.1.parse().ok())
        .collect();
    let (requests, bad) = (numbers[0], numbers[1]);
    Ok((requests - bad, requests))
}

/// One proxy's run at full speed.
struct MaxRun {
    requests_per_second: f64,
    cpu_us_per_request: f64,
    /// Share of one core the proxy used: near 1 means the proxy, not the load, set the pace.
    core_share: f64,
}

fn max_run(
    wrk_bin: &str,
    script: &std::path::Path,
    proxy: &Proxied,
    seconds: u64,
) -> anyhow::Result<MaxRun> {
    let before = cpu_ticks(&proxy.pids)?;
    let (answered, all) = wrk(
        wrk_bin,
        script,
        &format!("http://127.0.0.1:{}/mcp", proxy.port),
        seconds,
    )?;
    let ticks = cpu_ticks(&proxy.pids)? - before;
    if answered != all {
        bail!(
            "{}: {} of {all} requests not answered 2xx",
            proxy.name,
            all - answered
        );
    }
    Ok(MaxRun {
        requests_per_second: answered as f64 / seconds as f64,
        // /proc counts CPU time in ticks of 10 ms (USER_HZ 100).
        cpu_us_per_request: ticks as f64 * 10_000.0 / answered.max(1) as f64,
        core_share: ticks as f64 / (seconds as f64 * 100.0),
    })
}

/// One run at the fixed rate through one path.
struct RateRun {
    path: &'static str,
    report: Value,
    /// The proxy's CPU per answered request, for proxies.
    cpu_us_per_request: Option<f64>,
}

/// One round: the same load straight to the upstream, through the byte relay, and through each proxy, the
/// proxies' order alternating between rounds; then each proxy at full speed.
struct Round {
    load: f64,
    runs: Vec<RateRun>,
    max: Vec<(&'static str, MaxRun)>,
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
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let max_seconds: u64 = env("LOADBENCH_MAX_SECONDS")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10);

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
    let mut child = pinned(&args[1])
        .arg("--config")
        .arg(&config)
        .envs(image_env()?)
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
            if line.starts_with(r#"{"schema":"mcp-authz.audit/"#) {
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

    let mut proxies = vec![Proxied {
        name: "sidecar",
        port: proxy_port,
        pids: vec![pid],
    }];
    let nginx_dir = tempfile::tempdir()?;
    let nginx = match env("LOADBENCH_NGINX") {
        Some(bin) => {
            let (child, port) = start_nginx(&bin, nginx_dir.path(), upstream_port)?;
            let pids = nginx_pids(&child);
            println!("nginx: {}, pids {pids:?}", nginx_version(&bin));
            proxies.push(Proxied {
                name: "nginx",
                port,
                pids,
            });
            Some(child)
        }
        None => None,
    };
    let wrk_script = dir.path().join("call.lua");
    std::fs::write(
        &wrk_script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{CALL}'\n\
             wrk.headers[\"content-type\"] = \"application/json\"\n\
             wrk.headers[\"accept\"] = \"application/json, text/event-stream\"\n\
             wrk.headers[\"authorization\"] = \"Bearer {token}\"\n\
             done = function(summary, latency, requests)\n\
               io.write(string.format(\"RESULT requests=%d bad=%d\\n\", summary.requests,\n\
                 summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))\n\
             end\n"
        ),
    )?;
    if let Some(count) = env("LOADBENCH_PERF_REQUESTS")
        .map(|s| s.parse::<u64>())
        .transpose()?
    {
        let name = env("LOADBENCH_PERF_PROXY").unwrap_or_else(|| "sidecar".into());
        let target = proxies
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("no proxy {name} (LOADBENCH_PERF_PROXY)"))?;
        // nginx's work is done by its worker, the last of its processes.
        let target_pid = target.pids.last().copied().unwrap_or_default();
        let url = format!("http://127.0.0.1:{}/mcp", target.port);
        let (oha_bin, hook, t) = (args[2].clone(), env("LOADBENCH_PERF_HOOK"), token.clone());
        println!("{name} pid {target_pid}: {count} requests after 1,000 to warm it");
        // Off the runtime's thread: the upstream is served on it.
        let report = tokio::task::spawn_blocking(move || -> anyhow::Result<Value> {
            let hook_run = |step: &str| -> anyhow::Result<()> {
                if let Some(hook) = &hook {
                    // The step and the pid follow the command as its arguments.
                    let line = format!("{hook} \"$@\"");
                    let status = Command::new("sh")
                        .args(["-c", &line, "hook", step, &target_pid.to_string()])
                        .status()?;
                    if !status.success() {
                        bail!("LOADBENCH_PERF_HOOK {step} failed: {status}");
                    }
                }
                Ok(())
            };
            let warm = oha(&oha_bin, &url, Some(&t), Amount::Count(1000))?;
            if ok(&warm) != 1000 {
                bail!("warm-up: {} of 1000 answered 200", ok(&warm));
            }
            hook_run("start")?;
            let report = oha(&oha_bin, &url, Some(&t), Amount::Count(count))?;
            hook_run("stop")?;
            Ok(report)
        })
        .await??;
        println!("{name}: {} of {count} requests answered 200", ok(&report));
        drop(nginx);
        return Ok(());
    }
    let wrk_bin = env("LOADBENCH_WRK");
    if let Some(perf_seconds) = env("LOADBENCH_PERF_SECONDS")
        .map(|s| s.parse::<u64>())
        .transpose()?
    {
        let wrk_bin = wrk_bin
            .clone()
            .context("LOADBENCH_PERF_SECONDS needs LOADBENCH_WRK")?;
        let name = env("LOADBENCH_PERF_PROXY").unwrap_or_else(|| "sidecar".into());
        let target = proxies
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("no proxy {name} (LOADBENCH_PERF_PROXY)"))?
            .clone();
        println!(
            "{name} pid {}: running {perf_seconds} s at full speed",
            target.pids.last().copied().unwrap_or_default()
        );
        // Off the runtime's thread: the upstream is served on it.
        let script = wrk_script.clone();
        let run =
            tokio::task::spawn_blocking(move || max_run(&wrk_bin, &script, &target, perf_seconds))
                .await??;
        println!(
            "{name} at full speed: {:.0} requests/s, {:.1} µs CPU per request, {:.2} of a core",
            run.requests_per_second, run.cpu_us_per_request, run.core_share
        );
        return Ok(());
    }

    let (oha_bin, direct_url, relay_url) = (
        args[2].clone(),
        format!("http://127.0.0.1:{upstream_port}/mcp"),
        format!("http://127.0.0.1:{relay_port}/mcp"),
    );
    // All paths alternate within a round, and the proxies swap places between rounds, so a neighbour's load
    // drifting over minutes hits each alike; the medians over the rounds are the figures.
    let t = token.clone();
    let measured = proxies.clone();
    let with_wrk = wrk_bin.is_some();
    let amount = Amount::Rate { seconds, rate };
    let runs = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Round>> {
        let mut all = Vec::new();
        for round in 0..rounds {
            let load = load_average()?;
            let mut order = measured.clone();
            if round % 2 == 1 {
                order.reverse();
            }
            let mut runs = vec![
                RateRun {
                    path: "direct",
                    report: oha(&oha_bin, &direct_url, Some(&t), amount)?,
                    cpu_us_per_request: None,
                },
                RateRun {
                    path: "byte relay",
                    report: oha(&oha_bin, &relay_url, Some(&t), amount)?,
                    cpu_us_per_request: None,
                },
            ];
            for proxy in &order {
                let before = cpu_ticks(&proxy.pids)?;
                let url = format!("http://127.0.0.1:{}/mcp", proxy.port);
                let awake = keep_awake()?;
                let report = oha(&oha_bin, &url, Some(&t), amount)?;
                drop(awake);
                let ticks = cpu_ticks(&proxy.pids)? - before;
                runs.push(RateRun {
                    path: proxy.name,
                    cpu_us_per_request: Some(ticks as f64 * 10_000.0 / ok(&report).max(1) as f64),
                    report,
                });
            }
            let mut max = Vec::new();
            if let Some(wrk_bin) = &wrk_bin {
                for proxy in &order {
                    max.push((
                        proxy.name,
                        max_run(wrk_bin, &wrk_script, proxy, max_seconds)?,
                    ));
                }
            }
            all.push(Round { load, runs, max });
        }
        Ok(all)
    })
    .await??;
    let load_rss = rss_kib(pid)?;
    println!(
        "sidecar log level {log_level}: {} audit lines read from its stdout",
        audit_lines.load(Ordering::Relaxed)
    );
    println!("\nat {rate} requests/s for {seconds} s, 32 connections (oha):");
    println!(
        "| round | load avg (1 min) | path | requests 200 | p50 µs | p90 µs | p99 µs | p99.9 µs | proxy CPU µs/request |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (i, round) in runs.iter().enumerate() {
        for run in &round.runs {
            let r = &run.report;
            println!(
                "| {} | {:.2} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
                i + 1,
                round.load,
                run.path,
                ok(r),
                micros(r, "p50"),
                micros(r, "p90"),
                micros(r, "p99"),
                micros(r, "p99.9"),
                run.cpu_us_per_request
                    .map_or(String::new(), |c| format!("{c:.1}"))
            );
        }
    }
    let path_runs = |path: &str| -> Vec<(&RateRun, &Value)> {
        runs.iter()
            .filter_map(|round| {
                let direct = &round.runs.iter().find(|r| r.path == "direct")?.report;
                Some((round.runs.iter().find(|r| r.path == path)?, direct))
            })
            .collect()
    };
    println!("\nmedians over {rounds} rounds (added = path − direct in the same round):");
    println!(
        "| path | p50 µs | p90 µs | p99 µs | added p50 | added p90 | added p99 | CPU µs/request at {rate}/s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut paths = vec!["direct", "byte relay"];
    paths.extend(proxies.iter().map(|p| p.name));
    for path in paths {
        let rs = path_runs(path);
        let of = |p: &str| median(rs.iter().map(|(r, _)| micros(&r.report, p)));
        let added = |p: &str| median(rs.iter().map(|(r, d)| micros(&r.report, p) - micros(d, p)));
        let cpu = median(rs.iter().filter_map(|(r, _)| r.cpu_us_per_request));
        println!(
            "| {path} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
            of("p50"),
            of("p90"),
            of("p99"),
            added("p50"),
            added("p90"),
            added("p99"),
            if cpu.is_nan() {
                String::new()
            } else {
                format!("{cpu:.1}")
            }
        );
    }
    if with_wrk {
        println!("\nat full speed for {max_seconds} s, 64 connections (wrk, one thread):");
        println!(
            "| round | load avg (1 min) | proxy | requests/s | CPU µs/request | share of its core |"
        );
        println!("|---|---|---|---|---|---|");
        for (i, round) in runs.iter().enumerate() {
            for (name, run) in &round.max {
                println!(
                    "| {} | {:.2} | {name} | {:.0} | {:.1} | {:.2} |",
                    i + 1,
                    round.load,
                    run.requests_per_second,
                    run.cpu_us_per_request,
                    run.core_share
                );
            }
        }
        let max_of = |name: &str, pick: fn(&MaxRun) -> f64| {
            median(runs.iter().flat_map(|r| {
                r.max
                    .iter()
                    .filter(|(n, _)| *n == name)
                    .map(|(_, m)| pick(m))
            }))
        };
        for proxy in &proxies {
            println!(
                "median {}: {:.0} requests/s, {:.1} µs CPU per request",
                proxy.name,
                max_of(proxy.name, |m| m.requests_per_second),
                max_of(proxy.name, |m| m.cpu_us_per_request)
            );
        }
        if proxies.len() > 1 {
            // Ratios per round, then their median: both proxies of a round met the same neighbours.
            let ratio = |pick: fn(&MaxRun) -> f64| {
                median(runs.iter().filter_map(|r| {
                    let s = r.max.iter().find(|(n, _)| *n == "sidecar")?;
                    let n = r.max.iter().find(|(n, _)| *n == "nginx")?;
                    Some(pick(&s.1) / pick(&n.1))
                }))
            };
            println!(
                "median ratio sidecar/nginx: throughput {:.2}, CPU per request {:.2}",
                ratio(|m| m.requests_per_second),
                ratio(|m| m.cpu_us_per_request)
            );
        }
    }

    // Open streams: each a GET SSE stream held open through each proxy in turn.
    for proxy in &proxies {
        let rss_of =
            |pids: &[u32]| -> anyhow::Result<u64> { pids.iter().map(|p| rss_kib(*p)).sum() };
        let before = rss_of(&proxy.pids)?;
        let open = open_streams(proxy.port, &token, streams).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let with_streams = rss_of(&proxy.pids)?;
        if proxy.name == "sidecar" {
            println!(
                "sidecar resident memory: idle {:.1} MiB, after the load runs {:.1} MiB, with {} open streams {:.1} MiB",
                idle_rss as f64 / 1024.0,
                load_rss as f64 / 1024.0,
                open.len(),
                with_streams as f64 / 1024.0
            );
        } else {
            let each: Vec<String> = proxy
                .pids
                .iter()
                .map(|p| rss_kib(*p).map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0)))
                .collect();
            println!(
                "{} resident memory (all its processes): before {:.1} MiB, with {} open streams {:.1} MiB (each: {} MiB)",
                proxy.name,
                before as f64 / 1024.0,
                open.len(),
                with_streams as f64 / 1024.0,
                each.join(" + ")
            );
        }
        if proxy.name == "sidecar"
            && let Some(hold) = std::env::var("LOADBENCH_HOLD_SECONDS")
                .ok()
                .and_then(|v| v.parse().ok())
        {
            // Time to take a heap profile of the sidecar (valgrind's `vgdb detailed_snapshot`) with the streams open.
            println!("holding the streams open for {hold} s (sidecar pid {pid})");
            tokio::time::sleep(Duration::from_secs(hold)).await;
        }
        drop(open);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop(nginx);
    Ok(())
}

fn nginx_version(bin: &str) -> String {
    Command::new(bin)
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .unwrap_or_default()
}

type OpenStream = (
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    Response<Incoming>,
);

/// Opens `count` GET SSE streams through the proxy at `port`, each on its own connection.
async fn open_streams(port: u16, token: &str, count: usize) -> anyhow::Result<Vec<OpenStream>> {
    let mut open = Vec::with_capacity(count);
    for _ in 0..count {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let req = Request::get(format!("http://127.0.0.1:{port}/mcp"))
            .header("host", format!("127.0.0.1:{port}"))
            .header("authorization", format!("Bearer {token}"))
            .header("accept", "text/event-stream")
            .body(Full::new(Bytes::new()))?;
        let response = sender.send_request(req).await?;
        if response.status() != 200 {
            bail!("stream refused: {}", response.status());
        }
        open.push((sender, response));
    }
    Ok(open)
}

/// The environment the sidecar's image sets (`ENV NAME=VALUE` lines of its Dockerfile): the sidecar is measured
/// as it runs in a pod.
fn image_env() -> anyhow::Result<Vec<(String, String)>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile");
    let text = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
    text.lines()
        .filter_map(|line| line.strip_prefix("ENV "))
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) => Ok((name.to_owned(), value.to_owned())),
            None => Err(anyhow::anyhow!("{path}: ENV {pair} is not NAME=VALUE")),
        })
        .collect()
}
