//! Helpers of the control plane tests: creating objects from JSON, a throwaway Helm chart, a test webhook.
#![allow(dead_code)] // each test binary uses a different part

pub mod webhook;

use std::path::{Path, PathBuf};

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};

/// Creates a cluster-scoped or namespaced object given as JSON (namespace from its metadata).
pub async fn create_json(
    client: &kube::Client,
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    object: &serde_json::Value,
) -> DynamicObject {
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    let object: DynamicObject = serde_json::from_value(object.clone()).expect("a valid object");
    let api = match object.metadata.namespace.as_deref() {
        Some(namespace) => {
            Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource)
        }
        None => Api::<DynamicObject>::all_with(client.clone(), &resource),
    };
    api.create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|error| panic!("create {kind}: {error}"))
}

/// Writes a chart `throwaway` with one ConfigMap `<release>-greeting` into `dir`; returns the chart directory.
pub fn write_throwaway_chart(dir: &Path) -> PathBuf {
    let chart = dir.join("throwaway");
    std::fs::create_dir_all(chart.join("templates")).unwrap();
    std::fs::write(
        chart.join("Chart.yaml"),
        "apiVersion: v2\nname: throwaway\ndescription: A chart that only a test installs\nversion: 0.1.0\nkubeVersion: \">=1.30.0-0\"\n",
    )
    .unwrap();
    std::fs::write(chart.join("values.yaml"), "greeting: hello\n").unwrap();
    std::fs::write(
        chart.join("templates/configmap.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-greeting\ndata:\n  \
         greeting: {{ .Values.greeting | quote }}\n  kubeVersion: {{ .Capabilities.KubeVersion.Version | quote }}\n",
    )
    .unwrap();
    chart
}
