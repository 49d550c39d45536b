//! Teams sharing one AuthorizationServer, against the real API server with the operator under the chart's
//! rules: a newcomer cannot take a working service's resource URL or redefine its scopes, a namespace the
//! server does not admit gets nothing, a resource URL cannot be edited into someone else's, and one the server
//! grants to a namespace (`resourceUrls`) is that namespace's whoever claimed it first.

mod operator_support;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, Patch, PatchParams};
use mcp_authz_operator::api::cases;
use mcp_authz_tests::control_plane::{ControlPlane, eventually, eventually_within};
use operator_support::{condition, get_json};
use serde_json::{Value, json};

const V1: &str = "mcp-authz.io/v1alpha1";
const TENANT_LABEL: &str = "mcp-authz.io/tenant";
const URL: &str = "https://mcp.example.com/files";

fn service(namespace: &str, platform: &str, url: &str, display: &str, scopes: &[&str]) -> Value {
    let mut s = cases::mcp_service();
    s["metadata"] = json!({"name": "files", "namespace": namespace});
    s["spec"]["resourceUrl"] = json!(url);
    s["spec"]["displayName"] = json!(display);
    s["spec"]["scopes"] = json!(scopes);
    s["spec"]["rules"] = json!([]);
    s["spec"]["authorizationServerRef"] = json!({"name": "auth", "namespace": platform});
    s
}

fn scope(namespace: &str, name: &str, value: &str, description: &str, sensitive: bool) -> Value {
    json!({
        "apiVersion": V1, "kind": "MCPScope",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"value": value, "description": description, "sensitive": sensitive}
    })
}

async fn label_tenant(admin: &kube::Client, namespace: &str, value: Option<&str>) {
    Api::<Namespace>::all(admin.clone())
        .patch(
            namespace,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {TENANT_LABEL: value}}})),
        )
        .await
        .expect("label namespace");
}

async fn conditions_of(
    admin: &kube::Client,
    namespace: &str,
    kind: &str,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let object = get_json(admin, namespace, V1, kind, name).await?;
    condition(&object, type_)
}

/// Waits until condition `type_` of the `kind` `namespace/name` has status `status`, and returns it as
/// (status, reason, message).
async fn condition_becomes(
    admin: &kube::Client,
    (namespace, kind, name): (&str, &str, &str),
    type_: &str,
    status: &str,
) -> (String, String, String) {
    eventually(
        &format!("{kind} {namespace}/{name} {type_}={status}"),
        || async {
            conditions_of(admin, namespace, kind, name, type_)
                .await
                .filter(|c| c.0 == status)
        },
    )
    .await
}

/// Deletes the MCPService `files` of `namespace` (`why` names it in a failure).
async fn delete_service(admin: &kube::Client, namespace: &str, why: &str) {
    Api::<kube::api::DynamicObject>::namespaced_with(
        admin.clone(),
        namespace,
        &operator_support::resource("MCPService"),
    )
    .delete("files", &Default::default())
    .await
    .expect(why);
}

async fn secret(admin: &kube::Client, namespace: &str, name: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(admin.clone(), namespace)
        .get_opt(name)
        .await
        .expect("get secret")
}

/// The authorization server's rendered config once it has been rendered after everything created so far:
/// `marker`, a new scope of the platform namespace, shows up only in a rendering that saw the newer objects.
async fn config_after(admin: &kube::Client, platform: &str, marker: &str) -> Value {
    operator_support::create(
        admin,
        platform,
        &scope(platform, &marker.replace(':', "-"), marker, "marker", false),
    )
    .await
    .expect("marker scope");
    eventually(&format!("the authserver config lists {marker}"), || async {
        let cm = get_json(admin, platform, "v1", "ConfigMap", "auth-authserver").await?;
        let text = cm["data"]["authserver.yaml"].as_str()?;
        let config: Value = serde_saphyr::from_str(text).expect("config YAML");
        config["scopes"]
            .as_array()?
            .iter()
            .any(|s| s["value"] == marker)
            .then_some(config)
    })
    .await
}

fn entries(config: &Value) -> Vec<(String, String)> {
    config["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| {
            (
                r["resource"].as_str().unwrap_or_default().to_owned(),
                r["displayName"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The operator, running under the chart's rules for the `platform` namespace, and an AuthorizationServer `auth`
/// there that admits the namespaces labelled as its tenants (`TENANT_LABEL: <platform>`).
/// Patches an object and expects the API server's 422 whose message names `message`.
async fn refused_with_422(
    admin: &kube::Client,
    (namespace, kind, name): (&str, &str, &str),
    patch: Value,
    message: &str,
) {
    let refused = Api::<kube::api::DynamicObject>::namespaced_with(
        admin.clone(),
        namespace,
        &operator_support::resource(kind),
    )
    .patch(name, &PatchParams::default(), &Patch::Merge(patch))
    .await
    .expect_err(message);
    match refused {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(status.message.contains(message), "{}", status.message);
        }
        other => panic!("expected a refusal, got {other}"),
    }
}

async fn operator_and_server(
    cluster: &ControlPlane,
    admin: &kube::Client,
    platform: &str,
    identity: &str,
) -> mcp_authz_operator::runtime::Running {
    let configuration = format!("mcp-authz-webhook-{platform}");
    let operator =
        operator_support::operator_client(cluster, platform, "mcp-authz-operator", &configuration)
            .await;
    let running = mcp_authz_operator::runtime::start(
        operator_support::operator_args(platform, identity, &configuration),
        operator,
    )
    .await
    .expect("operator starts");
    let mut server = cases::authorization_server();
    server["metadata"]["namespace"] = json!(platform);
    // Each test admits its own tenants (the tests share one API server, and a server admitting another test's
    // namespaces would count its scopes too).
    server["spec"]["allowedNamespaces"] =
        json!({"from": "Selector", "selector": {"matchLabels": {TENANT_LABEL: platform}}});
    operator_support::create(admin, platform, &server)
        .await
        .expect("AuthorizationServer");
    running
}

#[tokio::test]
async fn a_tenant_cannot_take_another_tenants_ground() {
    let cluster = ControlPlane::shared();
    let admin = cluster.client();
    operator_support::install_crds(&admin).await;
    let platform = cluster.new_namespace("platform").await.expect("namespace");
    // Names chosen so that the newcomer's namespace sorts first: age, not names, must decide.
    let victim_ns = cluster.new_namespace("zzz").await.expect("namespace");
    let newcomer_ns = cluster.new_namespace("aaa").await.expect("namespace");
    let outside_ns = cluster.new_namespace("outside").await.expect("namespace");
    label_tenant(&admin, &victim_ns, Some(&platform)).await;
    label_tenant(&admin, &newcomer_ns, Some(&platform)).await;
    let running = operator_and_server(cluster, &admin, &platform, "op-tenancy").await;
    operator_support::create(
        &admin,
        &platform,
        &scope(
            &platform,
            "files-read",
            "files:read",
            "Read your files",
            false,
        ),
    )
    .await
    .expect("platform scope");

    // The team that was first: its scope, its service, working.
    operator_support::create(
        &admin,
        &victim_ns,
        &scope(
            &victim_ns,
            "files-write",
            "files:write",
            "Change and delete your files",
            true,
        ),
    )
    .await
    .expect("victim scope");
    operator_support::create(
        &admin,
        &victim_ns,
        &service(
            &victim_ns,
            &platform,
            URL,
            "Files",
            &["files:read", "files:write"],
        ),
    )
    .await
    .expect("victim service");
    condition_becomes(&admin, (&victim_ns, "MCPService", "files"), "Ready", "True").await;
    let victim_key = eventually("the victim's credentials", || {
        secret(&admin, &victim_ns, "files-mcp-authz-sidecar-credentials")
    })
    .await;
    // creationTimestamp has one-second resolution: make the newcomer visibly younger.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    // The newcomer: same URL, same scope value with a softer meaning.
    operator_support::create(
        &admin,
        &newcomer_ns,
        &scope(
            &newcomer_ns,
            "files-write",
            "files:write",
            "Nothing to worry about",
            false,
        ),
    )
    .await
    .expect("newcomer scope");
    operator_support::create(
        &admin,
        &newcomer_ns,
        &service(
            &newcomer_ns,
            &platform,
            URL,
            "Impostor",
            &["files:read", "files:write"],
        ),
    )
    .await
    .expect("newcomer service");

    let taken = condition_becomes(
        &admin,
        (&newcomer_ns, "MCPService", "files"),
        "CredentialsIssued",
        "False",
    )
    .await;
    assert_eq!(
        (taken.1.as_str(), taken.2),
        (
            "ResourceURLTaken",
            format!(
                "MCPService {victim_ns}/files already protects {URL} with AuthorizationServer {platform}/auth; give this service its own resourceUrl"
            )
        )
    );
    assert_eq!(
        conditions_of(&admin, &newcomer_ns, "MCPService", "files", "Ready").await,
        Some((
            "False".into(),
            "ResourceURLTaken".into(),
            "see CredentialsIssued".into()
        ))
    );
    assert_eq!(
        conditions_of(
            &admin,
            &newcomer_ns,
            "MCPService",
            "files",
            "ScopesResolved"
        )
        .await,
        Some((
            "False".into(),
            "MCPScopeNotFound".into(),
            format!(
                "no MCPScope of namespace {newcomer_ns} or {platform} owns: files:write (owned by MCPScope {victim_ns}/files-write)"
            )
        ))
    );
    let ignored = condition_becomes(
        &admin,
        (&newcomer_ns, "MCPScope", "files-write"),
        "Accepted",
        "False",
    )
    .await;
    assert_eq!(
        (ignored.1.as_str(), ignored.2),
        (
            "ValueTaken",
            format!(
                "MCPScope {victim_ns}/files-write defined files:write first and owns its meaning at AuthorizationServer {platform}/auth; this definition is ignored: choose another value"
            )
        )
    );

    let config = config_after(&admin, &platform, "marker:one").await;
    assert_eq!(
        entries(&config),
        [(URL.to_owned(), "Files".to_owned())],
        "the server's entry for the URL stays the victim's"
    );
    let write = config["scopes"]
        .as_array()
        .expect("scopes")
        .iter()
        .find(|s| s["value"] == "files:write")
        .expect("files:write in the catalogue");
    assert_eq!(
        (&write["description"], &write["sensitive"]),
        (&json!("Change and delete your files"), &json!(true)),
        "the scope keeps its first owner's meaning"
    );
    assert!(
        secret(&admin, &newcomer_ns, "files-mcp-authz-sidecar-credentials")
            .await
            .is_none(),
        "no key for the newcomer"
    );
    assert_eq!(
        conditions_of(&admin, &victim_ns, "MCPService", "files", "Ready")
            .await
            .map(|c| c.0),
        Some("True".into()),
        "the victim keeps working"
    );
    assert_eq!(
        secret(&admin, &victim_ns, "files-mcp-authz-sidecar-credentials")
            .await
            .map(|s| (s.metadata.uid, s.data)),
        Some((victim_key.metadata.uid, victim_key.data))
    );
    eventually("the victim's scope still owns its value", || async {
        conditions_of(&admin, &victim_ns, "MCPScope", "files-write", "Accepted")
            .await
            .filter(|c| c.0 == "True" && c.1 == "OwnsValue")
    })
    .await;

    // Editing the URL would carry an old claim onto someone else's URL: the API server refuses it.
    refused_with_422(
        &admin,
        (&newcomer_ns, "MCPService", "files"),
        json!({"spec": {"resourceUrl": "https://mcp.example.com/elsewhere"}}),
        "resourceUrl is immutable: delete this MCPService and create a new one to move it",
    )
    .await;
    // So is switching servers: a claim parked at another server must not carry its age onto this one.
    refused_with_422(
        &admin,
        (&newcomer_ns, "MCPService", "files"),
        json!({"spec": {"authorizationServerRef": {"name": "elsewhere"}}}),
        "authorizationServerRef is immutable: delete this MCPService and create a new one to move it",
    )
    .await;
    // And a scope's value: an old definition edited to another team's value would arrive holding it.
    refused_with_422(
        &admin,
        (&victim_ns, "MCPScope", "files-write"),
        json!({"spec": {"value": "files:admin"}}),
        "value is immutable: create another MCPScope for another value",
    )
    .await;

    // A namespace the server does not admit: a condition, no key, no entry.
    let outside_url = "https://mcp.example.com/outside";
    operator_support::create(
        &admin,
        &outside_ns,
        &service(
            &outside_ns,
            &platform,
            outside_url,
            "Outside",
            &["files:read"],
        ),
    )
    .await
    .expect("outside service");
    let refused = condition_becomes(
        &admin,
        (&outside_ns, "MCPService", "files"),
        "CredentialsIssued",
        "False",
    )
    .await;
    assert_eq!(
        (refused.1.as_str(), refused.2),
        (
            "NamespaceNotAllowed",
            format!(
                "AuthorizationServer {platform}/auth does not admit services from namespace {outside_ns} (allowedNamespaces from: Selector {TENANT_LABEL}={platform}); a platform admin decides which namespaces may use it"
            )
        )
    );
    assert_eq!(
        conditions_of(&admin, &outside_ns, "MCPService", "files", "Ready").await,
        Some((
            "False".into(),
            "NamespaceNotAllowed".into(),
            "see CredentialsIssued".into()
        ))
    );
    let config = config_after(&admin, &platform, "marker:two").await;
    assert_eq!(entries(&config), [(URL.to_owned(), "Files".to_owned())]);
    assert!(
        secret(&admin, &outside_ns, "files-mcp-authz-sidecar-credentials")
            .await
            .is_none(),
        "no key for a namespace the server does not admit"
    );

    // The platform admin lets the namespace in: the service attaches without any change of its own...
    label_tenant(&admin, &outside_ns, Some(&platform)).await;
    eventually("the admitted service's credentials", || {
        secret(&admin, &outside_ns, "files-mcp-authz-sidecar-credentials")
    })
    .await;
    condition_becomes(
        &admin,
        (&outside_ns, "MCPService", "files"),
        "Ready",
        "True",
    )
    .await;
    // ...and shuts it out again: the key it was given goes with the entry.
    label_tenant(&admin, &outside_ns, None).await;
    eventually("the shut-out service's key is deleted", || async {
        secret(&admin, &outside_ns, "files-mcp-authz-sidecar-credentials")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    // The key goes before the status is written (Events come in between): wait for the status.
    eventually("the shut-out service says why", || async {
        conditions_of(&admin, &outside_ns, "MCPService", "files", "Ready")
            .await
            .filter(|c| c.0 == "False" && c.1 == "NamespaceNotAllowed")
    })
    .await;
    let config = config_after(&admin, &platform, "marker:three").await;
    assert_eq!(entries(&config), [(URL.to_owned(), "Files".to_owned())]);
    running.stop();
}

/// A namespace the server shuts out defines a value before the team that uses it: the definition counts nowhere,
/// the team's own definition owns the value at the server, and the team's service works.
#[tokio::test]
async fn a_namespace_the_server_shuts_out_cannot_squat_a_scope_value() {
    let cluster = ControlPlane::shared();
    let admin = cluster.client();
    operator_support::install_crds(&admin).await;
    let platform = cluster.new_namespace("platform").await.expect("namespace");
    let team_ns = cluster.new_namespace("team").await.expect("namespace");
    let squatter_ns = cluster.new_namespace("squat").await.expect("namespace");
    label_tenant(&admin, &team_ns, Some(&platform)).await;
    let running = operator_and_server(cluster, &admin, &platform, "op-squat").await;

    // First, and from a namespace the server does not admit.
    operator_support::create(
        &admin,
        &squatter_ns,
        &scope(&squatter_ns, "reports", "reports:read", "Squatted", true),
    )
    .await
    .expect("squatter scope");
    // The creation timestamps have one-second resolution: make the squatter's definition the older one.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    operator_support::create(
        &admin,
        &team_ns,
        &scope(
            &team_ns,
            "reports",
            "reports:read",
            "Read your reports",
            false,
        ),
    )
    .await
    .expect("team scope");
    operator_support::create(
        &admin,
        &team_ns,
        &service(&team_ns, &platform, URL, "Reports", &["reports:read"]),
    )
    .await
    .expect("team service");

    condition_becomes(&admin, (&team_ns, "MCPService", "files"), "Ready", "True").await;
    let squatter = eventually(
        "the squatter's scope says why it counts nowhere",
        || async {
            conditions_of(&admin, &squatter_ns, "MCPScope", "reports", "Accepted")
                .await
                .filter(|c| c.0 == "False")
        },
    )
    .await;
    assert_eq!(
        (squatter.1.as_str(), squatter.2),
        (
            "NamespaceNotAdmitted",
            format!(
                "no AuthorizationServer admits namespace {squatter_ns}, so this definition counts nowhere"
            )
        )
    );
    let team = condition_becomes(
        &admin,
        (&team_ns, "MCPScope", "reports"),
        "Accepted",
        "True",
    )
    .await;
    assert_eq!(team.1, "OwnsValue");
    let config = config_after(&admin, &platform, "marker:squat").await;
    let reports: Vec<&Value> = config["scopes"]
        .as_array()
        .expect("scopes")
        .iter()
        .filter(|s| s["value"] == "reports:read")
        .collect();
    assert_eq!(reports.len(), 1, "{config}");
    assert_eq!(reports[0]["description"], "Read your reports");
    assert_ne!(reports[0]["sensitive"], true);

    // The platform admits the squatter's namespace later: its scope's status follows within seconds (it was
    // re-checked only every 5 minutes), and the team, holding the value, keeps it against the older definition.
    label_tenant(&admin, &squatter_ns, Some(&platform)).await;
    let squatter = eventually_within(
        "the admitted squatter's scope says the value is taken",
        SOON,
        || async {
            conditions_of(&admin, &squatter_ns, "MCPScope", "reports", "Accepted")
                .await
                .filter(|c| c.1 == "ValueTaken")
        },
    )
    .await;
    assert_eq!(
        (squatter.0.as_str(), squatter.2),
        (
            "False",
            format!(
                "MCPScope {team_ns}/reports defined reports:read first and owns its meaning at AuthorizationServer {platform}/auth; this definition is ignored: choose another value"
            )
        )
    );
    assert_eq!(
        conditions_of(&admin, &team_ns, "MCPScope", "reports", "Accepted").await,
        Some((
            "True".into(),
            "OwnsValue".into(),
            format!("defines reports:read at AuthorizationServer {platform}/auth")
        ))
    );
    assert_eq!(
        owns_at(&admin, &team_ns, "reports").await,
        [format!("{platform}/auth")]
    );
    assert!(owns_at(&admin, &squatter_ns, "reports").await.is_empty());
    running.stop();
}

/// How long a status may take to follow a change it depends on: well under the 5-minute resync, so only a
/// watch gets there in time.
const SOON: std::time::Duration = std::time::Duration::from_secs(30);

/// `status.ownsAt` of MCPScope `namespace/name`.
async fn owns_at(admin: &kube::Client, namespace: &str, name: &str) -> Vec<String> {
    let scope = get_json(admin, namespace, V1, "MCPScope", name)
        .await
        .expect("the MCPScope exists");
    serde_json::from_value(scope["status"]["ownsAt"].clone()).unwrap_or_default()
}

/// An AuthorizationServer `auth` in `platform` admitting the namespaces named `admitted`.
fn server_admitting(platform: &str, admitted: &[&str]) -> Value {
    let mut server = cases::authorization_server();
    server["metadata"]["namespace"] = json!(platform);
    server["spec"]["allowedNamespaces"] = json!({"from": "Selector", "selector": {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": admitted}]}});
    server
}

/// F1: holding a scope value is per server. A namespace admitted only by server `p2` defines `files:read` early;
/// a team at server `p1` defines it later and works. When `p1` admits the early namespace too, the early
/// definition (holding at `p2`, older) must not take `files:read` at `p1` from the team; each status says
/// where it holds and where it is taken.
#[tokio::test]
async fn a_scope_holding_at_one_server_does_not_take_the_value_at_another() {
    let cluster = ControlPlane::shared();
    let admin = cluster.client();
    operator_support::install_crds(&admin).await;
    let p1 = cluster.new_namespace("p1").await.expect("namespace");
    let p2 = cluster.new_namespace("p2").await.expect("namespace");
    let early_ns = cluster.new_namespace("early").await.expect("namespace");
    let team_ns = cluster.new_namespace("team").await.expect("namespace");
    let running = operator_and_server(cluster, &admin, &p1, "op-per-server").await;
    // p1's server (made by the helper) admits namespaces labelled for it: the team only, for now.
    label_tenant(&admin, &team_ns, Some(&p1)).await;
    operator_support::create(&admin, &p2, &server_admitting(&p2, &[&early_ns]))
        .await
        .expect("p2's server");

    operator_support::create(
        &admin,
        &early_ns,
        &scope(&early_ns, "read", "files:read", "Early meaning", true),
    )
    .await
    .expect("early scope");
    eventually("the early scope holds at p2", || async {
        (owns_at(&admin, &early_ns, "read").await == [format!("{p2}/auth")]).then_some(())
    })
    .await;
    // creationTimestamp has one-second resolution: make the team's definition visibly younger.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    operator_support::create(
        &admin,
        &team_ns,
        &scope(
            &team_ns,
            "read",
            "files:read",
            "Read the team's files",
            false,
        ),
    )
    .await
    .expect("team scope");
    operator_support::create(
        &admin,
        &team_ns,
        &service(&team_ns, &p1, URL, "Files", &["files:read"]),
    )
    .await
    .expect("team service");
    condition_becomes(&admin, (&team_ns, "MCPService", "files"), "Ready", "True").await;
    eventually("the team's scope holds at p1", || async {
        (owns_at(&admin, &team_ns, "read").await == [format!("{p1}/auth")]).then_some(())
    })
    .await;

    // The platform admits the early namespace at p1 as well.
    label_tenant(&admin, &early_ns, Some(&p1)).await;
    let early = eventually_within("the early scope says where it is taken", SOON, || async {
        conditions_of(&admin, &early_ns, "MCPScope", "read", "Accepted")
            .await
            .filter(|c| c.1 == "TakenAtSomeServers")
    })
    .await;
    assert_eq!(
        (early.0.as_str(), early.2),
        (
            "True",
            format!(
                "defines files:read at AuthorizationServer {p2}/auth; MCPScope {team_ns}/read defined files:read first and owns its meaning at AuthorizationServer {p1}/auth, where this definition is ignored"
            )
        )
    );
    assert_eq!(
        owns_at(&admin, &early_ns, "read").await,
        [format!("{p2}/auth")]
    );
    assert_eq!(
        conditions_of(&admin, &team_ns, "MCPScope", "read", "Accepted").await,
        Some((
            "True".into(),
            "OwnsValue".into(),
            format!("defines files:read at AuthorizationServer {p1}/auth")
        ))
    );
    assert_eq!(
        owns_at(&admin, &team_ns, "read").await,
        [format!("{p1}/auth")]
    );
    let config = config_after(&admin, &p1, "marker:per-server").await;
    let read: Vec<&Value> = config["scopes"]
        .as_array()
        .expect("scopes")
        .iter()
        .filter(|s| s["value"] == "files:read")
        .collect();
    assert_eq!(read.len(), 1, "{config}");
    assert_eq!(
        read[0]["description"], "Read the team's files",
        "p1 keeps the team's meaning"
    );
    assert_ne!(read[0]["sensitive"], true, "{config}");
    assert_eq!(
        conditions_of(&admin, &team_ns, "MCPService", "files", "ScopesResolved")
            .await
            .map(|c| (c.0, c.1)),
        Some(("True".into(), "AllScopesFound".into())),
        "the team's service still sees its scope"
    );
    running.stop();
}

/// A later claim of a held resource URL waits; when the holder is deleted it takes the URL within seconds, and
/// the holder created again (a new object, so the younger claim) waits in turn: the oldest live claim wins.
#[tokio::test]
async fn a_waiting_claim_takes_the_url_when_the_holder_goes_and_keeps_it() {
    let cluster = ControlPlane::shared();
    let admin = cluster.client();
    operator_support::install_crds(&admin).await;
    let platform = cluster.new_namespace("platform").await.expect("namespace");
    let first_ns = cluster.new_namespace("first").await.expect("namespace");
    let second_ns = cluster.new_namespace("second").await.expect("namespace");
    label_tenant(&admin, &first_ns, Some(&platform)).await;
    label_tenant(&admin, &second_ns, Some(&platform)).await;
    let running = operator_and_server(cluster, &admin, &platform, "op-waiting").await;
    let url = "https://mcp.example.com/shared";
    let ready = |ns: String| {
        let admin = admin.clone();
        async move {
            conditions_of(&admin, &ns, "MCPService", "files", "Ready")
                .await
                .filter(|c| c.0 == "True")
        }
    };
    let credentials = |ns: String| {
        let admin = admin.clone();
        async move { conditions_of(&admin, &ns, "MCPService", "files", "CredentialsIssued").await }
    };
    let waiting_behind = |holder: &str| {
        (
            "False".to_owned(),
            "ResourceURLTaken".to_owned(),
            format!(
                "MCPService {holder}/files already protects {url} with AuthorizationServer {platform}/auth; give this service its own resourceUrl"
            ),
        )
    };

    let first = service(&first_ns, &platform, url, "First", &[]);
    operator_support::create(&admin, &first_ns, &first)
        .await
        .expect("first service");
    eventually("the first service is Ready", || ready(first_ns.clone())).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    operator_support::create(
        &admin,
        &second_ns,
        &service(&second_ns, &platform, url, "Second", &[]),
    )
    .await
    .expect("second service");
    let waiting = eventually("the second service waits", || async {
        credentials(second_ns.clone())
            .await
            .filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(waiting, waiting_behind(&first_ns));

    // The holder goes: the waiting claim takes the URL, its key and the server's entry.
    delete_service(&admin, &first_ns, "delete the holder").await;
    eventually_within("the waiting service takes the URL", SOON, || {
        ready(second_ns.clone())
    })
    .await;
    assert_eq!(
        credentials(second_ns.clone()).await.map(|c| (c.0, c.1)),
        Some(("True".into(), "KeyIssued".into()))
    );
    eventually("the second service's key", || {
        secret(&admin, &second_ns, "files-mcp-authz-sidecar-credentials")
    })
    .await;
    let config = config_after(&admin, &platform, "marker:waiting-one").await;
    assert_eq!(entries(&config), [(url.to_owned(), "Second".to_owned())]);

    // The old holder comes back, as a new object: it is now the younger claim and waits.
    eventually("the old holder is gone", || async {
        get_json(&admin, &first_ns, V1, "MCPService", "files")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    operator_support::create(&admin, &first_ns, &first)
        .await
        .expect("the first service again");
    let waiting = eventually("the re-created service waits", || async {
        credentials(first_ns.clone())
            .await
            .filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(waiting, waiting_behind(&second_ns));
    let config = config_after(&admin, &platform, "marker:waiting-two").await;
    assert_eq!(entries(&config), [(url.to_owned(), "Second".to_owned())]);
    // The old holder's Secret named the deleted object (its key was bound to that object's uid): the garbage
    // collector takes it, and the re-created service gets none.
    eventually("no key in the re-created service's namespace", || async {
        secret(&admin, &first_ns, "files-mcp-authz-sidecar-credentials")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    assert_eq!(
        conditions_of(&admin, &second_ns, "MCPService", "files", "Ready")
            .await
            .map(|c| c.0),
        Some("True".into()),
        "the second service keeps working"
    );

    // Age cannot tell a squatter from the owner; the platform admin can. Once the server grants the URL to the
    // first namespace, the claim from the second loses it, holding or not, and its key goes with it.
    Api::<kube::api::DynamicObject>::namespaced_with(
        admin.clone(),
        &platform,
        &operator_support::resource("AuthorizationServer"),
    )
    .patch(
        "auth",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"resourceUrls": [{
            "prefix": url,
            "namespaces": {"from": "Selector", "selector": {"matchLabels": {"kubernetes.io/metadata.name": first_ns}}}
        }]}})),
    )
    .await
    .expect("grant the URL to the first namespace");
    eventually_within("the granted service takes the URL", SOON, || {
        ready(first_ns.clone())
    })
    .await;
    let refused = eventually("the second service loses the URL", || async {
        credentials(second_ns.clone())
            .await
            .filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(
        refused,
        (
            "False".to_owned(),
            "ResourceURLNotGranted".to_owned(),
            format!(
                "AuthorizationServer {platform}/auth does not let namespace {second_ns} protect {url}: its resourceUrls grant {url} to other namespaces; a platform admin decides which namespaces may use which URLs"
            ),
        )
    );
    eventually("no key left in the second namespace", || async {
        secret(&admin, &second_ns, "files-mcp-authz-sidecar-credentials")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    let config = config_after(&admin, &platform, "marker:waiting-three").await;
    assert_eq!(entries(&config), [(url.to_owned(), "First".to_owned())]);
    running.stop();
}

/// A restarted operator decides from caches filled before its first reconcile: read from an empty cache, a
/// newcomer claiming a held URL would look like its only claimant and get the holder's key.
#[tokio::test]
async fn a_restarted_operator_keeps_the_oldest_claim() {
    let cluster = ControlPlane::shared();
    let admin = cluster.client();
    operator_support::install_crds(&admin).await;
    let platform = cluster.new_namespace("platform").await.expect("namespace");
    let holder_ns = cluster.new_namespace("holder").await.expect("namespace");
    let newcomer_ns = cluster.new_namespace("newcomer").await.expect("namespace");
    label_tenant(&admin, &holder_ns, Some(&platform)).await;
    label_tenant(&admin, &newcomer_ns, Some(&platform)).await;
    let url = "https://mcp.example.com/restart";
    let running = operator_and_server(cluster, &admin, &platform, "op-restart-1").await;
    operator_support::create(
        &admin,
        &holder_ns,
        &service(&holder_ns, &platform, url, "Holder", &[]),
    )
    .await
    .expect("holder");
    condition_becomes(&admin, (&holder_ns, "MCPService", "files"), "Ready", "True").await;
    running.stop();

    // While no operator runs, a newcomer claims the same URL; then the operator comes back.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    operator_support::create(
        &admin,
        &newcomer_ns,
        &service(&newcomer_ns, &platform, url, "Newcomer", &[]),
    )
    .await
    .expect("newcomer");
    let configuration = format!("mcp-authz-webhook-{platform}");
    // A fresh client (its own ServiceAccount under the same rules): nothing carries over but the cluster.
    let operator = operator_support::operator_client(
        cluster,
        &platform,
        "mcp-authz-operator-again",
        &configuration,
    )
    .await;
    let running = mcp_authz_operator::runtime::start(
        operator_support::operator_args(&platform, "op-restart-2", &configuration),
        operator,
    )
    .await
    .expect("operator starts again");
    let refused = condition_becomes(
        &admin,
        (&newcomer_ns, "MCPService", "files"),
        "CredentialsIssued",
        "False",
    )
    .await;
    assert_eq!(
        refused,
        (
            "False".to_owned(),
            "ResourceURLTaken".to_owned(),
            format!(
                "MCPService {holder_ns}/files already protects {url} with AuthorizationServer {platform}/auth; give this service its own resourceUrl"
            ),
        )
    );
    assert!(
        secret(&admin, &newcomer_ns, "files-mcp-authz-sidecar-credentials")
            .await
            .is_none(),
        "the newcomer never got a key"
    );
    let config = config_after(&admin, &platform, "marker:restart").await;
    assert_eq!(entries(&config), [(url.to_owned(), "Holder".to_owned())]);
    assert_eq!(
        conditions_of(&admin, &holder_ns, "MCPService", "files", "Ready")
            .await
            .map(|c| c.0),
        Some("True".into()),
        "the holder keeps working"
    );
    running.stop();
}

/// A token-exchange edge to an API (`audience`) reserves the API's URL at the server: a tenant claiming it, however
/// spelled, would be issued ordinary tokens for it by the people consenting to its service, and the API would take
/// them for its own. An edge to another service (`to`) follows that service while it holds its URL.
#[tokio::test]
async fn no_tenant_holds_the_url_of_an_api_tokens_are_exchanged_for() {
    let cluster = ControlPlane::shared();
    let admin = cluster.client();
    operator_support::install_crds(&admin).await;
    let platform = cluster.new_namespace("platform").await.expect("namespace");
    let notes_ns = cluster.new_namespace("notes").await.expect("namespace");
    let reports_ns = cluster.new_namespace("reports").await.expect("namespace");
    let squat_ns = cluster.new_namespace("squat").await.expect("namespace");
    for ns in [&notes_ns, &reports_ns, &squat_ns] {
        label_tenant(&admin, ns, Some(&platform)).await;
    }
    let running = operator_and_server(cluster, &admin, &platform, "op-exchange").await;
    operator_support::create(
        &admin,
        &platform,
        &scope(&platform, "files-read", "files:read", "Read files", false),
    )
    .await
    .expect("scope");
    let api = "https://inventory.example.com/api";
    let (notes_url, reports_url) = (
        "https://mcp.example.com/notes",
        "https://mcp.example.com/reports",
    );
    Api::<kube::api::DynamicObject>::namespaced_with(
        admin.clone(),
        &platform,
        &operator_support::resource("AuthorizationServer"),
    )
    .patch(
        "auth",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"tokenExchange": [
            {"from": {"name": "files", "namespace": notes_ns}, "audience": api,
             "scopes": ["files:read"], "header": "x-inventory"},
            {"from": {"name": "files", "namespace": notes_ns}, "to": {"name": "files", "namespace": reports_ns},
             "scopes": ["files:read"], "header": "x-reports"},
        ]}})),
    )
    .await
    .expect("declare the edges");
    for (ns, url) in [(&notes_ns, notes_url), (&reports_ns, reports_url)] {
        operator_support::create(
            &admin,
            ns,
            &service(ns, &platform, url, ns, &["files:read"]),
        )
        .await
        .expect("service");
    }
    let squatted = "https://INVENTORY.example.com:443/api/";
    operator_support::create(
        &admin,
        &squat_ns,
        &service(&squat_ns, &platform, squatted, "Inventory", &["files:read"]),
    )
    .await
    .expect("the squatter's service");

    let refused = condition_becomes(
        &admin,
        (&squat_ns, "MCPService", "files"),
        "CredentialsIssued",
        "False",
    )
    .await;
    assert_eq!(
        refused,
        (
            "False".to_owned(),
            "ResourceURLNotGranted".to_owned(),
            format!(
                "AuthorizationServer {platform}/auth does not let namespace {squat_ns} protect {squatted}: its tokenExchange[0] names this URL as the audience of an API that is no MCPService; a platform admin decides which namespaces may use which URLs"
            ),
        )
    );
    assert_eq!(
        condition_becomes(&admin, (&squat_ns, "MCPService", "files"), "Ready", "False")
            .await
            .1,
        "ResourceURLNotGranted"
    );
    for ns in [&notes_ns, &reports_ns] {
        condition_becomes(&admin, (ns, "MCPService", "files"), "Ready", "True").await;
    }
    let config = config_after(&admin, &platform, "marker:exchange").await;
    let mut resources = entries(&config);
    resources.sort();
    assert_eq!(
        resources,
        [
            (notes_url.to_owned(), notes_ns.clone()),
            (reports_url.to_owned(), reports_ns.clone()),
        ],
        "the squatter is not in the server's config"
    );
    let audiences: Vec<&str> = config["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["resource"] == notes_url)
        .and_then(|r| r["tokenExchange"].as_array())
        .expect("the notes service's edges")
        .iter()
        .filter_map(|t| t["audience"].as_str())
        .collect();
    assert_eq!(audiences, [api, reports_url]);
    assert!(
        secret(&admin, &squat_ns, "files-mcp-authz-sidecar-credentials")
            .await
            .is_none(),
        "no key for the squatter"
    );
    // The platform sees the claim: a squatter, or a chain written before `to` existed.
    let claimed = condition_becomes(
        &admin,
        (&platform, "AuthorizationServer", "auth"),
        "TokenExchangeResolved",
        "False",
    )
    .await;
    assert_eq!(
        (claimed.1.as_str(), claimed.2),
        (
            "AudienceClaimed",
            format!(
                "tokenExchange[0]: its audience is the resourceUrl of MCPService {squat_ns}/files; such a service is refused while the edge names its URL as an API's (a chain to it names it with to)"
            )
        )
    );
    delete_service(&admin, &squat_ns, "delete the squatter").await;
    assert_eq!(
        condition_becomes(
            &admin,
            (&platform, "AuthorizationServer", "auth"),
            "TokenExchangeResolved",
            "True"
        )
        .await
        .2,
        "2 token-exchange edge(s) in force"
    );

    // The called service goes: the edge to it is left out of the server and of the caller's sidecar.
    delete_service(&admin, &reports_ns, "delete the called service").await;
    let left_out = condition_becomes(
        &admin,
        (&platform, "AuthorizationServer", "auth"),
        "TokenExchangeResolved",
        "False",
    )
    .await;
    assert_eq!(
        left_out.2,
        format!(
            "1 of 2 token-exchange edge(s) left out: tokenExchange[1]: MCPService {reports_ns}/files does not exist"
        )
    );
    eventually_within("the caller's sidecar drops the edge", SOON, || async {
        let cm = get_json(
            &admin,
            &notes_ns,
            "v1",
            "ConfigMap",
            "files-mcp-authz-sidecar",
        )
        .await?;
        let text = cm["data"]["sidecar.yaml"].as_str()?;
        let config: Value = serde_saphyr::from_str(text).expect("sidecar YAML");
        let targets: Vec<String> = config["downstreamTokens"]["targets"]
            .as_array()?
            .iter()
            .filter_map(|t| t["audience"].as_str().map(str::to_owned))
            .collect();
        (targets == [api]).then_some(())
    })
    .await;
    running.stop();
}

/// A namespace that fills its share of the server's config (`configBytesPerNamespace`) loses its newest service
/// from the config, which says why and gets no key; its older service and another namespace's keep theirs.
#[tokio::test]
async fn a_namespace_past_its_share_of_the_config_loses_its_newest_service_and_no_one_else_does() {
    let cluster = ControlPlane::shared();
    let admin = cluster.client();
    operator_support::install_crds(&admin).await;
    let platform = cluster.new_namespace("platform").await.expect("namespace");
    let modest_ns = cluster.new_namespace("modest").await.expect("namespace");
    let greedy_ns = cluster.new_namespace("greedy").await.expect("namespace");
    label_tenant(&admin, &modest_ns, Some(&platform)).await;
    label_tenant(&admin, &greedy_ns, Some(&platform)).await;
    let running = operator_and_server(cluster, &admin, &platform, "op-budget").await;
    Api::<kube::api::DynamicObject>::namespaced_with(
        admin.clone(),
        &platform,
        &operator_support::resource("AuthorizationServer"),
    )
    .patch(
        "auth",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"configBytesPerNamespace": 4096}})),
    )
    .await
    .expect("a small share");

    let named = |namespace: &str, name: &str, url: &str, scopes: &[&str]| {
        let mut s = service(namespace, &platform, url, name, scopes);
        s["metadata"]["name"] = json!(name);
        s
    };
    operator_support::create(&admin, &modest_ns, &named(&modest_ns, "files", URL, &[]))
        .await
        .expect("modest service");
    // Five definitions of the greedy namespace's own, 512-character descriptions: four of them, offered by its
    // first service, take most of its 4 KiB; the fifth, offered by its second service, does not fit beside them.
    let values: Vec<String> = (0..5).map(|i| format!("{greedy_ns}:s{i}")).collect();
    for (i, value) in values.iter().enumerate() {
        operator_support::create(
            &admin,
            &greedy_ns,
            &scope(&greedy_ns, &format!("s{i}"), value, &"d".repeat(512), false),
        )
        .await
        .expect("greedy scope");
    }
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    operator_support::create(
        &admin,
        &greedy_ns,
        &named(
            &greedy_ns,
            "first",
            "https://mcp.example.com/greedy/first",
            &values[..4],
        ),
    )
    .await
    .expect("greedy first");
    condition_becomes(
        &admin,
        (&greedy_ns, "MCPService", "first"),
        "CredentialsIssued",
        "True",
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    operator_support::create(
        &admin,
        &greedy_ns,
        &named(
            &greedy_ns,
            "second",
            "https://mcp.example.com/greedy/second",
            &values[4..],
        ),
    )
    .await
    .expect("greedy second");

    let (status, reason, message) = condition_becomes(
        &admin,
        (&greedy_ns, "MCPService", "second"),
        "CredentialsIssued",
        "False",
    )
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ConfigBudgetExceeded")
    );
    let prefix = format!("the services of namespace {greedy_ns} need ");
    let suffix = format!(
        " bytes of AuthorizationServer {platform}/auth's config with this one, past the 4096 each namespace may fill (spec.configBytesPerNamespace); the newest are left out; remove services or scopes of this namespace, or ask a platform admin for a larger share"
    );
    assert!(
        message.starts_with(&prefix) && message.ends_with(&suffix),
        "{message}"
    );
    let ready = condition_becomes(
        &admin,
        (&greedy_ns, "MCPService", "second"),
        "Ready",
        "False",
    )
    .await;
    assert_eq!(ready.1, "ConfigBudgetExceeded");
    assert!(
        secret(&admin, &greedy_ns, "second-mcp-authz-sidecar-credentials")
            .await
            .is_none()
    );
    // The config holds the modest namespace's service and the greedy one's first, not its second.
    let config = config_after(&admin, &platform, "marker:budget").await;
    let held: Vec<String> = entries(&config).into_iter().map(|(url, _)| url).collect();
    assert_eq!(
        held,
        [
            "https://mcp.example.com/greedy/first".to_owned(),
            URL.to_owned()
        ]
    );
    for (namespace, name) in [(&modest_ns, "files"), (&greedy_ns, "first")] {
        let (status, ..) =
            conditions_of(&admin, namespace, "MCPService", name, "CredentialsIssued")
                .await
                .expect("CredentialsIssued");
        assert_eq!(status, "True", "{namespace}/{name}");
    }
    running.stop();
}
