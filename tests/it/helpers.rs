//! Test harness: a real server on 127.0.0.1:0 over a fresh database per test.
//!
//! SQLite by default (a temp file); PostgreSQL when `TEST_DATABASE_URL` is set (a fresh
//! schema per test, selected through the connection's `search_path`, dropped afterwards).

use std::collections::HashMap;
use std::net::SocketAddr;

use std::sync::Arc;

mod process;
mod ws;
pub use process::*;
pub use ws::*;

use agentplane::clock::ManualClock;
use agentplane::config::{CliOverrides, Config};
use agentplane::db::migrate;
use agentplane::server::{self as app, AppState};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::{Value, json};

/// The bootstrap platform admin of every test server.
pub const ADMIN_EMAIL: &str = "admin@agentplane.local";
/// Its password (tests only; production has no default).
pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";
/// The password `tenant_with_owner` gives owners.
pub const OWNER_PASSWORD: &str = "owner-password-for-tests";

/// A database that exists for one test only.
pub struct TestDb {
    /// What to put in `DATABASE_URL`.
    pub url: String,
    kind: DbKind,
}

enum DbKind {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres {
        admin_url: String,
        schema: String,
        app_role: Option<String>,
    },
}

impl TestDb {
    /// Whether the suite runs against PostgreSQL.
    pub fn is_postgres() -> bool {
        std::env::var("TEST_DATABASE_URL").is_ok_and(|u| !u.is_empty())
    }

    /// Creates an empty database (no migrations applied).
    pub async fn create() -> Self {
        match std::env::var("TEST_DATABASE_URL") {
            Ok(admin_url) if !admin_url.is_empty() => {
                let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
                let mut conn = AsyncPgConnection::establish(&admin_url)
                    .await
                    .expect("connect to TEST_DATABASE_URL");
                diesel::sql_query(format!("CREATE SCHEMA {schema}"))
                    .execute(&mut conn)
                    .await
                    .expect("create test schema");
                let sep = if admin_url.contains('?') { '&' } else { '?' };
                let url = format!("{admin_url}{sep}options=-c%20search_path%3D{schema}");
                Self {
                    url,
                    kind: DbKind::Postgres {
                        admin_url,
                        schema,
                        app_role: None,
                    },
                }
            }
            _ => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                Self {
                    url,
                    kind: DbKind::Sqlite(dir),
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let DbKind::Postgres {
            admin_url,
            schema,
            app_role,
        } = &self.kind
        {
            let (admin_url, schema, app_role) =
                (admin_url.clone(), schema.clone(), app_role.clone());
            // Drop runs outside any runtime guarantee: use a private one on a thread.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    if let Ok(mut conn) = AsyncPgConnection::establish(&admin_url).await {
                        let _ =
                            diesel::sql_query(format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                                .execute(&mut conn)
                                .await;
                        if let Some(role) = app_role {
                            let _ = diesel::sql_query(format!("DROP ROLE IF EXISTS {role}"))
                                .execute(&mut conn)
                                .await;
                        }
                    }
                });
            })
            .join();
        }
    }
}

impl TestDb {
    /// PostgreSQL only: a login role that does not own the (already migrated) tables,
    /// with data privileges on them, so row-level security applies to it. Returns the
    /// connection URL for that role.
    pub async fn app_role_url(&mut self) -> Option<String> {
        let DbKind::Postgres {
            admin_url,
            schema,
            app_role,
        } = &mut self.kind
        else {
            return None;
        };
        let role = format!("{schema}_app");
        let mut conn = AsyncPgConnection::establish(admin_url)
            .await
            .expect("connect as admin");
        for sql in [
            format!("CREATE ROLE {role} LOGIN"),
            format!("GRANT USAGE ON SCHEMA {schema} TO {role}"),
            format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}"
            ),
        ] {
            diesel::sql_query(sql)
                .execute(&mut conn)
                .await
                .expect("role setup");
        }
        *app_role = Some(role.clone());
        let mut url = url::Url::parse(&self.url).expect("url");
        url.set_username(&role).expect("username");
        Some(url.to_string())
    }
}

/// Builds a config for `db` plus extra environment values; the real environment is ignored.
pub fn config_for(db: &TestDb, extra: &[(&str, &str)]) -> Config {
    let mut env: HashMap<String, String> = extra
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    env.insert("DATABASE_URL".into(), db.url.clone());
    env.entry("AGENTPLANE_LISTEN".into())
        .or_insert_with(|| "127.0.0.1:0".into());
    Config::load_with(&CliOverrides::default(), &move |k| env.get(k).cloned())
        .expect("valid test config")
}

/// A running server.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// Bound address.
    pub addr: SocketAddr,
    /// HTTP client.
    pub http: reqwest::Client,
    /// Shared state, for tests that reach behind the API.
    pub state: AppState,
    /// The server's clock; tests move it instead of sleeping.
    pub clock: Arc<ManualClock>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// The database; dropped (and removed) after the server.
    pub db: TestDb,
    /// Where `deleteTenant` writes its exports (removed with the app).
    pub exports: tempfile::TempDir,
}

impl TestApp {
    /// Fresh database, default settings.
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    /// Fresh database with extra configuration values.
    pub async fn spawn_with(extra: &[(&str, &str)]) -> Self {
        Self::spawn_inner(extra, false).await
    }

    /// On PostgreSQL, serves as a role that does not own the tables, so row-level
    /// security is in force (migrations still run as the owner). Same as `spawn` on SQLite.
    pub async fn spawn_as_app_role() -> Self {
        Self::spawn_inner(&[], true).await
    }

    /// [`Self::spawn_as_app_role`] with extra configuration values.
    pub async fn spawn_as_app_role_with(extra: &[(&str, &str)]) -> Self {
        Self::spawn_inner(extra, true).await
    }

    /// PostgreSQL only: serves through `proxy`, so the test can take the database away
    /// (migrations run directly).
    pub async fn spawn_through(proxy: &DbProxy, extra: &[(&str, &str)]) -> Self {
        Self::spawn_configured(extra, false, Some(proxy)).await
    }

    async fn spawn_inner(extra: &[(&str, &str)], app_role: bool) -> Self {
        Self::spawn_configured(extra, app_role, None).await
    }

    async fn spawn_configured(
        extra: &[(&str, &str)],
        app_role: bool,
        proxy: Option<&DbProxy>,
    ) -> Self {
        let mut db = TestDb::create().await;
        let exports = tempfile::tempdir().expect("export dir");
        let export_dir = exports.path().display().to_string();
        let mut extra: Vec<(&str, &str)> = extra.to_vec();
        extra.push(("AGENTPLANE_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD));
        if !extra.iter().any(|(k, _)| *k == "AGENTPLANE_EXPORT_DIR") {
            extra.push(("AGENTPLANE_EXPORT_DIR", &export_dir));
        }
        let config = config_for(&db, &extra);
        migrate::run_pending(&config.database_url)
            .await
            .expect("migrations apply");
        let mut config = config;
        if app_role {
            if let Some(url) = db.app_role_url().await {
                config.database_url =
                    agentplane::config::DatabaseUrl::parse(&url).expect("app role url");
            }
        }
        if let Some(proxy) = proxy {
            config.database_url =
                agentplane::config::DatabaseUrl::parse(&proxy.url(&db.url)).expect("proxied url");
        }
        let clock = Arc::new(ManualClock::new());
        let state = AppState::with_clock(config, clock.clone())
            .await
            .expect("state builds");
        agentplane::bootstrap::ensure_platform_admin(&state.app)
            .await
            .expect("bootstrap");
        let listener = app::bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let server = tokio::spawn(app::serve(state.clone(), listener));
        Self {
            base: format!("http://{addr}"),
            addr,
            http: reqwest::Client::new(),
            state,
            clock,
            server: Some(server),
            db,
            exports,
        }
    }

    /// POSTs a GraphQL request and returns (status, headers, body).
    pub async fn post_raw(
        &self,
        body: &Value,
        token: Option<&str>,
    ) -> (reqwest::StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self.http.post(format!("{}/graphql", self.base)).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.json::<Value>().await.expect("json body");
        (status, headers, body)
    }

    /// Runs a query or mutation and returns the response body.
    pub async fn gql(&self, query: &str, variables: Value) -> Value {
        self.post_raw(&json!({ "query": query, "variables": variables }), None)
            .await
            .2
    }

    /// Runs a query or mutation with a bearer credential.
    pub async fn gql_as(&self, token: &str, query: &str, variables: Value) -> Value {
        self.post_raw(
            &json!({ "query": query, "variables": variables }),
            Some(token),
        )
        .await
        .2
    }

    /// Signs in; returns (access token, refresh token).
    pub async fn login(&self, email: &str, password: &str) -> (String, String) {
        let body = self
            .gql(
                "mutation($i: LoginInput!) { login(input: $i) { accessToken refreshToken } }",
                json!({ "i": { "email": email, "password": password } }),
            )
            .await;
        let t = &body["data"]["login"];
        assert!(t.is_object(), "login failed: {body}");
        (
            t["accessToken"].as_str().expect("access").to_owned(),
            t["refreshToken"].as_str().expect("refresh").to_owned(),
        )
    }

    /// The platform admin's access token.
    pub async fn admin_token(&self) -> String {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.0
    }

    /// Creates a tenant whose owner has `OWNER_PASSWORD`; returns (tenant id, owner token).
    pub async fn tenant_with_owner(&self, slug: &str) -> (String, String) {
        let admin = self.admin_token().await;
        let email = format!("owner@{slug}.example");
        let body = self
            .gql_as(
                &admin,
                "mutation($i: CreateTenantInput!) { createTenant(input: $i) { tenant { id } setPasswordToken } }",
                json!({ "i": { "slug": slug, "name": slug, "plan": "PRO",
                               "owner": { "email": email, "displayName": "Owner" } } }),
            )
            .await;
        let p = &body["data"]["createTenant"];
        assert!(p.is_object(), "createTenant failed: {body}");
        let set = self
            .gql(
                "mutation($i: SetPasswordInput!) { setPassword(input: $i) { ok } }",
                json!({ "i": { "token": p["setPasswordToken"], "password": OWNER_PASSWORD } }),
            )
            .await;
        assert_eq!(set["data"]["setPassword"]["ok"], true, "{set}");
        let token = self.login(&email, OWNER_PASSWORD).await.0;
        (p["tenant"]["id"].as_str().expect("id").to_owned(), token)
    }

    /// `ws://127.0.0.1:PORT/graphql/ws`
    pub fn ws_url(&self) -> String {
        format!("ws://{}/graphql/ws", self.addr)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.state.app.shutdown.cancel();
        if let Some(h) = self.server.take() {
            h.abort();
        }
    }
}

/// The `extensions.code` of the first error, if any.
pub fn first_error_code(body: &Value) -> Option<String> {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .map(str::to_owned)
}

/// Creates a user with `role_id`, sets their password and signs them in.
pub async fn user_with_role(
    app: &TestApp,
    owner: &str,
    email: &str,
    role_id: Value,
) -> (String, String) {
    let out = app
        .gql_as(
            owner,
            "mutation($i: CreateUserInput!) { createUser(input: $i) { user { id } setPasswordToken } }",
            json!({ "i": { "email": email, "displayName": "U", "roleId": role_id } }),
        )
        .await;
    let p = &out["data"]["createUser"];
    assert!(p.is_object(), "{out}");
    let set = app
        .gql(
            "mutation($i: SetPasswordInput!) { setPassword(input: $i) { ok } }",
            json!({ "i": { "token": p["setPasswordToken"], "password": "user-password-123" } }),
        )
        .await;
    assert_eq!(set["data"]["setPassword"]["ok"], true, "{set}");
    // A set-password token works once.
    let again = app
        .gql(
            "mutation($i: SetPasswordInput!) { setPassword(input: $i) { ok } }",
            json!({ "i": { "token": p["setPasswordToken"], "password": "other-password-123" } }),
        )
        .await;
    assert_eq!(first_error_code(&again).as_deref(), Some("UNAUTHENTICATED"));
    let token = app.login(email, "user-password-123").await.0;
    (p["user"]["id"].as_str().expect("id").to_owned(), token)
}

/// A count read behind the API: `sql` (written with `$1`, which becomes `?1` on SQLite)
/// selects one `BIGINT` column named `n`, with `bind` as its one text parameter.
pub async fn count_behind_api(app: &TestApp, sql: &str, bind: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let q = if TestDb::is_postgres() {
        sql.to_owned()
    } else {
        sql.replace("$1", "?1")
    };
    let db = &app.state.app.db;
    let r: Result<N, agentplane::error::AppError> = async {
        Ok(agentplane::db_run!(db, |conn| {
            diesel_async::RunQueryDsl::get_result(
                diesel::sql_query(&q).bind::<diesel::sql_types::Text, _>(bind),
                conn,
            )
            .await?
        }))
    }
    .await;
    r.unwrap_or_else(|e| panic!("{sql}: {e:?}")).n
}
