//! Guards on every field: each root field refuses a caller without its permission, and the public and self-service lists are exact.

use serde_json::{Value, json};

use crate::helpers::{TestApp, first_error_code};
use crate::identity::*;

/// Renders an introspected type reference as GraphQL type syntax.
fn type_syntax(t: &Value) -> String {
    match t["kind"].as_str() {
        Some("NON_NULL") => format!("{}!", type_syntax(&t["ofType"])),
        Some("LIST") => format!("[{}]", type_syntax(&t["ofType"])),
        _ => t["name"].as_str().expect("named").to_owned(),
    }
}

/// A valid dummy value for an input type (guards run before the resolver looks at it).
fn dummy(t: &Value, types: &[Value]) -> Value {
    match t["kind"].as_str() {
        Some("NON_NULL") => dummy(&t["ofType"], types),
        Some("LIST") => json!([dummy(&t["ofType"], types)]),
        _ => {
            let name = t["name"].as_str().expect("named");
            let def = types
                .iter()
                .find(|d| d["name"] == name)
                .expect("type defined");
            match def["kind"].as_str() {
                Some("ENUM") => def["enumValues"][0]["name"].clone(),
                Some("INPUT_OBJECT") => {
                    let mut obj = serde_json::Map::new();
                    for f in def["inputFields"].as_array().expect("fields") {
                        obj.insert(
                            f["name"].as_str().expect("name").to_owned(),
                            dummy(&f["type"], types),
                        );
                    }
                    Value::Object(obj)
                }
                _ => match name {
                    "Int" => json!(1),
                    "Float" => json!(1.0),
                    "Boolean" => json!(true),
                    "DateTime" => json!("2030-01-01T00:00:00Z"),
                    _ => json!("x"),
                },
            }
        }
    }
}

fn named(t: &Value) -> &Value {
    if t["ofType"].is_null() {
        t
    } else {
        named(&t["ofType"])
    }
}

const TYPE_REF: &str = "kind name ofType { kind name ofType { kind name ofType { kind name } } }";

/// Every root query and mutation field as a callable operation with dummy arguments:
/// (field name, document, variables).
async fn root_field_calls(app: &TestApp) -> Vec<(String, String, Value)> {
    field_calls(app, false).await
}

/// Like [`root_field_calls`] for the subscription root.
async fn field_calls(app: &TestApp, subscriptions: bool) -> Vec<(String, String, Value)> {
    let intro = app
        .gql(
            &format!(
                "{{ __schema {{ types {{ name kind enumValues {{ name }} inputFields {{ name type {{ {TYPE_REF} }} }} }}
                   queryType {{ fields {{ name args {{ name type {{ {TYPE_REF} }} }} type {{ {TYPE_REF} }} }} }}
                   mutationType {{ fields {{ name args {{ name type {{ {TYPE_REF} }} }} type {{ {TYPE_REF} }} }} }}
                   subscriptionType {{ fields {{ name args {{ name type {{ {TYPE_REF} }} }} type {{ {TYPE_REF} }} }} }} }} }}"
            ),
            json!({}),
        )
        .await;
    let schema = &intro["data"]["__schema"];
    let types = schema["types"].as_array().expect("types").clone();
    let mut calls = Vec::new();
    let roots: Vec<(&str, &Value)> = if subscriptions {
        vec![("subscription", &schema["subscriptionType"])]
    } else {
        vec![
            ("query", &schema["queryType"]),
            ("mutation", &schema["mutationType"]),
        ]
    };
    for (op, root) in roots {
        for f in root["fields"].as_array().expect("fields") {
            let name = f["name"].as_str().expect("name");
            let args = f["args"].as_array().expect("args");
            let decl: Vec<String> = args
                .iter()
                .map(|a| {
                    format!(
                        "${}: {}",
                        a["name"].as_str().expect("n"),
                        type_syntax(&a["type"])
                    )
                })
                .collect();
            let pass: Vec<String> = args
                .iter()
                .map(|a| format!("{0}: ${0}", a["name"].as_str().expect("n")))
                .collect();
            let mut vars = serde_json::Map::new();
            for a in args {
                vars.insert(
                    a["name"].as_str().expect("n").to_owned(),
                    dummy(&a["type"], &types),
                );
            }
            let ret = named(&f["type"]);
            let ret_kind = types
                .iter()
                .find(|t| t["name"] == ret["name"])
                .map(|t| t["kind"].as_str().unwrap_or_default().to_owned())
                .unwrap_or_default();
            let selection = if matches!(ret_kind.as_str(), "OBJECT" | "INTERFACE" | "UNION") {
                " { __typename }"
            } else {
                ""
            };
            let q = format!(
                "{op}{} {{ {name}{}{selection} }}",
                if decl.is_empty() {
                    String::new()
                } else {
                    format!("({})", decl.join(", "))
                },
                if pass.is_empty() {
                    String::new()
                } else {
                    format!("({})", pass.join(", "))
                },
            );
            calls.push((name.to_owned(), q, Value::Object(vars)));
        }
    }
    calls
}

/// An API key of `owner`'s tenant whose custom role holds no permission.
async fn powerless_key(app: &TestApp, owner: &str) -> String {
    let role = app
        .gql_as(
            owner,
            "mutation { createRole(input: {name: \"nothing\", permissions: []}) { role { id } } }",
            json!({}),
        )
        .await;
    let role_id = role["data"]["createRole"]["role"]["id"].clone();
    app.gql_as(
        owner,
        CREATE_KEY,
        json!({ "i": { "name": "nothing", "roleId": role_id } }),
    )
    .await["data"]["createApiKey"]["secret"]
        .as_str()
        .expect("secret")
        .to_owned()
}

/// Walks every root field and proves it is guarded: without credentials it is
/// UNAUTHENTICATED, and with a principal holding no permission it is FORBIDDEN naming the
/// permission — unless it is listed public (or, for self-service fields, only needs a
/// signed-in caller).
#[tokio::test(flavor = "multi_thread")]
async fn every_root_field_declares_a_guard() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let nothing = powerless_key(&app, &owner).await;
    let mut checked = 0;
    for (name, q, vars) in root_field_calls(&app).await {
        if agentplane::rbac::PUBLIC_FIELDS.contains(&name.as_str()) {
            continue;
        }
        let anon = app.gql(&q, vars.clone()).await;
        assert_eq!(
            first_error_code(&anon).as_deref(),
            Some("UNAUTHENTICATED"),
            "{name} without credentials: {anon}"
        );
        if !agentplane::rbac::SELF_FIELDS.contains(&name.as_str()) {
            let out = app.gql_as(&nothing, &q, vars).await;
            assert_eq!(
                first_error_code(&out).as_deref(),
                Some("FORBIDDEN"),
                "{name} without permission: {out}"
            );
            assert!(
                out["errors"][0]["extensions"]["permission"].is_string(),
                "{name}: {out}"
            );
        }
        checked += 1;
    }
    assert!(checked > 25, "walked {checked} fields");
}

/// Each built-in role calls every guarded root field through the API and is refused
/// exactly when the permission matrix says so.
#[tokio::test(flavor = "multi_thread")]
async fn every_role_gets_what_the_matrix_says_on_every_field() {
    use agentplane::rbac::{BuiltinRole, Permission};
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let nothing = powerless_key(&app, &owner).await;
    let calls = root_field_calls(&app).await;
    // Learn each field's required permission from the refusal of a powerless caller.
    let mut required = Vec::new();
    for (name, q, vars) in &calls {
        if agentplane::rbac::PUBLIC_FIELDS.contains(&name.as_str())
            || agentplane::rbac::SELF_FIELDS.contains(&name.as_str())
        {
            continue;
        }
        let out = app.gql_as(&nothing, q, vars.clone()).await;
        let perm = out["errors"][0]["extensions"]["permission"]
            .as_str()
            .expect("permission named");
        required.push((
            name.clone(),
            q.clone(),
            vars.clone(),
            Permission::parse(perm).expect("known"),
        ));
    }
    let mut principals: Vec<(BuiltinRole, String)> = Vec::new();
    for role in BuiltinRole::TENANT_ROLES {
        let key = app
            .gql_as(
                &owner,
                CREATE_KEY,
                json!({ "i": { "name": role.as_str(), "roleId": role.as_str() } }),
            )
            .await["data"]["createApiKey"]["secret"]
            .as_str()
            .expect("secret")
            .to_owned();
        principals.push((*role, key));
    }
    principals.push((BuiltinRole::PlatformAdmin, app.admin_token().await));
    for (role, token) in &principals {
        for (name, q, vars, perm) in &required {
            let out = app.gql_as(token, q, vars.clone()).await;
            let refused = first_error_code(&out).as_deref() == Some("FORBIDDEN")
                && out["errors"][0]["extensions"]["permission"] == perm.as_str();
            assert_eq!(
                refused,
                !role.permissions().contains(perm),
                "{} calling {name} (needs {}): {out}",
                role.as_str(),
                perm.as_str()
            );
        }
    }
}

/// Every subscription field is guarded too: over a websocket, a powerless principal is
/// FORBIDDEN (naming the permission) unless the field is public.
#[tokio::test(flavor = "multi_thread")]
async fn every_subscription_field_declares_a_guard() {
    use crate::helpers::{ws_authed, ws_next_json, ws_send};
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let nothing = powerless_key(&app, &owner).await;
    let mut checked = 0;
    for (name, q, vars) in field_calls(&app, true).await {
        if agentplane::rbac::PUBLIC_FIELDS.contains(&name.as_str()) {
            continue;
        }
        // Anonymous sockets are refused at connection_init (4401, see websocket tests),
        // so a subscription's own guard is what a signed-in, powerless caller meets.
        let mut key = ws_authed(&app.ws_url(), "graphql-transport-ws", &nothing).await;
        {
            let (ws, code) = (&mut key, "FORBIDDEN");
            ws_send(
                ws,
                json!({ "id": "1", "type": "subscribe", "payload": { "query": q, "variables": vars } }),
            )
            .await;
            let msg = ws_next_json(ws).await;
            let errors = if msg["type"] == "error" {
                msg["payload"].clone()
            } else {
                msg["payload"]["errors"].clone()
            };
            assert_eq!(errors[0]["extensions"]["code"], code, "{name}: {msg}");
            if code == "FORBIDDEN" {
                assert!(
                    errors[0]["extensions"]["permission"].is_string(),
                    "{name}: {msg}"
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 2, "walked {checked} subscription fields");
}
