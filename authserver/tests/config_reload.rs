//! The config file changing while the server starts, as a kubelet does it to a ConfigMap volume: found on the
//! real node (tests/node), where the authorization server answered `invalid_target` for a resource its mounted
//! config named, until the next change of the ConfigMap.

mod support;

use std::path::Path;

use mcp_authz_authserver::config::{AuthServerConfig, ScopeDefinition};
use mcp_authz_authserver::server;
use support::*;

/// A new version of a ConfigMap volume, the kubelet's way: each version in a directory of its own, `..data` a
/// link to the current one (replaced by an atomic rename), the file a link through `..data`.
fn publish(volume: &Path, version: &str, name: &str, content: &str) {
    let directory = format!("..{version}");
    std::fs::create_dir_all(volume.join(&directory)).unwrap();
    std::fs::write(volume.join(&directory).join(name), content).unwrap();
    let staged = volume.join("..data_tmp");
    std::os::unix::fs::symlink(&directory, &staged).unwrap();
    std::fs::rename(&staged, volume.join("..data")).unwrap();
    let file = volume.join(name);
    if std::fs::symlink_metadata(&file).is_err() {
        std::os::unix::fs::symlink(format!("..data/{name}"), &file).unwrap();
    }
}

/// The server's binary reads its config, then starts; the operator's re-render (here a new scope) reaches the
/// volume in between. The server must end up with the newer version, not keep the one it read until the
/// ConfigMap changes again.
#[tokio::test]
async fn a_config_swapped_in_while_the_server_starts_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let volume = dir.path().join("config");
    let first = base_config(dir.path(), port);
    publish(
        &volume,
        "v1",
        "config.json",
        &serde_json::to_string(&first).unwrap(),
    );
    let path = volume.join("config.json");
    let loaded = AuthServerConfig::load(&path).unwrap();

    let mut rerendered = loaded.clone();
    rerendered.scopes.push(ScopeDefinition {
        value: "files:late".into(),
        description: "Late".into(),
        sensitive: false,
        max_lifetime_secs: None,
        implies: vec![],
    });
    publish(
        &volume,
        "v2",
        "config.json",
        &serde_json::to_string(&rerendered).unwrap(),
    );
    let running = server::start(loaded, Some(path)).await.unwrap();

    let http = reqwest::Client::new();
    let metadata = format!("http://127.0.0.1:{port}/.well-known/oauth-authorization-server");
    let mut seen = false;
    for _ in 0..50 {
        let m: serde_json::Value = http
            .get(&metadata)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if m["scopes_supported"]
            .as_array()
            .unwrap()
            .contains(&"files:late".into())
        {
            seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    running.stop().await;
    assert!(
        seen,
        "the version swapped in before start() was never loaded: the server kept the one it read first"
    );
}

/// A file unchanged since it was read is not reloaded at start (one version, one load).
#[tokio::test]
async fn an_unchanged_config_is_not_reloaded_at_start() {
    let s = TestServer::start().await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let metrics = s.metrics().await;
    assert!(
        !metrics.contains("mcp_authz_authserver_config_reloads_total{outcome=\"ok\"} 1"),
        "{metrics}"
    );
}
