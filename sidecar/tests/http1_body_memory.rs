//! Memory held while a request body is read: small pieces of body data must not pin the read allocations they
//! arrived in (the body limit counts data bytes only). A test binary of its own, because it counts the heap
//! with its own global allocator; the tests take turns so each measures only itself.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mcp_authz_sidecar::server::Sidecar;
use mcp_authz_sidecar::testing::{TestKey, claims_for, now};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is passed on to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Starts a peak measurement; returns the baseline.
fn reset_peak() -> usize {
    let live = LIVE.load(Ordering::SeqCst);
    PEAK.store(live, Ordering::SeqCst);
    live
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A sidecar with the default body limits (the harness's 4 KiB / 400 ms are too small to show the effect).
struct Big {
    sidecar: Sidecar,
    token: String,
    _upstream: Upstream,
    _jwks: JwksServer,
}

async fn big_limits() -> Big {
    let key = TestKey::es256("k1");
    let jwks = JwksServer::start(&[&key]).await;
    let upstream = Upstream::start().await;
    let mut config = config(&upstream.url(), &jwks.url());
    config.limits.max_body_bytes = 4 * 1024 * 1024;
    config.limits.body_timeout_ms = 30_000;
    let sidecar = Sidecar::start(config).await.unwrap();
    for _ in 0..100 {
        let mut admin = TcpStream::connect(sidecar.admin_addr).await.unwrap();
        admin
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = admin.read_to_end(&mut answer).await;
        if answer.starts_with(b"HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut claims = claims_for(now());
    claims["scope"] = serde_json::json!("mcp:read");
    let token = key.sign(&claims);
    Big {
        sidecar,
        token,
        _upstream: upstream,
        _jwks: jwks,
    }
}

/// A chunked body of one-byte chunks, each padded with a chunk extension, must not hold a read's allocation
/// per byte of data, nor be read on past the body's budget for extensions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_padded_one_byte_chunks_is_refused_without_pinning_its_reads() {
    let _serial = SERIAL.lock().await;
    let b = big_limits().await;
    let padded_chunk = format!("1;{}\r\n \r\n", "a".repeat(4000));
    let mut request = format!(
        "POST /mcp HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n",
        b.token
    );
    for _ in 0..3900 {
        request.push_str(&padded_chunk);
    }
    let mut socket = TcpStream::connect(b.sidecar.proxy_addr).await.unwrap();
    let baseline = reset_peak();
    let (mut read, mut write) = socket.split();
    // The sidecar may close before all is written; what it answers is the point.
    let writer = async {
        let _ = write.write_all(request.as_bytes()).await;
    };
    let reader = async {
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(30), read.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed without an answer");
            answer.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&answer).into_owned()
    };
    let ((), answer) = tokio::join!(writer, reader);
    let held = PEAK.load(Ordering::SeqCst).saturating_sub(baseline);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:.200}");
    assert!(answer.contains("connection: close"), "{answer:.300}");
    assert!(
        held < 4 * 1024 * 1024,
        "reading the padded chunks raised the heap's peak by {} KiB",
        held / 1024
    );
}

/// A plain Content-Length body that arrives a byte at a time (a slow or hostile client; every TCP segment is one
/// read) must not pin a read allocation per byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_a_byte_at_a_time_does_not_pin_a_read_per_byte() {
    let _serial = SERIAL.lock().await;
    let b = big_limits().await;
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: 1000000\r\n\r\n",
        b.token
    );
    let addr = b.sidecar.proxy_addr;
    let trickled = 2000;
    let baseline = reset_peak();
    let socket = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut socket = std::net::TcpStream::connect(addr).unwrap();
        socket.set_nodelay(true).unwrap();
        socket.write_all(head.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        for _ in 0..trickled {
            socket.write_all(b" ").unwrap();
            std::thread::sleep(Duration::from_micros(100));
        }
        std::thread::sleep(Duration::from_millis(100));
        socket
    })
    .await
    .unwrap();
    let held = PEAK.load(Ordering::SeqCst).saturating_sub(baseline);
    drop(socket);
    assert!(
        held < 1024 * 1024,
        "{trickled} body bytes sent one per segment raised the heap's peak by {} KiB",
        held / 1024
    );
}
