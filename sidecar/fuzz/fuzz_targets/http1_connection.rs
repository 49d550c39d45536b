//! A whole client connection through `server::serve` over a real loopback socket. The first input byte picks
//! how the rest is cut into writes (segments of 1 to 64 bytes, or all at once), the second how the client
//! ends: its sending side closed and every answer read, or the socket dropped at once (early close). The rest
//! is the client's bytes: pipelined requests, `Expect: 100-continue`, chunked bodies, garbage.
//!
//! The connection always ends (within 5 s of the client's end), never panics, and what the client reads is
//! a well-formed sequence of responses: interim `100 Continue` only before a final answer, and the handler's
//! answers are exactly the requests the pure parser (`head::parse_request`, then each body by its framing)
//! finds in the same bytes, in order, with the same methods and body lengths.
#![no_main]

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::fuzz_target;
use mcp_authz_http1::chunked::{ChunkedDecoder, Decoded};
use mcp_authz_http1::head::{Framing, parse_request};
use mcp_authz_http1::server::{Settings, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Method and body length of every request the pure parser finds whole, up to the first it cannot take.
fn expected(data: &[u8]) -> Vec<String> {
    let mut seen = Vec::new();
    let mut rest = data;
    while let Ok(Some((len, head))) = parse_request(rest) {
        rest = &rest[len..];
        let body = match head.framing {
            Framing::Empty => 0,
            Framing::Length(n) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                if rest.len() < n {
                    break;
                }
                rest = &rest[n..];
                n
            }
            Framing::Chunked => {
                let mut decoder = ChunkedDecoder::new();
                let mut buf = BytesMut::from(rest);
                let mut total = 0;
                let complete = loop {
                    match decoder.decode(&mut buf) {
                        Ok(Decoded::Data(d)) => total += d.len(),
                        Ok(Decoded::Done) => break true,
                        Ok(Decoded::NeedMore) | Err(_) => break false,
                    }
                };
                if !complete {
                    break;
                }
                rest = &rest[rest.len() - buf.len()..];
                total
            }
            Framing::UntilClose => unreachable!(),
        };
        seen.push(format!("{} {body}", head.parts.method));
        if head.close {
            break;
        }
    }
    seen
}

/// The answers in what the client read: the handler's `x-echo` values up to the first that is not one.
fn answers(mut wire: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut continued = false;
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut fields);
        let len = match response.parse(wire) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                assert!(
                    wire.is_empty(),
                    "a partial answer: {:?}",
                    String::from_utf8_lossy(wire)
                );
                return out;
            }
            Err(e) => panic!(
                "unreadable answer ({e}): {:?}",
                String::from_utf8_lossy(wire)
            ),
        };
        let code = response.code.expect("status");
        let field = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        if code == 100 {
            assert!(!continued, "two 100 Continue for one request");
            continued = true;
            wire = &wire[len..];
            continue;
        }
        assert!(code >= 200, "interim {code}");
        continued = false;
        let length: usize =
            field("content-length").map_or(0, |v| v.parse().expect("a length the layer wrote"));
        let echo = field("x-echo");
        wire = &wire[len + length..];
        match echo {
            Some(echo) if echo != "error" => out.push(echo),
            // The layer's own refusal or a body that failed: the connection ends there.
            _ => {
                assert!(wire.is_empty(), "answers after a refusal");
                return out;
            }
        }
    }
}

async fn handler(
    request: http::Request<mcp_authz_http1::body::WireBody>,
) -> http::Response<Full<Bytes>> {
    let method = request.method().to_string();
    let echo = match request.into_body().collect().await {
        Ok(body) => format!("{method} {}", body.to_bytes().len()),
        Err(_) => "error".to_owned(),
    };
    http::Response::builder()
        .header("x-echo", echo)
        .body(Full::new(Bytes::new()))
        .expect("response")
}

fuzz_target!(init: {
    // A Rust program's own main (the sidecar's) ignores SIGPIPE, so a write to a closed socket is an error;
    // libFuzzer's main does not, and an early close would kill the fuzzer instead of testing the layer.
    // SAFETY: called once, before any thread of the target exists; SIG_IGN is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}, |input: &[u8]| {
    let [cut, end, data @ ..] = input else {
        return;
    };
    if data.len() > 8192 {
        return;
    }
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
    }
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let client = TcpStream::connect(listener.local_addr().expect("addr"))
                .await
                .expect("connect");
            client.set_nodelay(true).expect("nodelay");
            let (server, _) = listener.accept().await.expect("accept");
            let (_shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
            let settings = Settings {
                header_timeout: Duration::from_secs(2),
            };
            let served = tokio::spawn(serve(server, settings, shutdown, handler, |_| {}));
            let segment = match cut % 65 {
                0 => data.len().max(1),
                n => usize::from(n),
            };
            let early_close = end % 2 == 1;
            let (mut reader, mut writer) = client.into_split();
            let read = tokio::spawn(async move {
                let mut wire = Vec::new();
                let _ = reader.read_to_end(&mut wire).await;
                wire
            });
            for piece in data.chunks(segment) {
                if writer.write_all(piece).await.is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            if early_close {
                read.abort();
                drop(writer);
            } else {
                let _ = writer.shutdown().await;
            }
            tokio::time::timeout(Duration::from_secs(5), served)
                .await
                .expect("the connection did not end within 5 s of the client's end")
                .expect("serve panicked");
            if early_close {
                return;
            }
            let wire = read.await.expect("reader");
            let got = answers(&wire);
            let want = expected(data);
            assert_eq!(got, want[..got.len().min(want.len())], "answers differ from the parser's requests");
            assert_eq!(got.len(), want.len(), "requests the parser found were not all answered");
        })
    })
});
