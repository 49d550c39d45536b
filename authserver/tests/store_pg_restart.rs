//! An authorization flow on PostgreSQL survives a restart of the database server between the code and the token
//! exchange. Alone in its binary: it restarts the shared test server, which would break concurrent tests.

mod support;

use support::*;

#[tokio::test]
async fn an_authorization_flow_survives_a_postgres_restart() {
    let (_url_file, storage) = postgres_storage("restart", 4).await;
    let restart = std::env::var("MCP_AUTHZ_TEST_PG_RESTART")
        .expect("MCP_AUTHZ_TEST_PG_RESTART is not set: source tests/setup/20-postgres.sh (tests/run-all does)");
    let s = TestServer::start_with(|c| c.storage = storage).await;
    let mut browser = Browser::default();
    let code = s
        .code_for(&mut browser, PUBLIC_CLIENT, REDIRECT, "files:read")
        .await;
    let restart_cmd = restart.clone();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(&restart_cmd)
            .status()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(status.success(), "restarting PostgreSQL failed: {restart}");
    let (status, body, _) = s
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
            ("client_id", PUBLIC_CLIENT),
        ])
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, refreshed, _) = s
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", body["refresh_token"].as_str().unwrap()),
            ("client_id", PUBLIC_CLIENT),
        ])
        .await;
    assert_eq!(status, 200, "{refreshed}");
}
