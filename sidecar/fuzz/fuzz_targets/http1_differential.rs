//! The same bytes, as one client connection, to this crate's parser (heads, then each body by its framing)
//! and to hyper's HTTP/1 server. Every request both accept must be the same request: method, target and body
//! (so both agree where it starts and ends, its length and its chunked decoding). This parser may refuse what
//! hyper accepts (it is stricter on purpose: RFC 9112's ambiguous framings), never the reverse: a request
//! hyper refuses and this parser accepts is a disagreement, and so is a request this parser took whole where
//! hyper stopped.
#![no_main]

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use mcp_authz_http1::chunked::{ChunkedDecoder, Decoded};
use mcp_authz_http1::head::{Framing, parse_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, PartialEq, Eq, Clone)]
struct Seen {
    method: String,
    target: String,
    body: Vec<u8>,
}

/// How our reading of the connection ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Every byte belonged to a complete request.
    Clean,
    /// A request was cut short by the end of the input.
    Incomplete,
    /// A head or body was refused.
    Refused,
    /// A request asked for the connection to close after it.
    Closed,
}

fn ours(data: &[u8]) -> (Vec<Seen>, End) {
    let mut seen = Vec::new();
    let mut rest = data;
    loop {
        if rest.is_empty() {
            return (seen, End::Clean);
        }
        let (len, head) = match parse_request(rest) {
            Ok(Some(found)) => found,
            Ok(None) => return (seen, End::Incomplete),
            Err(_) => return (seen, End::Refused),
        };
        rest = &rest[len..];
        let body = match head.framing {
            Framing::Empty => Vec::new(),
            Framing::Length(n) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                if rest.len() < n {
                    return (seen, End::Incomplete);
                }
                let (body, after) = rest.split_at(n);
                rest = after;
                body.to_vec()
            }
            Framing::Chunked => {
                let mut decoder = ChunkedDecoder::new();
                let mut buf = BytesMut::from(rest);
                let mut body = Vec::new();
                loop {
                    match decoder.decode(&mut buf) {
                        Ok(Decoded::Data(d)) => body.extend_from_slice(&d),
                        Ok(Decoded::Done) => break,
                        Ok(Decoded::NeedMore) => return (seen, End::Incomplete),
                        Err(_) => return (seen, End::Refused),
                    }
                }
                rest = &rest[rest.len() - buf.len()..];
                body
            }
            Framing::UntilClose => unreachable!("a request is never read until close"),
        };
        seen.push(Seen {
            method: head.parts.method.to_string(),
            target: head.parts.uri.to_string(),
            body,
        });
        if head.close {
            return (seen, End::Closed);
        }
    }
}

fn hypers(data: &[u8]) -> (Vec<Seen>, bool) {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
    }
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let (mut client, server) = tokio::io::duplex(1 << 20);
            let seen = Arc::new(Mutex::new(Vec::new()));
            let record = seen.clone();
            let service =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let record = record.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        // Only a body read whole counts as a request hyper accepted.
                        if let Ok(collected) = body.collect().await {
                            record.lock().unwrap().push(Seen {
                                method: parts.method.to_string(),
                                target: parts.uri.to_string(),
                                body: collected.to_bytes().to_vec(),
                            });
                        }
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Empty::<Bytes>::new(),
                        ))
                    }
                });
            // Half-close: the client has sent everything and closed its side; hyper still answers what it read.
            let connection = hyper::server::conn::http1::Builder::new()
                .half_close(true)
                .serve_connection(hyper_util::rt::TokioIo::new(server), service);
            let feed = async {
                let _ = client.write_all(data).await;
                let _ = client.shutdown().await;
                let mut sink = Vec::new();
                let _ = client.read_to_end(&mut sink).await;
            };
            let (served, ()) = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                tokio::join!(connection, feed)
            })
            .await
            .expect("hyper took more than 5 s over in-memory input");
            let seen = seen.lock().unwrap().clone();
            (seen, served.is_ok())
        })
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() > 8192 {
        return;
    }
    let (ours, end) = ours(data);
    let (theirs, _ok) = hypers(data);
    let both = ours.len().min(theirs.len());
    assert_eq!(
        ours[..both],
        theirs[..both],
        "disagreement about a request both accepted ({end:?})"
    );
    assert!(
        theirs.len() >= ours.len(),
        "hyper stopped after {} request(s) where this parser took {} ({end:?}): {:?}",
        theirs.len(),
        ours.len(),
        ours.get(theirs.len())
    );
});
