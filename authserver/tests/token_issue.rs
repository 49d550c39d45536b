//! A `client_credentials` token is written in one transaction with the assertion that asked for it
//! (`store::batch`, `store::sqlite_writer`): replays get nothing and leave nothing behind, a refused request
//! still spends its assertion, and every answered token is on disk when the answer leaves.

mod support;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mcp_authz_authserver::store::{SqlStore, Store};
use serde_json::{Value, json};
use support::*;

async fn count(store: &SqlStore, sql: &'static str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

fn claims_of(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// One assertion sent 16 times at once: one token, 15 refusals naming the replay, and one grant and one token
/// row (a replay's rows are not written: the claim and the rows go in one transaction).
#[tokio::test]
async fn an_assertion_sent_sixteen_times_at_once_gets_one_token_and_one_set_of_rows() {
    let s = TestServer::start().await;
    let a = assertion(&s, |_| {});
    let sends = (0..16).map(|_| s.client_credentials(&a, &[]));
    let answers = futures::future::join_all(sends).await;
    let ok = answers.iter().filter(|(status, _)| *status == 200).count();
    assert_eq!(ok, 1, "{answers:?}");
    for (status, body) in answers.iter().filter(|(status, _)| *status != 200) {
        assert_eq!(*status, 401, "{body}");
        let d = body["error_description"].as_str().unwrap();
        assert!(
            d.starts_with("client_assertion jti") && d.ends_with("was already used"),
            "{body}"
        );
    }
    let store = &s.running.as_ref().unwrap().state.store;
    let grants = store
        .list_grants(
            &mcp_authz_authserver::store::GrantFilter {
                client_id: Some(SERVICE_CLIENT.into()),
                ..Default::default()
            },
            0,
            100,
        )
        .await
        .unwrap();
    assert_eq!(grants.len(), 1, "{grants:?}");
    let token = answers.iter().find(|(s, _)| *s == 200).unwrap().1["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let jti = claims_of(&token)["jti"].as_str().unwrap().to_owned();
    assert_eq!(
        store.access_token_grant(&jti).await.unwrap(),
        Some(grants[0].id.clone())
    );
    let issued = store
        .recent_audit(100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event == "token" && e.outcome == "issued")
        .count();
    assert_eq!(issued, 1);
}

/// A verified assertion is spent even when the request it came with is refused afterwards (here for a scope the
/// client may not have): it cannot be sent again with a better request.
#[tokio::test]
async fn a_refused_request_still_spends_its_assertion() {
    let s = TestServer::start().await;
    let a = assertion(&s, |_| {});
    let (status, body) = s.client_credentials(&a, &[("scope", "files:write")]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope")),
        "{body}"
    );
    let (status, body) = s.client_credentials(&a, &[]).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.ends_with("was already used")),
        "{body}"
    );
}

/// What the server answered is what it recorded, even when it is killed in the middle of the load (SIGKILL, no
/// shutdown): each answered token's record and grant are in the database and its assertion is spent, so after
/// a restart the token can be introspected and revoked and the assertion cannot be sent again. (That the log is
/// synced at each commit, for a machine that loses power, is the writer's `synchronous = FULL`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answered_token_survives_a_kill_in_the_middle_of_the_load() {
    let (dir, mut child, base) = start_binary(Stdio::null()).await;
    let http = reqwest::Client::new();
    let (key, header) = service_signer();
    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    for _ in 0..8 {
        let (http, base, key, header, stop) = (
            http.clone(),
            base.clone(),
            key.clone(),
            header.clone(),
            stop.clone(),
        );
        loops.push(tokio::spawn(async move {
            // (assertion jti, access token jti) of every answered request.
            let mut answered = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let jti = mcp_authz_authserver::secrets::random_token();
                let now = mcp_authz_authserver::clock::now_secs();
                let claims = json!({"iss": SERVICE_CLIENT, "sub": SERVICE_CLIENT,
                    "aud": format!("{base}/token"), "exp": now + 300, "jti": jti});
                let a = jsonwebtoken::encode(&header, &claims, &key).unwrap();
                let form = [
                    ("grant_type", "client_credentials"),
                    ("client_assertion_type", JWT_BEARER),
                    ("client_assertion", a.as_str()),
                    ("resource", RESOURCE),
                ];
                let body = url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(form)
                    .finish();
                let sent = http
                    .post(format!("{base}/token"))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body)
                    .send()
                    .await;
                let Ok(r) = sent else {
                    break;
                };
                if r.status() != 200 {
                    break;
                }
                let Ok(body) = r.json::<Value>().await else {
                    break;
                };
                let token = body["access_token"].as_str().unwrap();
                answered.push((jti, claims_of(token)["jti"].as_str().unwrap().to_owned()));
            }
            answered
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Killed while requests are in flight: no shutdown, no last commit.
    child.kill().unwrap();
    child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut answered = Vec::new();
    for l in loops {
        answered.extend(l.await.unwrap());
    }
    assert!(answered.len() > 20, "only {} answers", answered.len());
    let store = SqlStore::open_sqlite(&dir.path().join("as.db"))
        .await
        .unwrap();
    for (assertion_jti, token_jti) in &answered {
        let grant = store.access_token_grant(token_jti).await.unwrap();
        let grant = grant.unwrap_or_else(|| panic!("token {token_jti} was answered, not recorded"));
        assert!(store.grant(&grant).await.unwrap().is_some());
        assert!(
            !store
                .use_assertion_id(SERVICE_CLIENT, assertion_jti, i64::MAX / 2)
                .await
                .unwrap(),
            "assertion {assertion_jti} was answered, not spent"
        );
    }
    let tokens = count(&store, "SELECT COUNT(*) FROM access_tokens").await;
    assert!(tokens >= answered.len() as i64);
}
