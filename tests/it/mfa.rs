//! Multi-factor sign-in (#19 item 1): TOTP enrolment confirmed by a first code, sign-in
//! of an enrolled user as a challenge completed by `verifyMfa`, codes good once (replay
//! refused), recovery codes, wrong codes burning a challenge, a tenant's `requireMfa`
//! enforced, disable and an administrator's reset, secrets sealed at rest, every step in
//! the trail. Codes are computed from the secret on the server's manual clock.

use agentplane::auth::totp::{step_at, totp_code};
use serde_json::{Value, json};

use crate::helpers::*;

const ENROL: &str = "mutation { enrollTotp { secret otpauthUri } }";
const CONFIRM: &str = "mutation($i: TotpCodeInput!) { confirmTotp(input: $i) { recoveryCodes } }";
const DISABLE: &str = "mutation($i: TotpCodeInput!) { disableTotp(input: $i) { ok } }";
const VERIFY: &str =
    "mutation($i: VerifyMfaInput!) { verifyMfa(input: $i) { accessToken refreshToken } }";
const LOGIN: &str = "mutation($i: LoginInput!) { login(input: $i) { accessToken } }";
const DEV_PASSWORD: &str = "user-password-123";

fn reason(body: &Value) -> Option<&str> {
    body["errors"][0]["extensions"]["reason"].as_str()
}

/// The current code of a base32 `secret` on the app's clock (`ahead` steps later).
fn code(app: &TestApp, secret: &str, ahead: i64) -> String {
    let raw = data_encoding::BASE32_NOPAD
        .decode(secret.as_bytes())
        .expect("base32 secret");
    let now = agentplane::clock::Clock::now(app.clock.as_ref());
    totp_code(&raw, step_at(now) + ahead)
}

/// Moves the clock to the next 30-second step (a code already used cannot be reused).
fn next_step(app: &TestApp) {
    app.clock.advance(chrono::Duration::seconds(30));
}

/// Signs in with a password and expects the MFA challenge; returns it.
async fn challenge(app: &TestApp, email: &str, password: &str) -> String {
    let body = app
        .gql(
            LOGIN,
            json!({ "i": { "email": email, "password": password } }),
        )
        .await;
    assert_eq!(
        first_error_code(&body).as_deref(),
        Some("UNAUTHENTICATED"),
        "{body}"
    );
    assert_eq!(reason(&body), Some("MFA_REQUIRED"), "{body}");
    assert!(
        body["data"].is_null() || body["data"]["login"].is_null(),
        "{body}"
    );
    body["errors"][0]["extensions"]["mfaChallenge"]
        .as_str()
        .expect("a challenge")
        .to_owned()
}

async fn verify(app: &TestApp, challenge: &str, code: &str) -> Value {
    app.gql(
        VERIFY,
        json!({ "i": { "challenge": challenge, "code": code } }),
    )
    .await
}

/// Enrols the holder of `token`; returns (secret, recovery codes).
async fn enrol(app: &TestApp, token: &str) -> (String, Vec<String>) {
    let e = app.gql_as(token, ENROL, json!({})).await;
    let secret = e["data"]["enrollTotp"]["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("{e}"))
        .to_owned();
    let c = app
        .gql_as(
            token,
            CONFIRM,
            json!({ "i": { "code": code(app, &secret, 0) } }),
        )
        .await;
    let codes = c["data"]["confirmTotp"]["recoveryCodes"]
        .as_array()
        .unwrap_or_else(|| panic!("{c}"))
        .iter()
        .map(|v| v.as_str().expect("code").to_owned())
        .collect();
    (secret, codes)
}

#[tokio::test(flavor = "multi_thread")]
async fn totp_enrolment_sign_in_replay_and_recovery_codes() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_MASTER_KEY", crate::secrets::KEY1)]).await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let email = "owner@acme.example";

    // Enrolment: a secret and its URI, nothing changes until a first code confirms it.
    let e = app.gql_as(&owner, ENROL, json!({})).await;
    let secret = e["data"]["enrollTotp"]["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("{e}"))
        .to_owned();
    assert_eq!(secret.len(), 32, "160 bits in base32");
    let uri = e["data"]["enrollTotp"]["otpauthUri"].as_str().expect("uri");
    assert!(
        uri.starts_with("otpauth://totp/agentplane:owner%40acme.example?secret=")
            && uri.contains(&secret)
            && uri.contains("digits=6&period=30"),
        "{uri}"
    );
    assert!(
        app.login(email, OWNER_PASSWORD).await.0.len() > 20,
        "not on yet"
    );
    let wrong = app
        .gql_as(&owner, CONFIRM, json!({ "i": { "code": "000000" } }))
        .await;
    assert_eq!(reason(&wrong), Some("MFA_CODE_INVALID"), "{wrong}");
    let confirmed = app
        .gql_as(
            &owner,
            CONFIRM,
            json!({ "i": { "code": code(&app, &secret, 0) } }),
        )
        .await;
    let recovery: Vec<String> = confirmed["data"]["confirmTotp"]["recoveryCodes"]
        .as_array()
        .unwrap_or_else(|| panic!("{confirmed}"))
        .iter()
        .map(|v| v.as_str().expect("code").to_owned())
        .collect();
    assert_eq!(recovery.len(), 10);
    let again = app.gql_as(&owner, ENROL, json!({})).await;
    assert_eq!(
        first_error_code(&again).as_deref(),
        Some("CONFLICT"),
        "{again}"
    );

    // The secret is sealed at rest under the master key; recovery codes are digests.
    #[derive(diesel::QueryableByName)]
    struct Stored {
        #[diesel(sql_type = diesel::sql_types::Text)]
        secret: String,
    }
    let db = &app.state.app.db;
    let stored: Vec<Stored> = async {
        Ok::<_, agentplane::db::PoolError>(agentplane::db_run!(db, |conn| {
            diesel_async::RunQueryDsl::load::<Stored>(
                diesel::sql_query("SELECT secret FROM mfa_factors"),
                conn,
            )
            .await
            .expect("select")
        }))
    }
    .await
    .expect("pool");
    assert_eq!(stored.len(), 1);
    assert!(stored[0].secret.starts_with("sealed:v1:k1:"), "sealed");
    assert!(!stored[0].secret.contains(&secret));

    // Sign-in is now two steps. The code that confirmed enrolment was used: refused.
    let ch = challenge(&app, email, OWNER_PASSWORD).await;
    let replay = verify(&app, &ch, &code(&app, &secret, 0)).await;
    assert_eq!(reason(&replay), Some("MFA_CODE_INVALID"), "{replay}");
    next_step(&app);
    let fresh = code(&app, &secret, 0);
    let ok = verify(&app, &ch, &fresh).await;
    let token = ok["data"]["verifyMfa"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{ok}"))
        .to_owned();
    let me = app.gql_as(&token, "{ me { email } }", json!({})).await;
    assert_eq!(me["data"]["me"]["email"], email, "{me}");
    // A challenge is good once; a code is good once, on a new challenge too.
    let used = verify(&app, &ch, &code(&app, &secret, 1)).await;
    assert_eq!(reason(&used), Some("MFA_CHALLENGE_INVALID"), "{used}");
    let ch2 = challenge(&app, email, OWNER_PASSWORD).await;
    let replay = verify(&app, &ch2, &fresh).await;
    assert_eq!(reason(&replay), Some("MFA_CODE_INVALID"), "{replay}");
    // One step of drift is accepted (the next step's code, before its time).
    let ahead = verify(&app, &ch2, &code(&app, &secret, 1)).await;
    assert!(
        ahead["data"]["verifyMfa"]["accessToken"].is_string(),
        "{ahead}"
    );

    // A recovery code, typed loosely, works once.
    let ch3 = challenge(&app, email, OWNER_PASSWORD).await;
    let loose = format!(" {} ", recovery[0].to_uppercase());
    let by_recovery = verify(&app, &ch3, &loose).await;
    assert!(
        by_recovery["data"]["verifyMfa"]["accessToken"].is_string(),
        "{by_recovery}"
    );
    let ch4 = challenge(&app, email, OWNER_PASSWORD).await;
    let reused = verify(&app, &ch4, &recovery[0]).await;
    assert_eq!(reason(&reused), Some("MFA_CODE_INVALID"), "{reused}");

    // Concurrent wrong codes: each is counted before it is checked, so one challenge
    // checks at most five of twenty.
    let ch5 = challenge(&app, email, OWNER_PASSWORD).await;
    let answers = futures_util::future::join_all(
        (0..20).map(|i| verify(&app, &ch5, if i % 2 == 0 { "111111" } else { "222222" })),
    )
    .await;
    let checked = answers
        .iter()
        .filter(|a| reason(a) == Some("MFA_CODE_INVALID"))
        .count();
    assert!(checked <= 5, "{checked} codes checked on one challenge");
    assert!(
        answers.iter().all(|a| matches!(
            reason(a),
            Some("MFA_CODE_INVALID" | "MFA_CHALLENGE_INVALID")
        )),
        "{answers:?}"
    );
    // The failures above stay counted for the user; the right code clears them below.

    // Wrong codes burn a challenge after five: even the right code is refused then.
    for _ in 0..4 {
        let w = verify(&app, &ch4, "123456").await;
        assert_eq!(reason(&w), Some("MFA_CODE_INVALID"), "{w}");
    }
    next_step(&app);
    let burnt = verify(&app, &ch4, &code(&app, &secret, 0)).await;
    assert_eq!(reason(&burnt), Some("MFA_CHALLENGE_INVALID"), "{burnt}");
    let bogus = verify(&app, "not-a-challenge", &code(&app, &secret, 0)).await;
    assert_eq!(reason(&bogus), Some("MFA_CHALLENGE_INVALID"), "{bogus}");

    // Ten wrong codes in 15 minutes lock this user's codes for a while.
    let ch6 = challenge(&app, email, OWNER_PASSWORD).await;
    let locked = verify(&app, &ch6, "333333").await;
    assert_eq!(
        first_error_code(&locked).as_deref(),
        Some("RATE_LIMITED"),
        "{locked}"
    );
    assert!(
        locked["errors"][0]["extensions"]["retryAfterSeconds"].is_number(),
        "{locked}"
    );
    app.clock.advance(chrono::Duration::minutes(16));
    let ch7 = challenge(&app, email, OWNER_PASSWORD).await;
    let again = verify(&app, &ch7, &code(&app, &secret, 0)).await;
    let token = again["data"]["verifyMfa"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{again}"))
        .to_owned();

    // Turning it off needs a code; then sign-in is one step again.
    let off = app
        .gql_as(&token, DISABLE, json!({ "i": { "code": "000000" } }))
        .await;
    assert_eq!(reason(&off), Some("MFA_CODE_INVALID"), "{off}");
    next_step(&app);
    let off = app
        .gql_as(
            &token,
            DISABLE,
            json!({ "i": { "code": code(&app, &secret, 0) } }),
        )
        .await;
    assert_eq!(off["data"]["disableTotp"]["ok"], true, "{off}");
    assert!(app.login(email, OWNER_PASSWORD).await.0.len() > 20);

    // Every step is in the trail; no secret or code is.
    let log = app
        .gql_as(
            &token,
            "{ auditLog(filter: { actionPrefix: \"auth.\" }, first: 100) { edges { node { action outcome changes } } } }",
            json!({}),
        )
        .await;
    let edges = log["data"]["auditLog"]["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("{log}"));
    let actions: Vec<&str> = edges
        .iter()
        .filter_map(|e| e["node"]["action"].as_str())
        .collect();
    for a in [
        "auth.mfa_enrolment_started",
        "auth.mfa_enabled",
        "auth.mfa_failed",
        "auth.mfa_disabled",
    ] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
    assert!(
        edges.iter().any(|e| e["node"]["action"] == "auth.login"
            && e["node"]["changes"].to_string().contains("recovery_code")
            && e["node"]["changes"]["recoveryCodesLeft"] == 9),
        "{log}"
    );
    let text = log.to_string();
    assert!(
        !text.contains(&secret) && !text.contains(&recovery[1]),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_that_requires_mfa_lets_members_without_it_only_enrol() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let require = "mutation($i: UpdateTenantSettingsInput!) { updateTenantSettings(input: $i) { tenant { settings { requireMfa } } } }";
    // An owner without a factor cannot require one.
    let refused = app
        .gql_as(&owner, require, json!({ "i": { "requireMfa": true } }))
        .await;
    assert_eq!(reason(&refused), Some("ENROL_FIRST"), "{refused}");
    let (owner_secret, _) = enrol(&app, &owner).await;
    let (dev_id, dev) = user_with_role(&app, &owner, "dev@acme.example", json!("DEVELOPER")).await;
    let on = app
        .gql_as(&owner, require, json!({ "i": { "requireMfa": true } }))
        .await;
    assert_eq!(
        on["data"]["updateTenantSettings"]["tenant"]["settings"]["requireMfa"], true,
        "{on}"
    );

    // The developer's session (no second factor) may only enrol, read itself, sign out.
    let list = "{ workflows(first: 5) { edges { node { id } } } }";
    let blocked = app.gql_as(&dev, list, json!({})).await;
    assert_eq!(
        first_error_code(&blocked).as_deref(),
        Some("FORBIDDEN"),
        "{blocked}"
    );
    assert_eq!(
        reason(&blocked),
        Some("MFA_REQUIRED_BY_TENANT"),
        "{blocked}"
    );
    let me = app.gql_as(&dev, "{ me { email } }", json!({})).await;
    assert_eq!(me["data"]["me"]["email"], "dev@acme.example", "{me}");
    // Not even the signed-in fields beyond enrolment: sessions, password, node.
    for q in [
        "{ sessions { id } }".to_owned(),
        "mutation { changePassword(input: { currentPassword: \"user-password-123\", newPassword: \"another-password-1\" }) { ok } }".to_owned(),
        format!("{{ node(id: \"{dev_id}\") {{ id }} }}"),
    ] {
        let blocked = app.gql_as(&dev, &q, json!({})).await;
        assert_eq!(reason(&blocked), Some("MFA_REQUIRED_BY_TENANT"), "{q}: {blocked}");
    }
    let resp = app
        .http
        .get(format!("{}/audit/export?format=ndjson", app.base))
        .bearer_auth(&dev)
        .send()
        .await
        .expect("export");
    assert_eq!(resp.status().as_u16(), 403);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(reason(&body), Some("MFA_REQUIRED_BY_TENANT"), "{body}");
    // So is the owner's own password-only session, until it signs in with a code.
    let blocked = app.gql_as(&owner, list, json!({})).await;
    assert_eq!(
        reason(&blocked),
        Some("MFA_REQUIRED_BY_TENANT"),
        "{blocked}"
    );
    next_step(&app);
    let ch = challenge(&app, "owner@acme.example", OWNER_PASSWORD).await;
    let owner =
        verify(&app, &ch, &code(&app, &owner_secret, 0)).await["data"]["verifyMfa"]["accessToken"]
            .as_str()
            .expect("owner signs in with a code")
            .to_owned();
    let ok = app.gql_as(&owner, list, json!({})).await;
    assert!(ok["data"]["workflows"]["edges"].is_array(), "{ok}");

    // The developer enrols, signs in again with a code, and works; the refreshed
    // session keeps its second factor. Turning the factor on ends the developer's other
    // password-only sessions.
    let (other_session, _) = app.login("dev@acme.example", DEV_PASSWORD).await;
    let (dev_secret, _) = enrol(&app, &dev).await;
    let ended = app
        .gql_as(&other_session, "{ me { email } }", json!({}))
        .await;
    assert_eq!(
        first_error_code(&ended).as_deref(),
        Some("UNAUTHENTICATED"),
        "{ended}"
    );
    next_step(&app);
    let ch = challenge(&app, "dev@acme.example", DEV_PASSWORD).await;
    let tokens = verify(&app, &ch, &code(&app, &dev_secret, 0)).await;
    let dev = tokens["data"]["verifyMfa"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{tokens}"))
        .to_owned();
    let ok = app.gql_as(&dev, list, json!({})).await;
    assert!(ok["data"]["workflows"]["edges"].is_array(), "{ok}");
    let refreshed = app
        .gql(
            "mutation($i: RefreshSessionInput!) { refreshSession(input: $i) { accessToken } }",
            json!({ "i": { "refreshToken": tokens["data"]["verifyMfa"]["refreshToken"] } }),
        )
        .await;
    let dev = refreshed["data"]["refreshSession"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{refreshed}"))
        .to_owned();
    let ok = app.gql_as(&dev, list, json!({})).await;
    assert!(ok["data"]["workflows"]["edges"].is_array(), "{ok}");

    // A lost device: the owner resets the developer's factor; the developer signs in with
    // the password alone again, and may only enrol.
    let reset = app
        .gql_as(
            &owner,
            "mutation($i: ResetUserMfaInput!) { resetUserMfa(input: $i) { user { email } } }",
            json!({ "i": { "userId": dev_id } }),
        )
        .await;
    assert_eq!(
        reset["data"]["resetUserMfa"]["user"]["email"], "dev@acme.example",
        "{reset}"
    );
    let (dev, _) = app.login("dev@acme.example", DEV_PASSWORD).await;
    let blocked = app.gql_as(&dev, list, json!({})).await;
    assert_eq!(
        reason(&blocked),
        Some("MFA_REQUIRED_BY_TENANT"),
        "{blocked}"
    );
    // Nobody resets their own factor this way (that needs a code: disableTotp).
    let owner_id = app.gql_as(&owner, "{ me { id } }", json!({})).await["data"]["me"]["id"].clone();
    let own = app
        .gql_as(
            &owner,
            "mutation($i: ResetUserMfaInput!) { resetUserMfa(input: $i) { user { email } } }",
            json!({ "i": { "userId": owner_id } }),
        )
        .await;
    assert_eq!(
        first_error_code(&own).as_deref(),
        Some("BAD_USER_INPUT"),
        "{own}"
    );
    // A developer cannot reset anyone's factor.
    let denied = app
        .gql_as(
            &dev,
            "mutation($i: ResetUserMfaInput!) { resetUserMfa(input: $i) { user { email } } }",
            json!({ "i": { "userId": dev_id } }),
        )
        .await;
    assert_eq!(
        first_error_code(&denied).as_deref(),
        Some("FORBIDDEN"),
        "{denied}"
    );

    // Another tenant is not affected by acme's requirement.
    let (_, other) = app.tenant_with_owner("globex").await;
    let ok = app.gql_as(&other, list, json!({})).await;
    assert!(ok["data"]["workflows"]["edges"].is_array(), "{ok}");
}

/// The way back in when nobody in the tenant can help: `agentplane admin reset-mfa` and
/// `agentplane admin clear-ip-ranges`, run by an operator against the database, recorded
/// in the tenant's trail.
#[tokio::test(flavor = "multi_thread")]
async fn operator_commands_reset_a_factor_and_clear_an_ip_list() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_TRUSTED_PROXIES", "127.0.0.1/32")]).await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    enrol(&app, &owner).await;
    next_step(&app);
    challenge(&app, "owner@acme.example", OWNER_PASSWORD).await;
    let url = app.db.url.clone();
    let url2 = url.clone();
    let out = tokio::task::spawn_blocking(move || {
        crate::cli::run(
            &["admin", "reset-mfa", "--email", "owner@acme.example"],
            &[("DATABASE_URL", url.as_str()), ("RUST_LOG", "warn")],
        )
    })
    .await
    .expect("join");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("turned off"));
    let (owner, _) = app.login("owner@acme.example", OWNER_PASSWORD).await;

    // A list that shuts everyone out, saved on purpose, and cleared by the operator.
    let saved = app
        .gql_as(
            &owner,
            "mutation($i: UpdateTenantSettingsInput!) { updateTenantSettings(input: $i) { tenant { id } } }",
            json!({ "i": { "allowedIpRanges": ["10.0.0.0/8"], "confirmExcludingOwnAddress": true } }),
        )
        .await;
    assert!(saved["errors"].is_null(), "{saved}");
    let refused = app.gql_as(&owner, "{ me { email } }", json!({})).await;
    assert_eq!(reason(&refused), Some("IP_NOT_ALLOWED"), "{refused}");
    let out = tokio::task::spawn_blocking(move || {
        crate::cli::run(
            &["admin", "clear-ip-ranges", "--tenant", "acme"],
            &[("DATABASE_URL", url2.as_str()), ("RUST_LOG", "warn")],
        )
    })
    .await
    .expect("join");
    assert!(out.status.success(), "{out:?}");
    // The server hears of the change from the database (another process wrote it).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let me = app.gql_as(&owner, "{ me { email } }", json!({})).await;
        if me["data"]["me"]["email"] == "owner@acme.example" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still refused: {me}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let log = app
        .gql_as(
            &owner,
            "{ auditLog(filter: { actionPrefix: \"auth.mfa_reset\" }, first: 5) { edges { node { actorType severity } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        log["data"]["auditLog"]["edges"][0]["node"]["severity"], "CRITICAL",
        "{log}"
    );
}
