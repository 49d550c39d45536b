//! The README's table of every resource field is generated from `crds/`; this test regenerates it and fails
//! when the README is stale (`MCP_AUTHZ_WRITE_README=1 cargo test -p mcp-authz-tests --test readme_fields`
//! rewrites it).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

const BEGIN: &str = "<!-- fields:begin (generated from crds/ by tests/tests/readme_fields.rs; MCP_AUTHZ_WRITE_README=1 rewrites it) -->";
const END: &str = "<!-- fields:end -->";
/// In the order a reader meets them.
const CRDS: [&str; 5] = [
    "authorizationservers",
    "mcpservices",
    "mcpscopes",
    "cimdpolicies",
    "mcpclients",
];
/// How deep nested fields are listed; below that, `kubectl explain` has the rest.
const DEPTH: usize = 2;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The first sentence of a description: up to a period that ends a word and starts a capitalised one, so
/// "e.g. `720h`" stays whole.
fn first_sentence(text: &str) -> String {
    let flat = text.replace('\n', " ").replace('|', "\\|");
    let chars: Vec<char> = flat.chars().collect();
    let mut end = chars.len();
    for i in 1..chars.len().saturating_sub(2) {
        let before = chars[i - 1];
        if chars[i] == '.'
            && chars[i + 1] == ' '
            && chars[i + 2].is_ascii_uppercase()
            && (before.is_ascii_lowercase()
                || before.is_ascii_digit()
                || before == ')'
                || before == '`')
        {
            end = i;
            break;
        }
    }
    let sentence: String = chars[..end].iter().collect();
    format!("{}.", sentence.trim_end_matches('.'))
}

fn default_text(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(s)) => format!("`{s}`"),
        Some(Value::Number(n)) => format!("`{n}`"),
        Some(Value::Bool(b)) => format!("`{b}`"),
        _ => String::new(),
    }
}

fn rows(
    out: &mut String,
    props: &Map<String, Value>,
    prefix: &str,
    required: &[Value],
    depth: usize,
) {
    for (name, field) in props {
        let mark = if required.iter().any(|r| r == name) {
            " (required)"
        } else {
            ""
        };
        let description = first_sentence(field["description"].as_str().unwrap_or(""));
        let default = default_text(field.get("default"));
        writeln!(
            out,
            "| `{prefix}{name}`{mark} | {default} | {description} |"
        )
        .expect("write to String");
        if depth >= DEPTH {
            continue;
        }
        let empty = Vec::new();
        if field["type"] == "object"
            && name != "resources"
            && let Some(inner) = field["properties"].as_object()
        {
            let required = field["required"].as_array().unwrap_or(&empty);
            rows(out, inner, &format!("{prefix}{name}."), required, depth + 1);
        }
        if field["type"] == "array"
            && let Some(inner) = field["items"]["properties"].as_object()
        {
            let required = field["items"]["required"].as_array().unwrap_or(&empty);
            rows(
                out,
                inner,
                &format!("{prefix}{name}[]."),
                required,
                depth + 1,
            );
        }
    }
}

fn generated() -> String {
    let mut out = String::new();
    for plural in CRDS {
        let path = repo().join(format!("crds/mcp-authz.io_{plural}.yaml"));
        let crd: Value =
            serde_saphyr::from_str(&std::fs::read_to_string(&path).expect("generated CRD"))
                .expect("YAML");
        let names = &crd["spec"]["names"];
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let kind = names["kind"].as_str().expect("kind");
        let singular = names["singular"].as_str().expect("singular");
        write!(
            out,
            "\n#### `{kind}` (`kubectl explain {singular}.spec`)\n\n| field | default | what it means |\n|---|---|---|\n"
        )
        .expect("write to String");
        let empty = Vec::new();
        let required = spec["required"].as_array().unwrap_or(&empty);
        rows(
            &mut out,
            spec["properties"].as_object().expect("spec properties"),
            "",
            required,
            0,
        );
    }
    out
}

#[test]
fn readme_lists_every_resource_field_as_the_crds_define_it() {
    let path = repo().join("README.md");
    let readme = std::fs::read_to_string(&path).expect("README.md");
    let start = readme
        .find(BEGIN)
        .expect("README has the fields:begin marker")
        + BEGIN.len();
    let end = readme.find(END).expect("README has the fields:end marker");
    let table = generated();
    assert!(
        table.matches("\n| `").count() > 60,
        "every CRD contributes its fields"
    );
    if readme[start..end] == table {
        return;
    }
    if std::env::var_os("MCP_AUTHZ_WRITE_README").is_some() {
        std::fs::write(
            &path,
            format!("{}{table}{}", &readme[..start], &readme[end..]),
        )
        .expect("write README");
        return;
    }
    panic!(
        "README.md's field table is stale: run MCP_AUTHZ_WRITE_README=1 cargo test -p mcp-authz-tests --test readme_fields"
    );
}
