//! Two operator replicas at once: exactly one holds the Lease and writes; when it stops, the other
//! takes over and writes.

mod operator_support;

use std::time::Duration;

use mcp_authz_operator::api::cases;
use mcp_authz_tests::control_plane::{ControlPlane, eventually, eventually_within};
use operator_support::get_json;
use serde_json::json;

fn ok_reconciles(running: &mcp_authz_operator::runtime::Running) -> u64 {
    running
        .metrics
        .reconciles
        .with_label_values(&["AuthorizationServer", "ok"])
        .get()
}

#[tokio::test]
async fn only_the_lease_holder_writes() {
    let cluster = ControlPlane::shared();
    let admin = cluster.client();
    operator_support::install_crds(&admin).await;
    let ns = cluster.new_namespace("lead").await.expect("namespace");
    let configuration = format!("absent-{ns}");
    let client =
        operator_support::operator_client(cluster, &ns, "mcp-authz-operator", &configuration).await;
    let a = mcp_authz_operator::runtime::start(
        operator_support::operator_args(&ns, "op-a", &configuration),
        client.clone(),
    )
    .await
    .expect("replica a");
    let b = mcp_authz_operator::runtime::start(
        operator_support::operator_args(&ns, "op-b", &configuration),
        client.clone(),
    )
    .await
    .expect("replica b");

    let mut server = cases::authorization_server();
    server["metadata"]["namespace"] = json!(ns);
    operator_support::create(&admin, &ns, &server)
        .await
        .expect("AuthorizationServer");
    eventually("authserver ConfigMap", || {
        get_json(&admin, &ns, "v1", "ConfigMap", "auth-authserver")
    })
    .await;

    let (leader, follower) = if *a.leader.borrow() { (a, b) } else { (b, a) };
    assert!(
        *leader.leader.borrow() && !*follower.leader.borrow(),
        "exactly one leader"
    );
    eventually("a reconcile of the leader completes", || async {
        (ok_reconciles(&leader) > 0).then_some(())
    })
    .await;
    assert_eq!(ok_reconciles(&follower), 0, "the follower never wrote");
    let lease = eventually("lease", || {
        get_json(
            &admin,
            &ns,
            "coordination.k8s.io/v1",
            "Lease",
            "mcp-authz-operator",
        )
    })
    .await;
    let holder = lease["spec"]["holderIdentity"]
        .as_str()
        .expect("holder")
        .to_owned();
    assert!(
        leader
            .metrics
            .render()
            .contains("mcp_authz_operator_leader 1")
    );
    assert!(
        follower
            .metrics
            .render()
            .contains("mcp_authz_operator_leader 0")
    );

    let keys_before = eventually("keys Secret", || async {
        let secret = get_json(&admin, &ns, "v1", "Secret", "auth-authserver-keys").await?;
        secret["data"]["keys.json"].as_str().map(str::to_owned)
    })
    .await;

    // The leader goes away without releasing the Lease: the follower takes over once it expires
    // (3 s in these tests) and then writes.
    leader.stop();
    eventually_within("the follower takes over", Duration::from_secs(30), || {
        let leader = follower.leader.clone();
        async move { (*leader.borrow()).then_some(()) }
    })
    .await;
    let lease = get_json(
        &admin,
        &ns,
        "coordination.k8s.io/v1",
        "Lease",
        "mcp-authz-operator",
    )
    .await
    .expect("lease");
    assert_ne!(
        lease["spec"]["holderIdentity"].as_str(),
        Some(holder.as_str())
    );
    assert!(lease["spec"]["leaseTransitions"].as_i64() >= Some(2));
    let scope = {
        let mut s = cases::mcp_scope();
        s["metadata"]["namespace"] = json!(ns);
        s
    };
    operator_support::create(&admin, &ns, &scope)
        .await
        .expect("scope");
    eventually("the new leader re-renders", || async {
        let cm = get_json(&admin, &ns, "v1", "ConfigMap", "auth-authserver").await?;
        cm["data"]["authserver.yaml"]
            .as_str()?
            .contains("value: files:read")
            .then_some(())
    })
    .await;
    eventually("the new leader completed a reconcile", || async {
        (ok_reconciles(&follower) > 0).then_some(())
    })
    .await;
    // A new operator in the middle of a key's life neither loses the key nor makes another one.
    let keys_after = get_json(&admin, &ns, "v1", "Secret", "auth-authserver-keys")
        .await
        .expect("keys Secret");
    assert_eq!(
        keys_after["data"]["keys.json"].as_str(),
        Some(keys_before.as_str())
    );
}
