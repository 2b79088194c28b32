//! The `agentplane` command line.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;

use agentplane::config::{CliOverrides, Config};
use agentplane::db::{DbPool, migrate};
use agentplane::server::{self as app, AppState};

mod allocator;
mod cli;

use allocator::{bound_malloc_arenas, start_memory_trimmer};
use cli::{AdminCommand, Cli, Command, Remote};

fn main() -> ExitCode {
    bound_malloc_arenas();
    let cli = Cli::parse();
    if let Command::Schema = cli.command {
        print!("{}", agentplane::graphql::sdl());
        return ExitCode::SUCCESS;
    }
    if let Command::GpuInfo = cli.command {
        return gpu_info();
    }
    if matches!(cli.command, Command::Watch { .. } | Command::Start { .. }) {
        return client(cli.command);
    }
    if let Command::Admin {
        command: AdminCommand::Permissions,
    } = cli.command
    {
        print!("{}", agentplane::rbac::matrix_markdown());
        return ExitCode::SUCCESS;
    }
    let overrides = CliOverrides {
        config_file: cli.config.clone(),
        listen: match &cli.command {
            Command::Serve { listen, .. } => listen.clone(),
            _ => None,
        },
    };
    let config = match Config::load(&overrides) {
        Ok(mut c) => {
            if let Command::Serve {
                workers: Some(n), ..
            }
            | Command::Worker { workers: Some(n) } = &cli.command
            {
                c.engine.workers = *n;
            }
            c
        }
        Err(e) => {
            eprintln!("agentplane: {e}");
            return ExitCode::from(2);
        }
    };
    let telemetry = agentplane::telemetry::init(
        config.log_format,
        &config.log_filter,
        config.otlp_endpoint.as_ref(),
    );
    if matches!(cli.command, Command::Serve { .. } | Command::Worker { .. }) {
        start_memory_trimmer(config.memory_trim_interval);
    }
    let Some(rt) = runtime(tokio::runtime::Builder::new_multi_thread()) else {
        return ExitCode::FAILURE;
    };
    let result = rt.block_on(run(cli.command, config));
    // Do not wait on stray blocking tasks: shutdown must finish within 10 s.
    rt.shutdown_timeout(Duration::from_millis(500));
    // Exports the last spans (bounded by the exporter's own timeout).
    drop(telemetry);
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "fatal");
            eprintln!("agentplane: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What `serve --demo` seeded (secrets once), and the one command that runs the demo.
fn print_demo(demo: agentplane::bootstrap::Demo, server: &str) {
    use agentplane::bootstrap::Demo;
    // The command names this very binary, so it pastes as it is.
    let me = std::env::current_exe()
        .ok()
        .map_or_else(|| "agentplane".to_owned(), |p| p.display().to_string());
    match demo {
        Demo::Created {
            accounts,
            workflow_id,
            api_key,
        } => {
            println!("seeded demo tenant `demo` (passwords and the API key are shown once):");
            for a in accounts {
                println!("  {:<10} {:<36} {}", a.role, a.email, a.password);
            }
            println!("  API key (OPERATOR): {api_key}");
            println!(
                "demo workflow `{}` ({workflow_id}) is published; run it and watch it live:",
                agentplane::bootstrap::DEMO_WORKFLOW
            );
            println!(
                "  {me} start {workflow_id} --server {server} --token {api_key} \\\n    --input '{{\"name\": \"you\", \"items\": 5}}' --watch"
            );
        }
        Demo::Exists { workflow_id } => {
            println!(
                "demo tenant `demo` exists (seeded by an earlier start; its passwords were shown \
                 then: `{me} admin reset-password --email owner@demo.agentplane.local` prints a new one)"
            );
            if let Some(id) = workflow_id {
                println!(
                    "  run its workflow with a token of the tenant (sign in, or createApiKey):\n  \
                     {me} start {id} --server {server} --token $TOKEN --watch"
                );
            }
        }
    }
}

/// Builds the async runtime, or says why it cannot.
fn runtime(mut builder: tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    builder
        .enable_all()
        .build()
        .map_err(|e| eprintln!("agentplane: cannot start the async runtime: {e}"))
        .ok()
}

/// `agentplane start` / `watch`: need no configuration or database, only the server.
fn client(command: Command) -> ExitCode {
    let Some(rt) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    let mut out = std::io::stdout();
    let result = rt.block_on(async {
        let (server, token, id, json) = match command {
            Command::Watch {
                execution_id,
                json,
                remote: Remote { server, token },
            } => (server, token, execution_id, json),
            Command::Start {
                workflow_id,
                input,
                idempotency_key,
                watch,
                json,
                remote: Remote { server, token },
            } => {
                let input: serde_json::Value = serde_json::from_str(&input)
                    .map_err(|e| anyhow::anyhow!("--input is not JSON: {e}"))?;
                let id = agentplane::client::start(
                    &server,
                    &token,
                    &workflow_id,
                    input,
                    idempotency_key.as_deref(),
                )
                .await?;
                if !watch {
                    println!("{id}");
                    return Ok(None);
                }
                eprintln!("started execution {id}");
                (server, token, id, json)
            }
            _ => unreachable!("only client commands come here"),
        };
        agentplane::client::watch(&server, &token, &id, json, &mut out)
            .await
            .map(Some)
    });
    match result {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(f)) if f.status == "SUCCEEDED" => ExitCode::SUCCESS,
        Ok(Some(f)) => {
            eprintln!("agentplane: the execution ended {}", f.status);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("agentplane: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Schema => {
            print!("{}", agentplane::graphql::sdl());
            Ok(ExitCode::SUCCESS)
        }
        Command::GpuInfo => Ok(gpu_info()),
        Command::Watch { .. } | Command::Start { .. } => {
            unreachable!("client commands run before configuration is loaded")
        }
        Command::Serve { demo, .. } => serve(config, demo).await,
        Command::Worker { .. } => worker(config).await,
        Command::Migrate { check: true } => {
            // Exit 0: up to date; 1: migrations pending; 2: the database is newer than
            // this binary (migrated by a later version).
            let pool = DbPool::connect(&config.database_url).await?;
            let state = migrate::state(&pool).await?;
            if !state.unknown.is_empty() {
                println!(
                    "the database is newer than this binary: unknown migration(s) {}",
                    state.unknown.join(", ")
                );
                Ok(ExitCode::from(2))
            } else if state.pending.is_empty() {
                println!("no pending migrations");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("pending migrations: {}", state.pending.join(", "));
                Ok(ExitCode::from(1))
            }
        }
        Command::Migrate { check: false } => {
            let applied = migrate::run_pending(&config.database_url).await?;
            if applied.is_empty() {
                println!("no pending migrations");
            } else {
                println!("applied: {}", applied.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Admin {
            command: AdminCommand::Permissions,
        } => {
            print!("{}", agentplane::rbac::matrix_markdown());
            Ok(ExitCode::SUCCESS)
        }
        Command::Admin {
            command: AdminCommand::CheckConfig,
        } => {
            println!("{config:#?}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Admin {
            command:
                AdminCommand::CreateTenant {
                    slug,
                    name,
                    plan,
                    owner_email,
                    owner_name,
                },
        } => {
            use agentplane::tenancy::model::Plan;
            let upper = plan.to_ascii_uppercase();
            let Some(plan) = Plan::parse(&upper) else {
                let known: Vec<&str> = Plan::ALL.iter().map(|p| p.as_str()).collect();
                anyhow::bail!(
                    "unknown plan {plan:?} (expected one of {})",
                    known.join(", ")
                );
            };
            migrate::run_pending(&config.database_url).await?;
            let state = AppState::new(config).await?;
            let pw = agentplane::bootstrap::create_tenant(
                &state.app,
                &slug,
                &name,
                plan,
                &owner_email,
                &owner_name,
            )
            .await?;
            println!("created tenant {slug}; owner {owner_email} password (shown once): {pw}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Admin {
            command:
                AdminCommand::CreateUser {
                    tenant,
                    email,
                    name,
                    role,
                },
        } => {
            let role = agentplane::rbac::BuiltinRole::parse(&role.to_ascii_uppercase())
                .ok_or_else(|| anyhow::anyhow!("unknown role {role:?}"))?;
            migrate::run_pending(&config.database_url).await?;
            let state = AppState::new(config).await?;
            let pw = agentplane::bootstrap::create_user(&state.app, &tenant, &email, &name, role)
                .await?;
            println!("created user {email} in {tenant}; password (shown once): {pw}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Admin {
            command: AdminCommand::ReencryptSecrets,
        } => {
            migrate::run_pending(&config.database_url).await?;
            let state = AppState::new(config).await?;
            let n = agentplane::secrets::rotate(&state.app)
                .await
                .map_err(agentplane::error::AppError::into_anyhow)?;
            println!("re-encrypted {n} secrets under the current master key");
            Ok(ExitCode::SUCCESS)
        }
        Command::Admin {
            command: AdminCommand::RotateSigningKey,
        } => {
            migrate::run_pending(&config.database_url).await?;
            let pool = DbPool::connect(&config.database_url).await?;
            let kid = agentplane::auth::jwt::rotate(&pool, &config.master_keys).await?;
            println!("new signing key {kid}; earlier keys still verify until their tokens expire");
            Ok(ExitCode::SUCCESS)
        }
        Command::Admin {
            command: AdminCommand::ResetMfa { email },
        } => {
            migrate::run_pending(&config.database_url).await?;
            let state = AppState::new(config).await?;
            if agentplane::admin::reset_mfa(&state.app, &email).await? {
                println!(
                    "second factor of {email} turned off; they sign in with the password and enrol again"
                );
            } else {
                println!("{email} has no second factor; nothing changed");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Admin {
            command: AdminCommand::ClearIpRanges { tenant },
        } => {
            migrate::run_pending(&config.database_url).await?;
            let state = AppState::new(config).await?;
            agentplane::admin::clear_ip_ranges(&state.app, &tenant).await?;
            println!("allowedIpRanges of {tenant} emptied: any address may connect");
            Ok(ExitCode::SUCCESS)
        }
        Command::Admin {
            command: AdminCommand::ResetPassword { email, stdin },
        } => {
            migrate::run_pending(&config.database_url).await?;
            let state = AppState::new(config).await?;
            let password = if stdin {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                line.trim_end_matches(['\r', '\n']).to_owned()
            } else {
                agentplane::auth::passwords::random_secret(18)
            };
            agentplane::admin::reset_password(&state.app, &email, &password).await?;
            if stdin {
                println!("password for {email} changed; their sessions were revoked");
            } else {
                println!("new password for {email} (shown once): {password}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn gpu_info() -> ExitCode {
    let probe = agentplane::cluster::gpu::NvmlProbe::new();
    if let Some(reason) = probe.unavailable_reason() {
        println!("NVML unavailable: {reason}");
        println!("this node reports 0 GPUs and runs normally");
        return ExitCode::from(1);
    }
    println!("{}", agentplane::cluster::gpu::GpuProbe::describe(&probe));
    match probe.try_read() {
        Ok(gpus) if gpus.is_empty() => println!("NVML sees no GPUs"),
        Ok(gpus) => {
            for g in gpus {
                println!(
                    "GPU {} {} ({}): memory {} MiB total, {} MiB used, {} MiB free; \
                     utilization {} %; {} °C; {:.1} W; MIG {}",
                    g.index,
                    g.name,
                    g.uuid,
                    g.memory_total_mb,
                    g.memory_used_mb,
                    g.memory_free_mb,
                    g.utilization_percent,
                    g.temperature_c,
                    g.power_draw_w,
                    match g.mig_enabled {
                        Some(true) => "enabled",
                        Some(false) => "disabled",
                        None => "not supported",
                    }
                );
            }
        }
        Err(e) => {
            println!("NVML could not list GPUs: {e}");
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

async fn worker(config: Config) -> anyhow::Result<ExitCode> {
    let workers = config.engine.workers.max(1);
    let grace = config.http.shutdown_grace;
    let state = AppState::new(config).await?;
    let migrations = migrate::state(&state.app.db)
        .await
        .context("checking migrations")?;
    if !migrations.unknown.is_empty() {
        anyhow::bail!(
            "the database is newer than this binary (unknown migration(s) {}); upgrade agentplane",
            migrations.unknown.join(", ")
        );
    }
    if !migrations.pending.is_empty() {
        anyhow::bail!(
            "{} migration(s) pending ({}); run `agentplane migrate` (or start `serve`) first",
            migrations.pending.len(),
            migrations.pending.join(", ")
        );
    }
    let metrics = app::serve_metrics(&state).await?;
    let background = app::Background::start(
        &state.app,
        workers,
        agentplane::cluster::model::NodeKind::Worker,
        None,
    )?;
    let owner = background
        .engine()
        .map(|e| e.owner.clone())
        .unwrap_or_default();
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "agentplane {} worker {owner} running {workers} worker(s){}",
            env!("CARGO_PKG_VERSION"),
            metrics.map_or_else(String::new, |a| format!("; metrics on http://{a}/metrics"))
        );
        let _ = out.flush();
    }
    app::cancel_on_signal(state.app.shutdown.clone());
    state.app.shutdown.cancelled().await;
    tracing::info!("worker stopping; finishing or handing over in-flight steps");
    background.shutdown(grace).await;
    Ok(ExitCode::SUCCESS)
}

async fn serve(config: Config, demo: bool) -> anyhow::Result<ExitCode> {
    // The port first: a start that cannot listen (address taken) must stop before the
    // one-time bootstrap, or the generated admin password would be printed by a process
    // that dies and never shown again.
    let listener = app::bind(config.listen).await?;
    let applied = migrate::run_pending(&config.database_url)
        .await
        .context("running migrations")?;
    if !applied.is_empty() {
        tracing::info!(versions = applied.join(","), "migrations applied");
    }
    let backend = config.database_url.redacted();
    let state = AppState::new(config).await?;
    let bootstrapped = agentplane::bootstrap::ensure_platform_admin(&state.app).await?;
    if bootstrapped.is_none() {
        let email = &state.app.config.auth.bootstrap_admin_email;
        println!(
            "platform admin {email} exists; lost its password? \
             `agentplane admin reset-password --email {email}` prints a new one"
        );
    }
    if let Some(b) = bootstrapped {
        match b.generated_password {
            Some(p) => println!(
                "created platform admin {} with generated password (shown once): {p}",
                b.admin_email
            ),
            None => println!(
                "created platform admin {} with the password from AGENTPLANE_BOOTSTRAP_ADMIN_PASSWORD",
                b.admin_email
            ),
        }
    }
    let addr = listener.local_addr().context("reading the bound address")?;
    if demo {
        print_demo(
            agentplane::bootstrap::seed_demo(&state.app).await?,
            &format!("http://{addr}"),
        );
    }
    tracing::info!(%addr, database = %backend, "agentplane listening");
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "agentplane {} listening on http://{addr} (GraphiQL: http://{addr}/graphql)",
            env!("CARGO_PKG_VERSION")
        );
        let _ = out.flush();
    }
    app::cancel_on_signal(state.app.shutdown.clone());
    app::serve_metrics(&state).await?;
    app::serve(state, listener).await?;
    Ok(ExitCode::SUCCESS)
}
