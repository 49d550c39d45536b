//! What one audit record costs on the request's thread: formatting it into the line buffer (the hand-off to the
//! writer thread is a mutex held for a memcpy).

use criterion::{Criterion, criterion_group, criterion_main};
use mcp_authz_audit::{Record, TraceIds};

fn record(c: &mut Criterion) {
    let trace = TraceIds::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
    let record = Record {
        source: "sidecar",
        event: "mcp",
        outcome: "allow",
        reason: "ok",
        subject: "alice@example.com",
        client_id: "https://client.example/oauth/client-metadata.json",
        caller: "person",
        service: "https://mcp.example.com/files",
        method: "tools/call",
        tool: "get_report",
        scopes: "files:read files:write",
        ..Default::default()
    }
    .traced(Some(&trace));
    let mut line = Vec::with_capacity(1024);
    c.bench_function("audit record: format one line", |b| {
        b.iter(|| {
            line.clear();
            record.write_line(&mut line, time::OffsetDateTime::now_utc());
            std::hint::black_box(&line);
        })
    });
    c.bench_function("traceparent: parse", |b| {
        b.iter(|| {
            TraceIds::parse(std::hint::black_box(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ))
        })
    });
}

criterion_group!(benches, record);
criterion_main!(benches);
