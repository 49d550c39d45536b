//! The store contract, run on SQLite and on a real PostgreSQL server (tests/setup/20-postgres.sh), plus the
//! rolling-upgrade rule and concurrent migration.

mod support;

use mcp_authz_authserver::store::*;
use support::pg_database;

fn grant(id: &str, subject: &str, client: &str, resource: &str, now: i64) -> Grant {
    Grant {
        id: id.into(),
        subject: subject.into(),
        client_id: client.into(),
        resource: resource.into(),
        scopes: vec!["a".into(), "b".into()],
        grant_type: "authorization_code".into(),
        created_at: now,
        expires_at: now + 1000,
        revoked_at: None,
        revoked_reason: None,
        client_fingerprint: "f".into(),
        client_auth_method: "none".into(),
        holder: String::new(),
    }
}

async fn contract(store: &dyn Store) {
    let now = 1_700_000_000;
    store.ping().await.unwrap();
    // Authorization requests expire.
    let request = AuthRequest {
        id: "r1".into(),
        client_id: "c".into(),
        redirect_uri: "http://127.0.0.1/cb".into(),
        state: Some("s".into()),
        resource: "https://r".into(),
        scopes: vec!["a".into()],
        code_challenge: "x".into(),
        subject: None,
        csrf: "t".into(),
        upstream_verifier: None,
        expires_at: now + 10,
        network: Some("192.0.2.1".into()),
        holder: "uid-1".into(),
    };
    store.put_auth_request(&request).await.unwrap();
    assert_eq!(
        store.auth_request("r1", now).await.unwrap(),
        Some(request.clone())
    );
    assert_eq!(store.auth_request("r1", now + 10).await.unwrap(), None);
    let pending = |from_network, total| Counted {
        total,
        from_network,
    };
    // A request from another network, and one written without a network (by a replica of an older release),
    // count in all but not as the first network's.
    let other = AuthRequest {
        id: "r2".into(),
        network: Some("2001:db8:1:2::".into()),
        ..request.clone()
    };
    let unknown = AuthRequest {
        id: "r3".into(),
        network: None,
        ..request.clone()
    };
    store.put_auth_request(&other).await.unwrap();
    store.put_auth_request(&unknown).await.unwrap();
    for (network, want) in [
        (Some("192.0.2.1"), pending(1, 3)),
        (Some("2001:db8:1:2::"), pending(1, 3)),
        (Some("192.0.2.2"), pending(0, 3)),
        (None, pending(0, 3)),
    ] {
        assert_eq!(
            store.pending_auth_requests(network, now).await.unwrap(),
            want,
            "{network:?}"
        );
    }
    // Signing in rewrites the row; it still counts as the network's that started it.
    let signed_in = AuthRequest {
        subject: Some("alice".into()),
        network: None,
        ..request.clone()
    };
    store.put_auth_request(&signed_in).await.unwrap();
    assert_eq!(
        store
            .pending_auth_requests(Some("192.0.2.1"), now)
            .await
            .unwrap(),
        pending(1, 3)
    );
    store.put_auth_request(&request).await.unwrap();
    store.delete_auth_request("r2").await.unwrap();
    store.delete_auth_request("r3").await.unwrap();
    assert_eq!(
        store
            .pending_auth_requests(Some("192.0.2.1"), now + 10)
            .await
            .unwrap(),
        pending(0, 0)
    );
    store.delete_auth_request("r1").await.unwrap();
    assert_eq!(store.auth_request("r1", now).await.unwrap(), None);
    assert_eq!(
        store
            .pending_auth_requests(Some("192.0.2.1"), now)
            .await
            .unwrap(),
        pending(0, 0)
    );

    // Codes are single use; the second use names the grant to revoke.
    store
        .put_grant(&grant("g1", "alice", "c", "https://r", now))
        .await
        .unwrap();
    let code = CodeRecord {
        code_hash: "h1".into(),
        grant_id: "g1".into(),
        client_id: "c".into(),
        redirect_uri: "http://127.0.0.1/cb".into(),
        code_challenge: "x".into(),
        expires_at: now + 60,
    };
    store.put_code(&code).await.unwrap();
    assert_eq!(
        store.redeem_code("h1", now).await.unwrap(),
        CodeRedemption::Redeemed(code.clone())
    );
    assert_eq!(
        store.redeem_code("h1", now).await.unwrap(),
        CodeRedemption::Replayed {
            grant_id: "g1".into()
        }
    );
    assert_eq!(
        store.redeem_code("nope", now).await.unwrap(),
        CodeRedemption::Unknown
    );
    let late = CodeRecord {
        code_hash: "h2".into(),
        expires_at: now - 1,
        ..code.clone()
    };
    store.put_code(&late).await.unwrap();
    assert_eq!(
        store.redeem_code("h2", now).await.unwrap(),
        CodeRedemption::Unknown
    );

    // Refresh tokens rotate once; reuse is recognised; revoking the grant kills everything.
    store
        .put_refresh_token("rt1", "g1", now + 1000)
        .await
        .unwrap();
    assert_eq!(
        store.refresh_token_grant("rt1", now).await.unwrap(),
        Some("g1".into())
    );
    assert_eq!(
        store.rotate_refresh_token("rt1", "rt2", now).await.unwrap(),
        RefreshRotation::Rotated {
            grant_id: "g1".into()
        }
    );
    assert_eq!(
        store.rotate_refresh_token("rt1", "rt3", now).await.unwrap(),
        RefreshRotation::Reused {
            grant_id: "g1".into()
        }
    );
    assert_eq!(
        store.rotate_refresh_token("zz", "rt3", now).await.unwrap(),
        RefreshRotation::Unknown
    );
    assert_eq!(
        store.refresh_token_grant("rt2", now).await.unwrap(),
        Some("g1".into())
    );
    store.put_access_token("j1", "g1", now + 300).await.unwrap();
    assert_eq!(
        store.access_token_grant("j1").await.unwrap(),
        Some("g1".into())
    );
    assert!(!store.access_token_revoked("j1").await.unwrap());
    assert_eq!(
        store.access_token_state("j1").await.unwrap(),
        Some(("g1".into(), false))
    );
    assert_eq!(store.access_token_state("nowhere").await.unwrap(), None);
    // The consent the grant was given under goes with it: the client must ask again.
    let given = Consent {
        subject: "alice",
        client_id: "c",
        resource: "https://r",
        scopes: "a b",
        client_fingerprint: "f",
        holder: "uid-1",
    };
    store.put_consent(&given, now).await.unwrap();
    assert!(store.revoke_grant("g1", "test", now).await.unwrap());
    assert!(!store.has_consent(&given).await.unwrap());
    assert!(!store.revoke_grant("g1", "again", now).await.unwrap());
    assert!(store.access_token_revoked("j1").await.unwrap());
    assert_eq!(store.refresh_token_grant("rt2", now).await.unwrap(), None);
    // A token recorded after its grant was revoked (a redemption that lost a race to a replay) is dead too.
    store
        .put_access_token("j-late", "g1", now + 300)
        .await
        .unwrap();
    assert!(store.access_token_revoked("j-late").await.unwrap());
    assert_eq!(
        store.access_token_state("j-late").await.unwrap(),
        Some(("g1".into(), true))
    );
    assert_eq!(
        store.access_token_state("j1").await.unwrap(),
        Some(("g1".into(), true))
    );
    // Owners are found whatever the token's state, so a request is judged by its grant.
    assert_eq!(
        store.refresh_token_owner("rt1").await.unwrap(),
        Some("g1".into())
    );
    assert_eq!(store.refresh_token_owner("nope").await.unwrap(), None);
    assert_eq!(store.code_grant("h1").await.unwrap(), Some("g1".into()));
    assert_eq!(store.code_grant("nope").await.unwrap(), None);
    let g = store.grant("g1").await.unwrap().unwrap();
    assert_eq!(
        (g.revoked_at, g.revoked_reason.as_deref(), g.scopes.len()),
        (Some(now), Some("test"), 2)
    );

    // Listing filters; absent filters match all.
    store
        .put_grant(&grant("g2", "alice", "d", "https://r", now + 1))
        .await
        .unwrap();
    store
        .put_grant(&grant("g3", "bob", "c", "https://s", now + 2))
        .await
        .unwrap();
    let ids = |v: Vec<Grant>| v.into_iter().map(|g| g.id).collect::<Vec<_>>();
    let all = GrantFilter::default();
    assert_eq!(
        ids(store.list_grants(&all, now, 100).await.unwrap()),
        vec!["g2", "g3"]
    );
    let with_inactive = GrantFilter {
        include_inactive: true,
        ..Default::default()
    };
    assert_eq!(
        ids(store.list_grants(&with_inactive, now, 100).await.unwrap()),
        vec!["g1", "g2", "g3"]
    );
    let alice = GrantFilter {
        subject: Some("alice".into()),
        ..Default::default()
    };
    assert_eq!(
        ids(store.list_grants(&alice, now, 100).await.unwrap()),
        vec!["g2"]
    );
    let by_client = GrantFilter {
        client_id: Some("c".into()),
        ..Default::default()
    };
    assert_eq!(
        ids(store.list_grants(&by_client, now, 100).await.unwrap()),
        vec!["g3"]
    );
    let by_resource = GrantFilter {
        resource: Some("https://s".into()),
        ..Default::default()
    };
    assert_eq!(
        ids(store.list_grants(&by_resource, now, 100).await.unwrap()),
        vec!["g3"]
    );
    assert_eq!(
        ids(store.list_grants(&all, now + 5000, 100).await.unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(store.list_grants(&with_inactive, now, 2).await.unwrap()),
        vec!["g1", "g2"]
    );

    // Consents, assertion ids, sessions, audit.
    let consent = Consent {
        subject: "alice",
        client_id: "c",
        resource: "https://r",
        scopes: "a b",
        client_fingerprint: "f1",
        holder: "uid-1",
    };
    assert!(!store.has_consent(&consent).await.unwrap());
    store.put_consent(&consent, now).await.unwrap();
    store.put_consent(&consent, now + 1).await.unwrap();
    assert!(store.has_consent(&consent).await.unwrap());
    assert!(
        !store
            .has_consent(&Consent {
                scopes: "a",
                ..consent
            })
            .await
            .unwrap()
    );
    // A changed client document is not the one consented to; consenting again replaces the old version.
    let changed = Consent {
        client_fingerprint: "f2",
        ..consent
    };
    assert!(!store.has_consent(&changed).await.unwrap());
    store.put_consent(&changed, now + 2).await.unwrap();
    assert!(store.has_consent(&changed).await.unwrap());
    assert!(!store.has_consent(&consent).await.unwrap());
    // Consent given while one service held the URL is not consent to the next holder, nor is consent from before
    // holders were recorded consent to any.
    for other in ["uid-2", ""] {
        let elsewhere = Consent {
            holder: other,
            ..changed
        };
        assert!(!store.has_consent(&elsewhere).await.unwrap(), "{other:?}");
    }
    // A grant records its resource's holder; one without (made before holders were recorded) adopts the first it
    // is used under and keeps it: a second replica adopting another learns the first one's.
    let held = Grant {
        holder: "uid-1".into(),
        ..grant("held", "henry", "c", "https://held", now)
    };
    store.put_grant(&held).await.unwrap();
    assert_eq!(store.grant("held").await.unwrap(), Some(held.clone()));
    store
        .put_grant(&grant("unheld", "henry", "c", "https://held", now))
        .await
        .unwrap();
    for (id, adopting, after) in [
        ("held", "uid-2", "uid-1"),
        ("unheld", "uid-2", "uid-2"),
        ("unheld", "uid-3", "uid-2"),
    ] {
        assert_eq!(
            store.adopt_holder(id, adopting).await.unwrap().as_deref(),
            Some(after),
            "{id} adopting {adopting}"
        );
        assert_eq!(store.grant(id).await.unwrap().unwrap().holder, after);
    }
    assert_eq!(store.adopt_holder("nowhere", "uid-1").await.unwrap(), None);
    store
        .put_grant(&grant("unheld2", "henry", "c", "https://held", now))
        .await
        .unwrap();
    store
        .put_grant(&grant("elsewhere", "henry", "c", "https://other-held", now))
        .await
        .unwrap();
    assert_eq!(
        store.adopt_holders("https://held", "uid-4").await.unwrap(),
        1
    );
    for (id, holder) in [
        ("held", "uid-1"),
        ("unheld", "uid-2"),
        ("unheld2", "uid-4"),
        ("elsewhere", ""),
    ] {
        assert_eq!(
            store.grant(id).await.unwrap().unwrap().holder,
            holder,
            "{id}"
        );
    }
    assert!(store.use_assertion_id("c", "j", now + 60).await.unwrap());
    assert!(!store.use_assertion_id("c", "j", now + 60).await.unwrap());
    assert!(store.use_assertion_id("d", "j", now + 60).await.unwrap());
    store.put_session("s1", "alice", now + 100).await.unwrap();
    assert_eq!(
        store.session_subject("s1", now).await.unwrap(),
        Some("alice".into())
    );
    assert_eq!(store.session_subject("s1", now + 100).await.unwrap(), None);
    let event = AuditEvent {
        at: now,
        event: "authorize".into(),
        subject: Some("alice".into()),
        client_id: None,
        resource: Some("https://r".into()),
        scopes: vec!["a".into()],
        outcome: "granted".into(),
        reason: "test".into(),
    };
    store.put_audit(&event).await.unwrap();
    assert_eq!(store.recent_audit(10).await.unwrap(), vec![event.clone()]);
    // Registered clients are kept and counted by registration time (the hourly budget), in all and per network;
    // one registered without a network (not the client's own, or by an older replica) counts in all only.
    for (id, config, network, at) in [
        ("dcr-1", "{}", Some("192.0.2.1"), now - 4000),
        ("dcr-2", "{\"a\":1}", Some("192.0.2.1"), now),
        ("dcr-3", "{}", Some("2001:db8:1:2::"), now),
        ("dcr-4", "{}", None, now),
    ] {
        let roomy = RegistrationBudget {
            since: at - 3600,
            total: 100,
            per_network: 10,
        };
        assert!(
            store
                .put_dynamic_client(id, config, network, at, roomy)
                .await
                .unwrap()
        );
    }
    // A registration past the budget is not stored: the server's, or its network's (which a registration
    // without a network is not held to).
    for (id, network, total, per_network, kept) in [
        ("dcr-6", Some("192.0.2.1"), 3, 10, false),
        ("dcr-7", Some("192.0.2.1"), 10, 1, false),
        ("dcr-8", None, 10, 0, true),
        ("dcr-9", Some("198.51.100.7"), 10, 1, true),
        ("dcr-10", Some("198.51.100.7"), 10, 1, false),
    ] {
        let budget = RegistrationBudget {
            since: now - 3600,
            total,
            per_network,
        };
        assert_eq!(
            store
                .put_dynamic_client(id, "{}", network, now, budget)
                .await
                .unwrap(),
            kept,
            "{id}"
        );
        assert_eq!(
            store.dynamic_client(id).await.unwrap().is_some(),
            kept,
            "{id}"
        );
    }

    assert_eq!(
        store.dynamic_client("dcr-2").await.unwrap().as_deref(),
        Some("{\"a\":1}")
    );
    assert_eq!(store.dynamic_client("dcr-5").await.unwrap(), None);
    let counted = |from_network, total| Counted {
        total,
        from_network,
    };
    for (since, network, want) in [
        (now - 3600, Some("192.0.2.1"), counted(1, 5)),
        (now - 5000, Some("192.0.2.1"), counted(2, 6)),
        (now - 3600, Some("2001:db8:1:2::"), counted(1, 5)),
        (now - 3600, Some("198.51.100.7"), counted(1, 5)),
        (now - 3600, Some("203.0.113.5"), counted(0, 5)),
        (now - 3600, None, counted(0, 5)),
    ] {
        assert_eq!(
            store.dynamic_clients_since(since, network).await.unwrap(),
            want,
            "{network:?} since {since}"
        );
    }
    // Failed sign-ins count within a window, start over after it, and clear on success.
    assert_eq!(store.login_failures("u").await.unwrap(), None);
    assert_eq!(store.record_login_failure("u", now, 600).await.unwrap(), 1);
    assert_eq!(
        store
            .record_login_failure("u", now + 10, 600)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store.login_failures("u").await.unwrap(),
        Some((2, now + 600))
    );
    store.forget_login_failure("u").await.unwrap();
    assert_eq!(
        store.login_failures("u").await.unwrap(),
        Some((1, now + 600))
    );
    assert_eq!(
        store
            .record_login_failure("u", now + 600, 600)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store.login_failures("u").await.unwrap(),
        Some((1, now + 1200))
    );
    store.clear_login_failures("u").await.unwrap();
    assert_eq!(store.login_failures("u").await.unwrap(), None);
    assert!(store.purge_expired(now + 10_000).await.unwrap() >= 5);
    // Audit rows are kept for their retention period, not longer.
    assert_eq!(store.recent_audit(10).await.unwrap(), vec![event.clone()]);
    store
        .purge_expired(now + mcp_authz_authserver::store::AUDIT_RETENTION_SECS + 1)
        .await
        .unwrap();
    assert!(store.recent_audit(10).await.unwrap().is_empty());
    assert_eq!(
        store.redeem_code("h1", now).await.unwrap(),
        CodeRedemption::Unknown
    );
}

/// An administrator's bulk revocation reaches every matching grant, however many (a page size once stopped it at
/// 1,000), with their tokens, and nothing else.
fn connection(subject: &str, provider: &str, access: &str) -> ProviderConnection {
    ProviderConnection {
        subject: subject.into(),
        provider: provider.into(),
        key_id: "k1".into(),
        refresh_sealed: Some(format!("sealed-refresh-{subject}")),
        access_sealed: access.into(),
        access_expires_at: 2_000,
        scopes: "api:read".into(),
        created_at: 1_000,
        updated_at: 1_000,
    }
}

/// Provider connections: one per person and provider, replaced only from the version a refresh started from,
/// deleted with a grant that used them (single and bulk revocation) and by a disconnect; connect flows single use.
async fn provider_connections(store: &dyn Store) {
    let now = 1_700_000_000;
    let pending = ConnectRequest {
        id: "state-1".into(),
        subject: "alice".into(),
        provider: "acme".into(),
        verifier: "v".into(),
        csrf: "c".into(),
        auth_request: Some("r1".into()),
        expires_at: now + 600,
    };
    store.put_connect_request(&pending).await.unwrap();
    assert_eq!(
        store.take_connect_request("state-1", now).await.unwrap(),
        Some(pending.clone())
    );
    assert_eq!(
        store.take_connect_request("state-1", now).await.unwrap(),
        None
    );
    let late = ConnectRequest {
        id: "state-2".into(),
        ..pending.clone()
    };
    store.put_connect_request(&late).await.unwrap();
    assert_eq!(
        store
            .take_connect_request("state-2", now + 600)
            .await
            .unwrap(),
        None,
        "an expired flow is not finished"
    );

    let alice = connection("alice", "acme", "a-1");
    store.put_connection(&alice).await.unwrap();
    store
        .put_connection(&connection("dave", "acme", "d-1"))
        .await
        .unwrap();
    store
        .put_connection(&connection("alice", "other", "o-1"))
        .await
        .unwrap();
    assert_eq!(
        store.connection("alice", "acme").await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(store.connection("carol", "acme").await.unwrap(), None);
    // A refresh replaces the row only from the version it read; a second one that read the same loses.
    let next = ProviderConnection {
        access_sealed: "a-2".into(),
        refresh_sealed: Some("rotated".into()),
        updated_at: 1_500,
        ..alice.clone()
    };
    assert!(store.replace_connection(&next, "a-1").await.unwrap());
    assert!(!store.replace_connection(&next, "a-1").await.unwrap());
    assert_eq!(
        store.connection("alice", "acme").await.unwrap(),
        Some(next.clone())
    );
    // One refresh at a time: a claim stands until it runs out or the row is replaced, and only on the version
    // the refresh started from.
    let (a2, a3) = ("a-2", "a-3");
    assert!(
        !store
            .claim_refresh("alice", "acme", "a-1", now, now + 15)
            .await
            .unwrap()
    );
    assert!(
        store
            .claim_refresh("alice", "acme", a2, now, now + 15)
            .await
            .unwrap()
    );
    assert!(
        !store
            .claim_refresh("alice", "acme", a2, now + 14, now + 29)
            .await
            .unwrap()
    );
    assert!(
        store
            .claim_refresh("alice", "acme", a2, now + 15, now + 30)
            .await
            .unwrap()
    );
    store.release_refresh("alice", "acme").await.unwrap();
    assert!(
        store
            .claim_refresh("alice", "acme", a2, now + 16, now + 31)
            .await
            .unwrap()
    );
    let refreshed = ProviderConnection {
        access_sealed: a3.into(),
        ..next.clone()
    };
    assert!(store.replace_connection(&refreshed, a2).await.unwrap());
    assert!(
        store
            .claim_refresh("alice", "acme", a3, now + 17, now + 32)
            .await
            .unwrap()
    );
    // Connecting again replaces the whole row and ends any claim; it queues nothing (at the provider the new
    // row usually continues the replaced row's grant, which revoking would end).
    store.put_connection(&alice).await.unwrap();
    assert_eq!(drain(store).await, []);
    assert!(
        store
            .claim_refresh("alice", "acme", "a-1", now + 18, now + 33)
            .await
            .unwrap()
    );
    store.put_connection(&alice).await.unwrap();
    assert_eq!(
        store.connection("alice", "acme").await.unwrap(),
        Some(alice.clone())
    );
    drain(store).await;

    // Revoking a grant that used a connection deletes it, and only it.
    store
        .put_grant(&grant("pg1", "alice", "c", "https://r", now))
        .await
        .unwrap();
    store
        .put_grant(&grant("pg2", "dave", "c", "https://r", now))
        .await
        .unwrap();
    store.link_connection("alice", "acme", "pg1").await.unwrap();
    store.link_connection("alice", "acme", "pg1").await.unwrap();
    store.link_connection("dave", "acme", "pg2").await.unwrap();
    store
        .put_connection(&ProviderConnection {
            refresh_sealed: None,
            ..connection("alice", "norefresh", "n-1")
        })
        .await
        .unwrap();
    store
        .link_connection("alice", "norefresh", "pg1")
        .await
        .unwrap();
    // The same account used through another client, and through a grant that has expired.
    store
        .put_grant(&grant("pg3", "alice", "c2", "https://r2", now))
        .await
        .unwrap();
    store
        .put_grant(&Grant {
            expires_at: now,
            ..grant("pg4", "alice", "c3", "https://r", now - 1000)
        })
        .await
        .unwrap();
    store.link_connection("alice", "acme", "pg3").await.unwrap();
    store.link_connection("alice", "acme", "pg4").await.unwrap();
    // One client's grant ending leaves the connection the other client's live grant still uses.
    assert!(store.revoke_grant("pg1", "test", now).await.unwrap());
    assert_eq!(
        store.connection("alice", "acme").await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(store.queued_revocations(i64::MAX, 10).await.unwrap(), []);
    // An expired grant holds nothing: the last live one takes the connection with it.
    assert!(store.revoke_grant("pg3", "test", now).await.unwrap());
    assert_eq!(store.connection("alice", "acme").await.unwrap(), None);
    // Its refresh token is queued for revocation at the provider (a connection without one is not).
    let queued = store.queued_revocations(i64::MAX, 10).await.unwrap();
    assert_eq!(
        queued,
        [QueuedRevocation {
            subject: "alice".into(),
            provider: "acme".into(),
            key_id: "k1".into(),
            sealed: "sealed-refresh-alice".into(),
            token_type_hint: "refresh_token".into(),
            queued_at: now,
            attempts: 0,
        }]
    );
    store
        .forget_revocation("sealed-refresh-alice")
        .await
        .unwrap();
    assert_eq!(store.queued_revocations(i64::MAX, 10).await.unwrap(), []);
    assert_eq!(store.connection("alice", "norefresh").await.unwrap(), None);
    assert!(store.connection("alice", "other").await.unwrap().is_some());
    assert!(store.connection("dave", "acme").await.unwrap().is_some());
    // A new connection starts with no grant tied to it: the revoked grant's link went with the old one.
    store.put_connection(&alice).await.unwrap();
    store.revoke_grant("pg1", "again", now).await.unwrap();
    assert!(store.connection("alice", "acme").await.unwrap().is_some());
    // Bulk revocation by subject.
    let daves = GrantFilter {
        subject: Some("dave".into()),
        ..GrantFilter::default()
    };
    assert_eq!(store.revoke_grants(&daves, "bulk", now).await.unwrap(), 1);
    assert_eq!(store.connection("dave", "acme").await.unwrap(), None);
    let queued = store.queued_revocations(i64::MAX, 10).await.unwrap();
    assert_eq!(
        queued.iter().map(|q| q.sealed.as_str()).collect::<Vec<_>>(),
        ["sealed-refresh-dave"]
    );
    store
        .forget_revocation("sealed-refresh-dave")
        .await
        .unwrap();
    // Bulk revocation at one client leaves a connection another client's live grant uses; at the last, it goes.
    store
        .put_connection(&connection("frank", "acme", "f-1"))
        .await
        .unwrap();
    for (id, client) in [("pf1", "c"), ("pf2", "c2")] {
        store
            .put_grant(&grant(id, "frank", client, "https://r", now))
            .await
            .unwrap();
        store.link_connection("frank", "acme", id).await.unwrap();
    }
    let franks_at = |client: &str| GrantFilter {
        subject: Some("frank".into()),
        client_id: Some(client.into()),
        ..GrantFilter::default()
    };
    assert_eq!(
        store
            .revoke_grants(&franks_at("c"), "bulk", now)
            .await
            .unwrap(),
        1
    );
    assert!(store.connection("frank", "acme").await.unwrap().is_some());
    assert_eq!(store.queued_revocations(i64::MAX, 10).await.unwrap(), []);
    assert_eq!(
        store
            .revoke_grants(&franks_at("c2"), "bulk", now)
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.connection("frank", "acme").await.unwrap(), None);
    store
        .forget_revocation("sealed-refresh-frank")
        .await
        .unwrap();
    // A person's every connection goes when everything of that person is revoked, even one no grant used
    // (connected on a consent page, then never called); narrower revocations leave unused ones alone.
    store
        .put_connection(&connection("erin", "acme", "e-1"))
        .await
        .unwrap();
    let erins_at_one_client = GrantFilter {
        subject: Some("erin".into()),
        client_id: Some("some-client".into()),
        ..GrantFilter::default()
    };
    store
        .revoke_grants(&erins_at_one_client, "narrow", now)
        .await
        .unwrap();
    assert!(store.connection("erin", "acme").await.unwrap().is_some());
    let erins = GrantFilter {
        subject: Some("erin".into()),
        ..GrantFilter::default()
    };
    assert_eq!(store.revoke_grants(&erins, "left", now).await.unwrap(), 0);
    assert_eq!(store.connection("erin", "acme").await.unwrap(), None);
    let queued = store.queued_revocations(i64::MAX, 10).await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].subject, "erin");
    store
        .forget_revocation(&queued[0].sealed.clone())
        .await
        .unwrap();
    // A disconnect returns what was stored, and queues its tokens: the refresh token, and the access token only
    // while it lives.
    assert_eq!(
        store.delete_connection("alice", "acme", now).await.unwrap(),
        Some(alice)
    );
    assert_eq!(
        drain(store).await,
        [("sealed-refresh-alice".into(), "refresh_token".into(), now)]
    );
    assert_eq!(
        store.delete_connection("alice", "acme", now).await.unwrap(),
        None
    );
    let live = ProviderConnection {
        access_expires_at: now + 1,
        ..connection("alice", "acme", "live-access")
    };
    store.put_connection(&live).await.unwrap();
    assert_eq!(
        live.queued(now),
        drain_after(store, store.delete_connection("alice", "acme", now)).await
    );
    // Tokens queued on their own (a refresh that lost its row); one queued twice is queued once.
    let lost = live.queued(now);
    store.queue_revocations(&lost).await.unwrap();
    store.queue_revocations(&lost[..1]).await.unwrap();
    let mut queued = store.queued_revocations(i64::MAX, 10).await.unwrap();
    queued.sort_by_key(|q| q.token_type_hint != "refresh_token");
    assert_eq!(queued, lost);
    // Each row backs off on its own: only rows due are read; a failure counts an attempt, a postponement none, and
    // neither brings a row forward.
    let due = |at: i64| async move {
        let mut due: Vec<_> = store
            .queued_revocations(at, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|q| (q.token_type_hint, q.attempts))
            .collect();
        due.sort();
        due
    };
    let (refresh, access) = (&lost[0].sealed, &lost[1].sealed);
    store.revocation_failed(refresh, now + 10).await.unwrap();
    assert_eq!(due(now).await, [("access_token".into(), 0)]);
    assert_eq!(
        due(now + 10).await,
        [("access_token".into(), 0), ("refresh_token".into(), 1)]
    );
    store.postpone_revocation(access, now + 5).await.unwrap();
    store
        .postpone_provider_revocations("other", now + 100)
        .await
        .unwrap();
    assert_eq!(due(now + 4).await, []);
    assert_eq!(due(now + 5).await, [("access_token".into(), 0)]);
    store
        .postpone_provider_revocations("acme", now + 60)
        .await
        .unwrap();
    store.postpone_revocation(refresh, now + 30).await.unwrap();
    assert_eq!(due(now + 59).await, []);
    assert_eq!(
        due(now + 60).await,
        [("access_token".into(), 0), ("refresh_token".into(), 1)]
    );
    drain(store).await;
}

/// Takes every queued revocation out of the queue: (sealed, hint, queued at), sorted.
async fn drain(store: &dyn Store) -> Vec<(String, String, i64)> {
    let mut all: Vec<_> = store
        .queued_revocations(i64::MAX, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|q| (q.sealed, q.token_type_hint, q.queued_at))
        .collect();
    for (sealed, _, _) in &all {
        store.forget_revocation(sealed).await.unwrap();
    }
    all.sort();
    all
}

/// What `deleted` queued, as [`ProviderConnection::queued`] would say it, in its order.
async fn drain_after(
    store: &dyn Store,
    deleted: impl std::future::Future<Output = Result<Option<ProviderConnection>, StoreError>>,
) -> Vec<QueuedRevocation> {
    deleted.await.unwrap().expect("a connection was deleted");
    let queued = store.queued_revocations(i64::MAX, 100).await.unwrap();
    for q in &queued {
        store.forget_revocation(&q.sealed).await.unwrap();
    }
    let mut queued = queued;
    queued.sort_by_key(|q| q.token_type_hint != "refresh_token");
    queued
}

/// A connection whose last live grant expires, rather than being revoked, goes at the next purge with its tokens
/// queued, as a revocation would take it; one no grant has used yet (connected on a consent page) stays.
async fn expired_grants_leave_no_connection(store: &dyn Store) {
    let now = 1_700_000_000;
    drain(store).await;
    store
        .put_connection(&connection("gina", "acme", "g-1"))
        .await
        .unwrap();
    store
        .put_connection(&connection("gina", "unused", "u-1"))
        .await
        .unwrap();
    store
        .put_grant(&grant("ex-a", "gina", "c", "https://r", now))
        .await
        .unwrap();
    store
        .put_grant(&Grant {
            expires_at: now + 100,
            ..grant("ex-h", "gina", "c2", "https://r", now)
        })
        .await
        .unwrap();
    store.link_connection("gina", "acme", "ex-a").await.unwrap();
    store.link_connection("gina", "acme", "ex-h").await.unwrap();
    assert!(store.revoke_grant("ex-a", "test", now).await.unwrap());
    assert!(store.connection("gina", "acme").await.unwrap().is_some());
    store.purge_expired(now + 99).await.unwrap();
    assert!(store.connection("gina", "acme").await.unwrap().is_some());
    assert_eq!(drain(store).await, []);
    store.purge_expired(now + 100).await.unwrap();
    assert_eq!(store.connection("gina", "acme").await.unwrap(), None);
    assert_eq!(
        drain(store).await,
        [(
            "sealed-refresh-gina".into(),
            "refresh_token".into(),
            now + 100
        )]
    );
    assert!(store.connection("gina", "unused").await.unwrap().is_some());
}

async fn bulk_revocation(store: &dyn Store) {
    let now = 1_700_000_000;
    for i in 0..1500 {
        let id = format!("busy-{i:04}");
        store
            .put_grant(&grant(&id, &format!("user-{i}"), "busy", "https://r", now))
            .await
            .unwrap();
        store
            .put_refresh_token(&format!("rt-{id}"), &id, now + 1000)
            .await
            .unwrap();
        store
            .put_access_token(&format!("at-{id}"), &id, now + 300)
            .await
            .unwrap();
    }
    store
        .put_grant(&grant("quiet", "user-0", "quiet", "https://r", now))
        .await
        .unwrap();
    let busy = GrantFilter {
        client_id: Some("busy".into()),
        ..Default::default()
    };
    assert_eq!(
        store.revoke_grants(&busy, "incident", now).await.unwrap(),
        1500
    );
    assert_eq!(store.revoke_grants(&busy, "again", now).await.unwrap(), 0);
    assert_eq!(store.list_grants(&busy, now, 10).await.unwrap(), vec![]);
    for id in ["busy-0000", "busy-0999", "busy-1000", "busy-1499"] {
        assert_eq!(
            store
                .refresh_token_grant(&format!("rt-{id}"), now)
                .await
                .unwrap(),
            None,
            "{id}"
        );
        assert!(
            store
                .access_token_revoked(&format!("at-{id}"))
                .await
                .unwrap(),
            "{id}"
        );
        let g = store.grant(id).await.unwrap().unwrap();
        assert_eq!(g.revoked_reason.as_deref(), Some("incident"));
    }
    assert_eq!(
        store.grant("quiet").await.unwrap().unwrap().revoked_at,
        None
    );
}

/// Rows written together by the group commit (`store::batch`): many requests at once, each answered only for its
/// own row; one assertion presented by 32 requests at once is claimed by exactly one; a row the database refuses
/// (a grant id already taken) fails only its own request.
async fn group_commit(store: &(dyn Store + Sync)) {
    let now = 1_700_000_000;
    let claims = (0..32).map(|_| store.use_assertion_id("racer", "same-jti", now + 60));
    let results = futures::future::join_all(claims).await;
    let winners = results.iter().filter(|r| *r.as_ref().unwrap()).count();
    assert_eq!(winners, 1, "{results:?}");

    store
        .put_grant(&grant("taken", "alice", "c", "https://r", now))
        .await
        .unwrap();
    let mut writes = Vec::new();
    for i in 0..40 {
        let id = if i == 17 {
            "taken".to_owned()
        } else {
            format!("group-{i}")
        };
        writes.push(async move {
            let g = grant(&id, "bob", "group", "https://r", now);
            let put = store.put_grant(&g).await;
            let token = store
                .put_access_token(&format!("at-{id}"), &id, now + 300)
                .await;
            (id, put, token)
        });
    }
    for (id, put, token) in futures::future::join_all(writes).await {
        if id == "taken" {
            assert!(matches!(put, Err(StoreError::Unavailable(_))), "{put:?}");
        } else {
            put.unwrap();
            token.unwrap();
            assert_eq!(store.grant(&id).await.unwrap().unwrap().subject, "bob");
            assert_eq!(
                store.access_token_grant(&format!("at-{id}")).await.unwrap(),
                Some(id.clone())
            );
        }
    }
    assert_eq!(
        store.grant("taken").await.unwrap().unwrap().subject,
        "alice"
    );
}

/// An issue (assertion id, grant, token, audit row) is written whole or not at all: 24 issues presenting one
/// assertion at once give one grant, one token and one audit row; an assertion spent before (by
/// `use_assertion_id`) gets nothing written; an issue the database refuses (a grant id taken) fails alone and
/// leaves its assertion unspent, while the issues beside it are written.
async fn issues_are_written_whole(store: &(dyn Store + Sync)) {
    let now = 1_700_000_000;
    let issue = |i: usize, jti: &str, grant_id: &str| Issue {
        claim: Some(AssertionClaim {
            client_id: "issuer-client".into(),
            jti: jti.into(),
            expires_at: now + 60,
        }),
        grant: Some(grant(
            grant_id,
            "issuer-client",
            "issuer-client",
            "https://r",
            now,
        )),
        access_token: Some(AccessTokenRecord {
            jti: format!("tok-{grant_id}"),
            grant_id: grant_id.into(),
            expires_at: now + 300,
        }),
        audit: Some(AuditEvent {
            at: now,
            event: "token".into(),
            subject: None,
            client_id: Some("issuer-client".into()),
            resource: None,
            scopes: vec![],
            outcome: "issued".into(),
            reason: format!("issue-{i}"),
        }),
    };
    let racing = (0..24).map(|i| store.record_issue(issue(i, "one-jti", &format!("race-{i}"))));
    let results = futures::future::join_all(racing).await;
    let won: Vec<usize> = (0..24).filter(|i| *results[*i].as_ref().unwrap()).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    for i in 0..24 {
        let g = store.grant(&format!("race-{i}")).await.unwrap();
        let t = store
            .access_token_grant(&format!("tok-race-{i}"))
            .await
            .unwrap();
        assert_eq!(
            (g.is_some(), t.is_some()),
            (i == won[0], i == won[0]),
            "issue {i}"
        );
    }
    let audited = store.recent_audit(1000).await.unwrap();
    let rows = audited
        .iter()
        .filter(|e| e.reason.starts_with("issue-"))
        .count();
    assert_eq!(rows, 1);

    assert!(
        store
            .use_assertion_id("issuer-client", "spent-before", now + 60)
            .await
            .unwrap()
    );
    assert!(
        !store
            .record_issue(issue(100, "spent-before", "after-spent"))
            .await
            .unwrap()
    );
    assert!(store.grant("after-spent").await.unwrap().is_none());

    store
        .put_grant(&grant("taken-by-issue", "x", "c", "https://r", now))
        .await
        .unwrap();
    let (bad, good) = tokio::join!(
        store.record_issue(issue(200, "bad-jti", "taken-by-issue")),
        store.record_issue(issue(201, "good-jti", "beside-bad")),
    );
    assert!(matches!(bad, Err(StoreError::Unavailable(_))), "{bad:?}");
    assert!(good.unwrap());
    assert!(store.grant("beside-bad").await.unwrap().is_some());
    // Nothing of the refused issue stayed: its assertion can still be presented.
    assert!(
        store
            .use_assertion_id("issuer-client", "bad-jti", now + 60)
            .await
            .unwrap()
    );
}

/// A group the database refuses for a reason none of its rows caused (another connection holds SQLite's write
/// lock past the busy timeout of 5 s) fails all its rows at once. Written again one by one, each row waited out
/// the busy timeout in turn: eight requests answered after 45 s instead of 5 s, and every token request queued
/// behind them waited too. Once the lock is gone the next write succeeds (no transaction was left open).
#[tokio::test]
async fn a_locked_database_fails_a_group_at_once_not_row_by_row() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqlStore::open_sqlite(&dir.path().join("store.db"))
        .await
        .unwrap();
    let event = |reason: &str| AuditEvent {
        at: 1_700_000_000,
        event: "token".into(),
        subject: None,
        client_id: Some("c".into()),
        resource: None,
        scopes: vec![],
        outcome: "denied".into(),
        reason: reason.into(),
    };
    // The writer takes its own connection at its first group.
    store.put_audit(&event("first")).await.unwrap();
    let mut holder = store.pool().acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // One task on this runtime: all eight are queued before the writer runs, so they form one group.
    let reasons: Vec<String> = (0..8).map(|i| format!("locked-{i}")).collect();
    let writes = reasons.iter().map(|r| {
        let e = event(r);
        let store = &store;
        async move { store.put_audit(&e).await }
    });
    let results = futures::future::join_all(writes).await;
    let elapsed = started.elapsed();
    sqlx::query("ROLLBACK").execute(&mut *holder).await.unwrap();
    drop(holder);
    for r in &results {
        assert!(
            matches!(r, Err(StoreError::Unavailable(m)) if m.contains("database is locked")),
            "{r:?}"
        );
    }
    assert!(
        elapsed < std::time::Duration::from_secs(15),
        "the group was answered after {elapsed:?}"
    );
    store.put_audit(&event("after")).await.unwrap();
    let reasons: Vec<String> = store
        .recent_audit(20)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.reason)
        .collect();
    assert!(reasons.contains(&"after".to_owned()), "{reasons:?}");
    assert!(
        !reasons.iter().any(|r| r.starts_with("locked-")),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn sqlite_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqlStore::open_sqlite(&dir.path().join("nested/dir/as.db"))
        .await
        .unwrap();
    contract(&store).await;
    bulk_revocation(&store).await;
    group_commit(&store).await;
    issues_are_written_whole(&store).await;
    provider_connections(&store).await;
    expired_grants_leave_no_connection(&store).await;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn postgres_store_keeps_the_contract() {
    let url = pg_database("contract").await;
    let store = SqlStore::open_postgres(&url, 4).await.unwrap();
    contract(&store).await;
    bulk_revocation(&store).await;
    group_commit(&store).await;
    issues_are_written_whole(&store).await;
    provider_connections(&store).await;
    expired_grants_leave_no_connection(&store).await;
}

#[tokio::test]
async fn concurrent_replicas_migrate_once() {
    let url = pg_database("migrate").await;
    let opens = (0..4).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            SqlStore::open_postgres(&url, 2)
                .await
                .map(|s| s.schema_version())
        })
    });
    for v in futures::future::join_all(opens).await {
        assert_eq!(
            v.unwrap().unwrap(),
            mcp_authz_authserver::store::migrations::known_version()
        );
    }
    let store = SqlStore::open_postgres(&url, 1).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM schema_version")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(
        rows,
        mcp_authz_authserver::store::migrations::known_version()
    );
}

#[tokio::test]
async fn an_older_replica_works_against_a_newer_schema() {
    for backend in ["sqlite", "postgres"] {
        let dir = tempfile::tempdir().unwrap();
        let url = if backend == "postgres" {
            pg_database("upgrade").await
        } else {
            String::new()
        };
        let open = || async {
            if backend == "postgres" {
                SqlStore::open_postgres(&url, 2).await.unwrap()
            } else {
                SqlStore::open_sqlite(&dir.path().join("as.db"))
                    .await
                    .unwrap()
            }
        };
        let store = open().await;
        // What a newer release's migration would do: additive only.
        sqlx::query("ALTER TABLE grants ADD COLUMN device_name TEXT")
            .execute(store.pool())
            .await
            .unwrap();
        sqlx::query("CREATE TABLE IF NOT EXISTS future_things (id TEXT PRIMARY KEY)")
            .execute(store.pool())
            .await
            .unwrap();
        sqlx::query("INSERT INTO schema_version (version, applied_at) VALUES (99, 0)")
            .execute(store.pool())
            .await
            .unwrap();
        drop(store);
        let old = open().await;
        assert_eq!(old.schema_version(), 99, "{backend}");
        contract(&old).await;
    }
}

/// A text PostgreSQL refuses (a NUL byte, which a client can put in a `client_id` that is audited; SQLSTATE 22021,
/// all digits, not to be read as a SQLite result code) fails its own row only: the group it was in is written
/// again row by row, and an assertion presented twice in that group is still claimed exactly once.
#[tokio::test]
async fn postgres_a_refused_text_fails_only_its_row() {
    let url = pg_database("nul_row").await;
    let store = SqlStore::open_postgres(&url, 4).await.unwrap();
    let bad = AuditEvent {
        at: 1_700_000_000,
        event: "token".into(),
        subject: None,
        client_id: Some("evil\0".into()),
        resource: None,
        scopes: vec![],
        outcome: "denied".into(),
        reason: "invalid_client".into(),
    };
    let store = &store;
    let (audit, first, second) = tokio::join!(
        store.put_audit(&bad),
        store.use_assertion_id("c", "nul-group", 1_700_000_060),
        store.use_assertion_id("c", "nul-group", 1_700_000_060),
    );
    assert!(
        matches!(audit, Err(StoreError::Unavailable(_))),
        "{audit:?}"
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    assert!(first ^ second, "claimed {first} and {second}");
}

/// A refusal whose client_id carried U+0000 (`client_id=a%00b` in a form) is still recorded on PostgreSQL,
/// whose text type refuses that character: before `audit::row` replaced it, the insert failed and the
/// attempt left no row.
#[tokio::test]
async fn a_refusal_with_a_nul_in_its_client_id_is_still_audited() {
    use mcp_authz_authserver::audit::{Decision, row};
    let scopes = vec!["files:read".to_owned()];
    let decision = Decision {
        event: "token",
        subject: None,
        client_id: Some("https://evil.example/a\0b"),
        caller: None,
        resource: None,
        scopes: &scopes,
        outcome: "refused",
        reason: "invalid_client",
    };
    let url = pg_database("nul").await;
    let postgres = SqlStore::open_postgres(&url, 2).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqlStore::open_sqlite(&dir.path().join("as.db"))
        .await
        .unwrap();
    for store in [&postgres as &dyn Store, &sqlite] {
        store.put_audit(&row(&decision)).await.unwrap();
        let stored = store.recent_audit(1).await.unwrap();
        assert_eq!(
            stored[0].client_id.as_deref(),
            Some("https://evil.example/a\u{fffd}b")
        );
    }
}

/// Review F6: a replay is verified while its assertion is still acceptable (exp + leeway >= now) and claimed
/// later, by the writer. A purge that ran in between (it deletes `expires_at < now` with no margin, and its own
/// DELETEs hold the write lock the writer waits for) must not have forgotten the first use: it had, and the
/// replay's claim won, so one assertion got two tokens. Assertion ids are now kept 120 s past their expiry.
#[tokio::test]
async fn sqlite_a_purge_between_a_replays_check_and_its_claim_does_not_let_it_in() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqlStore::open_sqlite(&dir.path().join("as.db"))
        .await
        .unwrap();
    let expires_at = 1_700_000_060;
    assert!(
        store
            .use_assertion_id("c", "late", expires_at)
            .await
            .unwrap()
    );
    // The replay was verified at `expires_at` (accepted: exp + leeway == now); the purge starts a second later.
    store.purge_expired(expires_at + 1).await.unwrap();
    assert!(
        !store
            .use_assertion_id("c", "late", expires_at)
            .await
            .unwrap(),
        "the replay's claim was accepted after the purge"
    );
}

/// A store whose writer stopped (a panic in its thread) answers every write with 503 while reads work: the
/// ping behind /readyz must say so, or the pod is never restarted.
#[tokio::test]
async fn a_stopped_writer_fails_the_ping() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqlStore::open_sqlite(&dir.path().join("as.db"))
        .await
        .unwrap();
    store.ping().await.unwrap();
    store.stop_writer_for_tests();
    match store.ping().await {
        Err(StoreError::Unavailable(message)) => {
            assert_eq!(message, "the store's writer has stopped")
        }
        other => panic!("{other:?}"),
    }
}

/// Before this release, a grant made from an identity provider's assertion (ID-JAG) could be linked to the local
/// person of the same `sub`: revoking it would delete that person's connection. Migrating drops such links, and
/// keeps those of sign-ins here.
#[tokio::test]
async fn migrating_drops_connection_links_of_grants_not_signed_in_here() {
    use mcp_authz_authserver::store::migrations::MIGRATIONS;
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("as.db");
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .unwrap();
    sqlx::query(
        "CREATE TABLE schema_version (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    for (version, statements) in MIGRATIONS.iter().filter(|(v, _)| *v <= 10) {
        for statement in *statements {
            sqlx::query(*statement).execute(&mut conn).await.unwrap();
        }
        sqlx::query("INSERT INTO schema_version (version, applied_at) VALUES ($1, 0)")
            .bind(version)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let now = 1_700_000_000;
    // Rows as release 10 left them: alice signed in here (code-grant), and an identity provider asserted an
    // "alice" of its own (jag-grant); both grants were linked to her connection.
    for (id, grant_type) in [
        ("code-grant", "authorization_code"),
        ("jag-grant", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
    ] {
        sqlx::query(
            "INSERT INTO grants (id, subject, client_id, resource, scopes, grant_type, created_at, expires_at)
             VALUES ($1, 'alice', 'c', 'https://r', 'a', $2, $3, $4)",
        )
        .bind(id)
        .bind(grant_type)
        .bind(now)
        .bind(now + 1000)
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO provider_connection_grants (grant_id, subject, provider) VALUES ($1, 'alice', 'acme')",
        )
        .bind(id)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO provider_connections (subject, provider, key_id, refresh_sealed, access_sealed,
           access_expires_at, scopes, created_at, updated_at)
         VALUES ('alice', 'acme', 'k1', 'sealed-refresh', 'sealed-access', 0, '', 0, 0)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    drop(conn);
    let store = SqlStore::open_sqlite(&path).await.unwrap();
    let links: Vec<String> = sqlx::query_scalar("SELECT grant_id FROM provider_connection_grants")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(links, ["code-grant"]);
    assert!(store.revoke_grant("jag-grant", "test", now).await.unwrap());
    assert!(store.connection("alice", "acme").await.unwrap().is_some());
    assert!(store.revoke_grant("code-grant", "test", now).await.unwrap());
    assert_eq!(store.connection("alice", "acme").await.unwrap(), None);
}

/// Another replica's refresh commits while a disconnect deletes the same connection (PostgreSQL, READ COMMITTED):
/// the tokens queued for revocation are those of the row deleted, the refreshed ones, not the ones read before the
/// refresh (which would leave the refreshed tokens valid at the provider and nobody's).
#[tokio::test]
async fn postgres_a_refresh_committing_during_a_delete_has_its_tokens_queued() {
    use sqlx::Connection;
    let url = pg_database("delete_race").await;
    let store = SqlStore::open_postgres(&url, 4).await.unwrap();
    let now = 1_000;
    let before = connection("alice", "acme", "old-access");
    store.put_connection(&before).await.unwrap();
    // The refresh, as `replace_connection` writes it, holding its row lock until the delete waits on it.
    let mut refresh = sqlx::AnyConnection::connect(&url).await.unwrap();
    let mut tx = refresh.begin().await.unwrap();
    sqlx::query(
        "UPDATE provider_connections SET access_sealed = 'new-access', refresh_sealed = 'new-refresh'
         WHERE subject = 'alice' AND provider = 'acme'",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    let deleting = {
        let store = store.clone();
        tokio::spawn(async move { store.delete_connection("alice", "acme", now).await })
    };
    let mut waiting = false;
    for _ in 0..500 {
        let blocked: i64 = sqlx::query_scalar(
            // This database's waiter only: the test server is shared with other tests' databases.
            "SELECT COUNT(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE NOT l.granted AND l.locktype = 'transactionid' AND a.datname = current_database()",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        if blocked > 0 {
            waiting = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(waiting, "the delete never waited on the refresh's row lock");
    tx.commit().await.unwrap();
    let deleted = deleting.await.unwrap().unwrap().expect("deleted");
    assert_eq!(deleted.access_sealed, "new-access");
    let mut queued: Vec<_> = store
        .queued_revocations(i64::MAX, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|q| q.sealed)
        .collect();
    queued.sort();
    assert_eq!(queued, ["new-access", "new-refresh"]);
}

/// Two revocations of grants sharing a connection overlap (PostgreSQL, READ COMMITTED), each deciding whether the
/// other's grant still holds the connection before the other commits: the connection still goes with the last of
/// them, its refresh token queued, whether that grant is revoked alone or in bulk.
#[tokio::test]
async fn postgres_overlapping_revocations_of_a_shared_connection_delete_it() {
    use sqlx::Connection;
    let url = pg_database("revoke_race").await;
    let store = SqlStore::open_postgres(&url, 4).await.unwrap();
    // Past the connections' access tokens' expiry: only refresh tokens are queued.
    let now = 3_000;
    // Until `done`, or `n` of this database's sessions wait on another's transaction (the test server is shared
    // with other tests' databases).
    async fn until(store: &SqlStore, n: i64, done: impl Fn() -> bool) {
        for _ in 0..500 {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                 WHERE NOT l.granted AND l.locktype = 'transactionid' AND a.datname = current_database()",
            )
            .fetch_one(store.pool())
            .await
            .unwrap();
            if done() || waiting >= n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("never {n} waiting");
    }
    for (subject, bulk) in [("alice", false), ("bob", true)] {
        let (a, h) = (format!("{subject}-a"), format!("{subject}-h"));
        store
            .put_connection(&connection(subject, "acme", "access"))
            .await
            .unwrap();
        for (id, client) in [(&a, "c"), (&h, "c2")] {
            store
                .put_grant(&grant(id, subject, client, "https://r", now))
                .await
                .unwrap();
            store.link_connection(subject, "acme", id).await.unwrap();
        }
        store
            .put_refresh_token(&format!("{h}-refresh"), &h, now + 1000)
            .await
            .unwrap();
        // Two transactions pausing the revocations: H's before it looks at the connection (on its refresh token),
        // A's after it has (on its link), so each decides while the other has revoked but not committed.
        let mut hold_h = sqlx::AnyConnection::connect(&url).await.unwrap();
        let mut hold_h = hold_h.begin().await.unwrap();
        sqlx::query("SELECT 1 FROM refresh_tokens WHERE grant_id = $1 FOR UPDATE")
            .bind(&h)
            .fetch_all(&mut *hold_h)
            .await
            .unwrap();
        let mut hold_a = sqlx::AnyConnection::connect(&url).await.unwrap();
        let mut hold_a = hold_a.begin().await.unwrap();
        sqlx::query("SELECT 1 FROM provider_connection_grants WHERE grant_id = $1 FOR UPDATE")
            .bind(&a)
            .fetch_all(&mut *hold_a)
            .await
            .unwrap();
        let revoking_h = {
            let (store, h) = (store.clone(), h.clone());
            tokio::spawn(async move { store.revoke_grant(&h, "test", now).await })
        };
        until(&store, 1, || false).await;
        let revoking_a = {
            let (store, a) = (store.clone(), a.clone());
            tokio::spawn(async move {
                if bulk {
                    let f = GrantFilter {
                        subject: Some(subject.into()),
                        client_id: Some("c".into()),
                        ..GrantFilter::default()
                    };
                    store.revoke_grants(&f, "test", now).await.map(|n| n == 1)
                } else {
                    store.revoke_grant(&a, "test", now).await
                }
            })
        };
        until(&store, 2, || false).await;
        hold_h.commit().await.unwrap();
        // H goes on: to its end (each kept the connection for the other), or to wait for A to commit.
        until(&store, 2, || revoking_h.is_finished()).await;
        hold_a.commit().await.unwrap();
        assert!(revoking_a.await.unwrap().unwrap());
        assert!(revoking_h.await.unwrap().unwrap());
        assert_eq!(
            store.connection(subject, "acme").await.unwrap(),
            None,
            "{subject}: the connection outlived both grants"
        );
        assert_eq!(
            drain(&store).await,
            [(
                format!("sealed-refresh-{subject}"),
                "refresh_token".into(),
                now
            )]
        );
    }
}

/// Rows from before holders were recorded: the migration cannot know who held each URL (the config is not the
/// database's), so a grant has no holder until its first use adopts today's, and a consent counts only where no
/// holder is configured (local mode): a person asked once more beats a consent carried to a new holder.
#[tokio::test]
async fn migrating_leaves_old_grants_and_consents_without_a_holder() {
    use mcp_authz_authserver::store::migrations::MIGRATIONS;
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("as.db");
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .unwrap();
    sqlx::query(
        "CREATE TABLE schema_version (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    for (version, statements) in MIGRATIONS.iter().filter(|(v, _)| *v <= 11) {
        for statement in *statements {
            sqlx::query(*statement).execute(&mut conn).await.unwrap();
        }
        sqlx::query("INSERT INTO schema_version (version, applied_at) VALUES ($1, 0)")
            .bind(version)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let now = 1_700_000_000;
    sqlx::query(
        "INSERT INTO grants (id, subject, client_id, resource, scopes, grant_type, created_at, expires_at)
         VALUES ('old', 'alice', 'c', 'https://r', 'a', 'authorization_code', $1, $2)",
    )
    .bind(now)
    .bind(now + 1000)
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO consents (subject, client_id, resource, scopes, granted_at)
         VALUES ('alice', 'c', 'https://r', 'a', $1)",
    )
    .bind(now)
    .execute(&mut conn)
    .await
    .unwrap();
    drop(conn);
    let store = SqlStore::open_sqlite(&path).await.unwrap();
    assert_eq!(
        store.schema_version(),
        mcp_authz_authserver::store::migrations::known_version()
    );
    assert_eq!(store.grant("old").await.unwrap().unwrap().holder, "");
    let consent = |holder| Consent {
        subject: "alice",
        client_id: "c",
        resource: "https://r",
        scopes: "a",
        client_fingerprint: "",
        holder,
    };
    assert!(store.has_consent(&consent("")).await.unwrap());
    assert!(!store.has_consent(&consent("uid-1")).await.unwrap());
    assert_eq!(
        store.adopt_holder("old", "uid-1").await.unwrap().as_deref(),
        Some("uid-1")
    );
}
