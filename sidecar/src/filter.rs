//! Filters `tools/list`, `resources/list`, `resources/templates/list` and `prompts/list` answers so a client
//! only sees what its token may use. JSON answers are filtered whole (they are one bounded message); SSE
//! streams are filtered event by event as they pass, never buffered beyond the event being read.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use serde_json::Value;

use crate::caller::Caller;
use crate::jsonrpc::ListKind;
use crate::metrics::StreamGuard;
use crate::rules::{Decision, Operation, Policy};

/// Boxed error of proxied bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a filtered answer answers. Either way every list in every result is filtered; the difference is
/// how strictly the answer must be readable (see `answers_requests`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListMatcher {
    /// The answer to a POST that carried list requests.
    Requests,
    /// Whatever a GET stream carries, where a resumed POST stream's answers may arrive (`Last-Event-ID`).
    Stream,
}

/// Filters list results for one token.
#[derive(Clone)]
pub struct ListFilter {
    policy: Arc<Policy>,
    scopes: Arc<BTreeSet<String>>,
    caller: Caller,
    matcher: ListMatcher,
}

impl ListFilter {
    /// A filter for a token's effective scopes and caller: an entry shows when this token may use it.
    pub fn new(
        policy: Arc<Policy>,
        scopes: Arc<BTreeSet<String>>,
        caller: Caller,
        matcher: ListMatcher,
    ) -> Self {
        Self {
            policy,
            scopes,
            caller,
            matcher,
        }
    }

    /// Whether this filters the answers to list requests of a POST (rather than whatever a GET stream carries).
    pub fn answers_requests(&self) -> bool {
        self.matcher == ListMatcher::Requests
    }

    /// Filters one JSON-RPC message in place; returns whether it changed.
    ///
    /// Every list a result carries is filtered, whatever the message's id: matching answers to requests by
    /// id would let an answer whose id a client reads differently (`1.0`, `"1"` for `1`) through unfiltered.
    pub fn filter_message(&self, message: &mut Value) -> bool {
        let Some(result) = message.get_mut("result") else {
            return false;
        };
        let mut changed = false;
        let mut per_token = false;
        for kind in ListKind::ALL {
            let (field, key, method) = match kind {
                ListKind::Tools => ("tools", "name", "tools/call"),
                ListKind::Resources => ("resources", "uri", "resources/read"),
                ListKind::ResourceTemplates => {
                    ("resourceTemplates", "uriTemplate", "resources/read")
                }
                ListKind::Prompts => ("prompts", "name", "prompts/get"),
            };
            let Some(Value::Array(entries)) = result.get_mut(field) else {
                continue;
            };
            per_token = true;
            let before = entries.len();
            entries.retain(|entry| {
                // An entry without a usable name cannot be checked, so it is hidden.
                entry.get(key).and_then(Value::as_str).is_some_and(|name| {
                    self.policy
                        .decide(&Operation::named(method, name), &self.scopes, self.caller)
                        == Decision::Allow
                })
            });
            changed |= entries.len() != before;
        }
        // A `resources/read` result reached this token because the rules allowed its URI to this token.
        per_token |= matches!(result.get("contents"), Some(Value::Array(_)));
        if per_token {
            changed |= make_private(result);
        }
        changed
    }

    /// Filters a whole JSON body (one message or a batch). `None` when nothing changed. A body that is not
    /// JSON is refused: passed on, it would show the client every entry if the client reads it after all.
    pub fn filter_json(&self, body: &[u8]) -> Result<Option<Bytes>, Unfilterable> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let mut value: Value = serde_json::from_slice(body).map_err(|_| Unfilterable)?;
        let changed = match &mut value {
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |acc, m| self.filter_message(m) | acc),
            other => self.filter_message(other),
        };
        Ok(changed.then(|| Bytes::from(value.to_string())))
    }

    /// Filters one complete SSE event (without its terminating blank line). `None` when unchanged.
    ///
    /// Data that cannot be read as JSON (or UTF-8) is withheld, keeping the event's other fields (`id`
    /// still moves the client's resume point): what the filter cannot read, it does not pass on.
    pub fn filter_event(&self, event: &[u8]) -> Option<Bytes> {
        // SSE's field rules: `data` alone is a data line with an empty value.
        let is_data = |line: &[u8]| line == b"data" || line.starts_with(b"data:");
        let lines: Vec<&[u8]> = event
            .split(|b| *b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .collect();
        let first_data = lines.iter().position(|l| is_data(l))?;
        let mut data = Vec::new();
        for (n, line) in lines.iter().filter(|l| is_data(l)).enumerate() {
            if n > 0 {
                data.push(b'\n');
            }
            let value = line.get(5..).unwrap_or_default();
            data.extend_from_slice(value.strip_prefix(b" ").unwrap_or(value));
        }
        if data.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        let message = std::str::from_utf8(&data)
            .ok()
            .and_then(|d| serde_json::from_str::<Value>(d).ok());
        let replacement = match message {
            Some(mut message) => {
                if !self.filter_message(&mut message) {
                    return None;
                }
                Some(message.to_string())
            }
            None => {
                tracing::warn!(
                    "withheld an SSE event whose data is not JSON from a filtered stream"
                );
                None
            }
        };
        let mut out = Vec::with_capacity(event.len());
        for (i, line) in lines.iter().enumerate() {
            if i == first_data {
                if let Some(replacement) = &replacement {
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(replacement.as_bytes());
                    out.push(b'\n');
                }
            } else if !is_data(line) {
                out.extend_from_slice(line);
                out.push(b'\n');
            }
        }
        Some(Bytes::from(out))
    }
}

/// Marks a result as one authorization context's view (SEP-2549, "Cache Scope Field"): a list filtered for a
/// token, or a resource read under its rules, must not be served from a shared cache to another token, whatever
/// the server said. `ttlMs` stays the server's when it is one (the freshness of what was filtered is the
/// server's); absent or unusable, it becomes the `0` clients assume for an absent one ("Time-to-Live"), so the
/// pair is always complete. An interim `input_required` result carries no caching hints and is left alone.
/// Returns whether anything changed.
fn make_private(result: &mut Value) -> bool {
    let Some(fields) = result.as_object_mut() else {
        return false;
    };
    if fields.get("resultType").and_then(Value::as_str) == Some("input_required") {
        return false;
    }
    let mut changed = false;
    if fields.get("cacheScope").and_then(Value::as_str) != Some("private") {
        fields.insert("cacheScope".into(), Value::from("private"));
        changed = true;
    }
    if fields.get("ttlMs").and_then(Value::as_u64).is_none() {
        fields.insert("ttlMs".into(), Value::from(0));
        changed = true;
    }
    changed
}

/// A JSON answer to list requests that is not JSON: it cannot be filtered, so it is not passed on.
#[derive(Debug, thiserror::Error)]
#[error("a list answer is not JSON and cannot be filtered")]
pub struct Unfilterable;

/// Finds the end of the first complete SSE event: (event length, separator length).
fn event_boundary(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// A response body passed through to the client: counted while open, and, for SSE with list answers to
/// filter, rewritten event by event.
pub struct ProxyStream<B> {
    inner: B,
    sse: Option<SseState>,
    _guard: Option<StreamGuard>,
    _held: Option<Box<dyn Send + Sync>>,
}

struct SseState {
    filter: ListFilter,
    buf: BytesMut,
    max_event: usize,
}

/// An SSE event grew past the limit while being filtered.
#[derive(Debug, thiserror::Error)]
#[error("an SSE event exceeded {0} bytes")]
pub struct EventTooLarge(pub usize);

impl<B> ProxyStream<B> {
    /// Wraps a body; `filter` turns on SSE filtering, `guard` counts the stream.
    pub fn new(inner: B, filter: Option<(ListFilter, usize)>, guard: Option<StreamGuard>) -> Self {
        let sse = filter.map(|(filter, max_event)| SseState {
            filter,
            buf: BytesMut::new(),
            max_event,
        });
        Self {
            inner,
            sse,
            _guard: guard,
            _held: None,
        }
    }

    /// Keeps `held` until the body is dropped (sent or abandoned).
    pub fn holding(mut self, held: impl Send + Sync + 'static) -> Self {
        self._held = Some(Box::new(held));
        self
    }
}

impl<B> Body for ProxyStream<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(state) = this.sse.as_mut() else {
            return Pin::new(&mut this.inner).poll_frame(cx).map_err(Into::into);
        };
        loop {
            if let Some((len, sep)) = event_boundary(&state.buf) {
                let event = state.buf.split_to(len + sep).freeze();
                if state.buf.is_empty() {
                    // Between events a quiet stream keeps no buffer.
                    state.buf = BytesMut::new();
                }
                let out = match state.filter.filter_event(&event[..len]) {
                    Some(rewritten) => {
                        let mut joined = BytesMut::from(&rewritten[..]);
                        joined.extend_from_slice(b"\n");
                        joined.freeze()
                    }
                    None => event,
                };
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(mut data) => {
                        if state.buf.len() + data.remaining() > state.max_event {
                            return Poll::Ready(Some(Err(Box::new(EventTooLarge(
                                state.max_event,
                            )))));
                        }
                        state
                            .buf
                            .extend_from_slice(&data.copy_to_bytes(data.remaining()));
                    }
                    Err(other) => return Poll::Ready(Some(Ok(other))),
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => {
                    if state.buf.is_empty() {
                        return Poll::Ready(None);
                    }
                    // An unterminated last event is not dispatched by SSE clients; pass it on unchanged.
                    return Poll::Ready(Some(Ok(Frame::data(state.buf.split().freeze()))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.sse.as_ref().is_none_or(|s| s.buf.is_empty()) && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.sse {
            None => self.inner.size_hint(),
            Some(_) => SizeHint::default(),
        }
    }
}

/// Collects a JSON body up to `max` bytes and filters it.
pub async fn filter_json_body<B>(
    body: B,
    filter: &ListFilter,
    max: usize,
) -> Result<Bytes, BoxError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let collected = http_body_util::Limited::new(body, max)
        .collect()
        .await?
        .to_bytes();
    Ok(filter.filter_json(&collected)?.unwrap_or(collected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SidecarConfig;
    use http_body_util::{BodyExt, StreamBody};
    use serde_json::json;

    fn filter(matcher: ListMatcher) -> ListFilter {
        filter_for(Caller::Person, matcher)
    }

    fn filter_for(caller: Caller, matcher: ListMatcher) -> ListFilter {
        let config = SidecarConfig::parse(
            "upstream: http://127.0.0.1:1\nresource: https://r.example/mcp\nissuer: https://i.example\n\
             jwksUri: https://i.example/jwks\nrules:\n\
             - {method: tools/call, name: 'get_*', scopes: [read]}\n\
             - {method: tools/call, name: 'delete_*', scopes: [admin]}\n\
             - {method: resources/read, name: 'file:///public/*', scopes: []}\n\
             - {method: prompts/get, name: hello, scopes: [read]}\n\
             - {method: tools/call, name: deploy, scopes: [read], callers: machines}\n\
             - {method: tools/call, name: 'my_*', scopes: [read], callers: people}\n",
        )
        .unwrap();
        let policy = Arc::new(Policy::from_config(&config));
        let scopes = Arc::new(policy.effective_scopes(["read"]));
        ListFilter::new(policy, scopes, caller, matcher)
    }

    #[test]
    fn a_list_shows_each_caller_the_tools_its_kind_may_call() {
        let list = json!({"jsonrpc":"2.0","id":1,"result":{"tools":[
            {"name":"get_user"},{"name":"deploy"},{"name":"my_mail"}]}});
        for (caller, shown) in [
            (
                Caller::Person,
                json!([{"name":"get_user"},{"name":"my_mail"}]),
            ),
            (
                Caller::Machine,
                json!([{"name":"get_user"},{"name":"deploy"}]),
            ),
            (Caller::Unknown, json!([{"name":"get_user"}])),
        ] {
            let out = filter_for(caller, ListMatcher::Requests)
                .filter_json(list.to_string().as_bytes())
                .unwrap()
                .unwrap();
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["result"]["tools"], shown, "{caller:?}");
        }
    }

    fn tools_result(id: Value) -> Value {
        json!({"jsonrpc":"2.0","id":id,"result":{"tools":[
            {"name":"get_user","inputSchema":{}},{"name":"delete_user","inputSchema":{}},
            {"name":"other","inputSchema":{}},{"inputSchema":{}}],"nextCursor":"c2"}})
    }

    #[test]
    fn json_lists_keep_only_what_the_token_may_call() {
        let f = filter(ListMatcher::Requests);
        let out = f
            .filter_json(tools_result(json!(1)).to_string().as_bytes())
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["result"]["tools"],
            json!([{"name":"get_user","inputSchema":{}}])
        );
        assert_eq!(
            v["result"]["nextCursor"],
            json!("c2"),
            "pagination survives"
        );
        // Ids a client may read as the request's (`1.0`, `"1"`), or any other id: a list is a list.
        for id in [json!(1.0), json!("1"), json!(2)] {
            let out = f.filter_json(tools_result(id.clone()).to_string().as_bytes());
            let v: Value = serde_json::from_slice(&out.unwrap().unwrap()).unwrap();
            assert_eq!(v["result"]["tools"].as_array().unwrap().len(), 1, "{id}");
        }
        // A result that is no list is left alone.
        let call = json!({"jsonrpc":"2.0","id":1,"result":{"content":[]}});
        assert!(
            f.filter_json(call.to_string().as_bytes())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn resources_templates_and_prompts() {
        let f = filter(ListMatcher::Stream);
        let mut res = json!({"jsonrpc":"2.0","id":1,"result":{"resources":[{"uri":"file:///public/a"},{"uri":"file:///secret"}]}});
        assert!(f.filter_message(&mut res));
        assert_eq!(
            res["result"]["resources"],
            json!([{"uri":"file:///public/a"}])
        );
        let mut tpl = json!({"jsonrpc":"2.0","id":1,"result":{"resourceTemplates":[{"uriTemplate":"file:///public/{x}"},{"uriTemplate":"db://{t}"}]}});
        assert!(f.filter_message(&mut tpl));
        assert_eq!(
            tpl["result"]["resourceTemplates"],
            json!([{"uriTemplate":"file:///public/{x}"}])
        );
        let mut prompts =
            json!({"jsonrpc":"2.0","id":1,"result":{"prompts":[{"name":"hello"},{"name":"bye"}]}});
        assert!(f.filter_message(&mut prompts));
        assert_eq!(prompts["result"]["prompts"], json!([{"name":"hello"}]));
        let mut call = json!({"jsonrpc":"2.0","id":1,"result":{"content":[]}});
        assert!(!f.filter_message(&mut call));
    }

    #[test]
    fn what_the_filter_reads_for_a_token_is_private_to_it() {
        let f = filter(ListMatcher::Requests);
        let get_user = json!([{"name":"get_user"}]);
        // (result from the server, result the client gets; `None`: passed on unchanged)
        let cases: Vec<(Value, Option<Value>)> = vec![
            (
                json!({"tools":get_user,"ttlMs":60000,"cacheScope":"public","resultType":"complete"}),
                Some(
                    json!({"tools":get_user,"ttlMs":60000,"cacheScope":"private","resultType":"complete"}),
                ),
            ),
            // A 2025 server gives no hints: the pair is added whole.
            (
                json!({"tools":get_user}),
                Some(json!({"tools":get_user,"ttlMs":0,"cacheScope":"private"})),
            ),
            (
                json!({"tools":get_user,"ttlMs":-5,"cacheScope":"private"}),
                Some(json!({"tools":get_user,"ttlMs":0,"cacheScope":"private"})),
            ),
            (
                json!({"tools":get_user,"ttlMs":1.5,"cacheScope":"private"}),
                Some(json!({"tools":get_user,"ttlMs":0,"cacheScope":"private"})),
            ),
            (
                json!({"tools":get_user,"ttlMs":1000,"cacheScope":"private"}),
                None,
            ),
            // Filtered entries and the scope change together.
            (
                json!({"tools":[{"name":"get_user"},{"name":"delete_user"}],"ttlMs":5,"cacheScope":"public"}),
                Some(json!({"tools":get_user,"ttlMs":5,"cacheScope":"private"})),
            ),
            (
                json!({"prompts":[],"ttlMs":5,"cacheScope":"public"}),
                Some(json!({"prompts":[],"ttlMs":5,"cacheScope":"private"})),
            ),
            (
                json!({"resources":[],"cacheScope":"public","ttlMs":5}),
                Some(json!({"resources":[],"ttlMs":5,"cacheScope":"private"})),
            ),
            (
                json!({"resourceTemplates":[],"cacheScope":"public","ttlMs":5}),
                Some(json!({"resourceTemplates":[],"ttlMs":5,"cacheScope":"private"})),
            ),
            (
                json!({"contents":[{"uri":"file:///public/a","text":"x"}],"ttlMs":300000,"cacheScope":"public"}),
                Some(
                    json!({"contents":[{"uri":"file:///public/a","text":"x"}],"ttlMs":300000,"cacheScope":"private"}),
                ),
            ),
            // An interim result carries no caching hints; other results are not cacheable.
            (
                json!({"resultType":"input_required","inputRequests":{},"tools":[]}),
                None,
            ),
            (json!({"content":[],"cacheScope":"public"}), None),
        ];
        for (result, expected) in cases {
            let message = json!({"jsonrpc":"2.0","id":1,"result":result});
            let out = f.filter_json(message.to_string().as_bytes()).unwrap();
            let got = out.map(|b| serde_json::from_slice::<Value>(&b).unwrap()["result"].clone());
            assert_eq!(got, expected, "{result}");
        }
    }

    #[test]
    fn batches_are_filtered_entry_by_entry() {
        let f = filter(ListMatcher::Requests);
        let body =
            json!([tools_result(json!("t")), {"jsonrpc":"2.0","id":2,"result":{}}]).to_string();
        let filtered = f.filter_json(body.as_bytes()).unwrap().unwrap();
        let v: Value = serde_json::from_slice(&filtered).unwrap();
        assert_eq!(v[0]["result"]["tools"].as_array().unwrap().len(), 1);
        assert_eq!(v[1], json!({"jsonrpc":"2.0","id":2,"result":{}}));
    }

    #[test]
    fn sse_events_keep_their_fields() {
        let f = filter(ListMatcher::Requests);
        let event = format!(
            "event: message\r\nid: 42\r\ndata: {}",
            tools_result(json!(1))
        );
        let out = String::from_utf8(f.filter_event(event.as_bytes()).unwrap().to_vec()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "event: message");
        assert_eq!(lines[1], "id: 42");
        let v: Value = serde_json::from_str(lines[2].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(v["result"]["tools"].as_array().unwrap().len(), 1);
        assert!(f.filter_event(b": comment").is_none());
        assert!(
            f.filter_event(b"id: 7\ndata:").is_none(),
            "a priming event passes"
        );
    }

    #[test]
    fn what_the_filter_cannot_read_it_does_not_pass_on() {
        let f = filter(ListMatcher::Stream);
        // Not JSON, not UTF-8, or JSON split oddly: the data is withheld, the other fields kept.
        let withheld =
            |event: &[u8]| String::from_utf8(f.filter_event(event).unwrap().to_vec()).unwrap();
        assert_eq!(
            withheld(b"event: ping\nid: 3\ndata: not json"),
            "event: ping\nid: 3\n"
        );
        assert_eq!(withheld(b"id: 4\ndata: {\"tools\": \"\xff\"}"), "id: 4\n");
        // `data` without a colon is a data line too (an empty one): the filter reads what an SSE client reads.
        let all = tools_result(json!(1)).to_string();
        let cut = all.find(',').unwrap() + 1;
        let split = format!("data: {}\ndata\ndata: {}", &all[..cut], &all[cut..]);
        let out = withheld(split.as_bytes());
        let data = out.strip_prefix("data: ").unwrap().trim_end();
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["result"]["tools"].as_array().unwrap().len(), 1);
        // A JSON body that is not JSON is refused; an empty one (an accepted notification) passes.
        let f = filter(ListMatcher::Requests);
        assert!(f.filter_json(b"{\"jsonrpc\": \"2.0\", oops").is_err());
        assert!(f.filter_json(b"").unwrap().is_none());
    }

    #[tokio::test]
    async fn sse_stream_is_filtered_across_chunk_boundaries_without_waiting_for_the_end() {
        let f = filter(ListMatcher::Requests);
        let first = "id: 1\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\n".to_string();
        let second = format!("id: 2\ndata: {}\n\n", tools_result(json!(1)));
        let whole = first.clone() + &second;
        // Split in awkward places: mid-line, mid-separator.
        let (a, rest) = whole.split_at(first.len() - 1);
        let (b, c) = rest.split_at(30);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
        let stream = StreamBody::new(tokio_stream_from(rx));
        let mut body = ProxyStream::new(stream, Some((f, 1 << 20)), None);
        tx.send(Ok(Frame::data(Bytes::from(a.to_owned()))))
            .await
            .unwrap();
        tx.send(Ok(Frame::data(Bytes::from(b.to_owned()))))
            .await
            .unwrap();
        // The first event comes out while the stream is still open.
        let got = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(got, Bytes::from(first.clone()));
        tx.send(Ok(Frame::data(Bytes::from(c.to_owned()))))
            .await
            .unwrap();
        drop(tx);
        let got = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let text = String::from_utf8(got.to_vec()).unwrap();
        assert!(
            text.starts_with("id: 2\ndata: ") && text.ends_with("\n\n"),
            "{text:?}"
        );
        assert!(!text.contains("delete_user"), "{text}");
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn an_endless_event_is_cut_off() {
        let f = filter(ListMatcher::Stream);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
        let mut body =
            ProxyStream::new(StreamBody::new(tokio_stream_from(rx)), Some((f, 100)), None);
        tx.send(Ok(Frame::data(Bytes::from(vec![b'a'; 60]))))
            .await
            .unwrap();
        tx.send(Ok(Frame::data(Bytes::from(vec![b'a'; 60]))))
            .await
            .unwrap();
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "an SSE event exceeded 100 bytes");
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures::Stream<Item = T> + Unpin {
        Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
