//! The `agentplane` command line.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use agentplane::config::{CliOverrides, Config};
use agentplane::db::{DbPool, migrate};
use agentplane::server::{self as app, AppState};

/// Control plane of an AI-agent workflow platform, served as one GraphQL schema.
#[derive(Debug, Parser)]
#[command(name = "agentplane", version, about, propagate_version = true)]
struct Cli {
    /// Optional TOML configuration file (environment variables override it).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply pending migrations, then serve GraphQL over HTTP and WebSocket.
    Serve {
        /// Listen address (overrides AGENTPLANE_LISTEN).
        #[arg(long, value_name = "IP:PORT")]
        listen: Option<String>,
        /// Also seed a demo tenant with one user per role (passwords printed once) and a team.
        #[arg(long)]
        demo: bool,
        /// Executions run at once by the embedded workers (overrides AGENTPLANE_WORKERS;
        /// 0 runs no workers: the API only).
        #[arg(long, value_name = "N")]
        workers: Option<usize>,
    },
    /// Run only workers (no HTTP): claim executions from the shared database and run them.
    Worker {
        /// Executions run at once (overrides AGENTPLANE_WORKERS).
        #[arg(long, value_name = "N")]
        workers: Option<usize>,
    },
    /// Apply pending migrations (or only check for them).
    Migrate {
        /// Exit with status 1 if any migration is pending; apply nothing.
        #[arg(long)]
        check: bool,
    },
    /// Print the GraphQL schema (SDL), sorted.
    Schema,
    /// Print what NVML sees on this machine (or why it sees nothing). Exits 1 when NVML
    /// cannot be loaded.
    GpuInfo,
    /// Start a published workflow (the latest version); prints the execution's ID, or
    /// with --watch follows it like `watch`.
    Start {
        /// The workflow's ID.
        workflow_id: String,
        /// The execution's input (JSON).
        #[arg(long, default_value = "{}")]
        input: String,
        /// Starts within 24 hours with the same key return the same execution.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Follow the execution until it ends (exit 0 only when it SUCCEEDED).
        #[arg(long)]
        watch: bool,
        /// With --watch: print each event as a JSON line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Follow one execution live over the websocket: one line per event until it ends.
    /// Exits 0 when it SUCCEEDED, 1 when it FAILED or was CANCELLED.
    Watch {
        /// The execution's ID (from startExecution).
        execution_id: String,
        /// Print each event as a JSON line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Operator commands.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

/// Where a client command talks to, and as whom.
#[derive(Debug, clap::Args)]
struct Remote {
    /// The server.
    #[arg(
        long,
        env = "AGENTPLANE_SERVER",
        default_value = "http://127.0.0.1:8000"
    )]
    server: String,
    /// An access token or API key.
    #[arg(long, env = "AGENTPLANE_TOKEN", hide_env_values = true)]
    token: String,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Validate the configuration and print the effective values (secrets redacted).
    CheckConfig,
    /// Print the role × permission matrix (Markdown).
    Permissions,
    /// Re-encrypt every tenant secret under the current AGENTPLANE_MASTER_KEY (keep the
    /// previous key in AGENTPLANE_OLD_MASTER_KEYS while this runs).
    ReencryptSecrets,
    /// Make a new access-token signing key; older keys keep verifying until tokens expire.
    RotateSigningKey,
    /// Create a tenant and its OWNER (the owner's password is generated and printed once).
    CreateTenant {
        /// URL-safe handle.
        #[arg(long)]
        slug: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// FREE, PRO, ENTERPRISE or CUSTOM.
        #[arg(long, default_value = "FREE")]
        plan: String,
        /// The owner's e-mail.
        #[arg(long)]
        owner_email: String,
        /// The owner's display name.
        #[arg(long, default_value = "Owner")]
        owner_name: String,
    },
    /// Create a user in a tenant (the password is generated and printed once).
    CreateUser {
        /// The tenant's slug.
        #[arg(long)]
        tenant: String,
        /// E-mail address.
        #[arg(long)]
        email: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// Built-in role: OWNER, ADMIN, DEVELOPER, OPERATOR, ANALYST, VIEWER (PLATFORM_ADMIN in the system tenant).
        #[arg(long)]
        role: String,
    },
    /// Turn off a user's second factor (lost device, no recovery code, nobody left to
    /// reset it); they sign in with the password and enrol again.
    ResetMfa {
        /// The user's e-mail address.
        #[arg(long)]
        email: String,
    },
    /// Empty a tenant's allowedIpRanges (a list that locks everyone out).
    ClearIpRanges {
        /// The tenant's slug.
        #[arg(long)]
        tenant: String,
    },
    /// Set a new password for a user (prompted on stdin, or generated and printed).
    ResetPassword {
        /// The user's e-mail address.
        #[arg(long)]
        email: String,
        /// Read the new password from standard input instead of generating one.
        #[arg(long)]
        stdin: bool,
    },
}

/// The process's allocator: mimalloc, or the C library's (`AGENTPLANE_ALLOCATOR=system`).
///
/// Chosen once, by the first allocation (before `main`), from the environment, and never
/// changed: every block is freed by the allocator that gave it. mimalloc's thread-local
/// free lists and size-class pages cost less per allocation than glibc's arenas, and
/// building a GraphQL response is thousands of small allocations (see `bench/README.md`
/// for the measurement). `system` keeps glibc with the arena bound and the trimmer below.
struct Allocator;

#[global_allocator]
static ALLOCATOR: Allocator = Allocator;

/// 0 until the first allocation decides; then [`MIMALLOC`] or [`SYSTEM`].
static ALLOCATOR_CHOICE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
const MIMALLOC: u8 = 1;
const SYSTEM: u8 = 2;

impl Allocator {
    #[inline]
    fn mimalloc(&self) -> bool {
        use std::sync::atomic::Ordering;
        match ALLOCATOR_CHOICE.load(Ordering::Relaxed) {
            MIMALLOC => true,
            SYSTEM => false,
            _ => {
                let choice = if system_allocator_requested() {
                    SYSTEM
                } else {
                    MIMALLOC
                };
                // Threads racing here read the same environment: they store the same value.
                ALLOCATOR_CHOICE.store(choice, Ordering::Relaxed);
                choice == MIMALLOC
            }
        }
    }
}

/// Whether `AGENTPLANE_ALLOCATOR` is `system`, read without allocating (it runs inside the
/// first allocation).
#[expect(
    unsafe_code,
    reason = "getenv reads the environment without allocating; the name is NUL-terminated"
)]
fn system_allocator_requested() -> bool {
    // SAFETY: a NUL-terminated name; the result is NULL or a NUL-terminated string that
    // lives as long as the environment, which nothing changes this early.
    let value = unsafe { libc::getenv(c"AGENTPLANE_ALLOCATOR".as_ptr()) };
    // SAFETY: non-null, so a NUL-terminated string (above).
    !value.is_null() && unsafe { std::ffi::CStr::from_ptr(value) }.to_bytes() == b"system"
}

/// Whether this process allocates with the C library's allocator.
fn system_allocator() -> bool {
    !ALLOCATOR.mimalloc()
}

// SAFETY: each call goes to one allocator, the same for the life of the process, so every
// block is freed and resized by the allocator that gave it; both uphold `GlobalAlloc`.
#[expect(unsafe_code, reason = "the global allocator forwards to mimalloc or the system's")]
unsafe impl std::alloc::GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe {
            if self.mimalloc() {
                mimalloc::MiMalloc.alloc(layout)
            } else {
                std::alloc::System.alloc(layout)
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe {
            if self.mimalloc() {
                mimalloc::MiMalloc.alloc_zeroed(layout)
            } else {
                std::alloc::System.alloc_zeroed(layout)
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: the caller's contract, passed on; `ptr` came from the same allocator.
        unsafe {
            if self.mimalloc() {
                mimalloc::MiMalloc.dealloc(ptr, layout);
            } else {
                std::alloc::System.dealloc(ptr, layout);
            }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on; `ptr` came from the same allocator.
        unsafe {
            if self.mimalloc() {
                mimalloc::MiMalloc.realloc(ptr, layout, new)
            } else {
                std::alloc::System.realloc(ptr, layout, new)
            }
        }
    }
}

/// glibc gives each thread that allocates an arena of its own, up to 8 per core, and
/// keeps what is freed in each: memory a websocket's setup allocated on one thread stays
/// with that thread's arena. Measured with 2,000 idle subscribers: 43 KiB of RSS each
/// with the default, 14 KiB with two arenas. Too few arenas make threads queue on their
/// locks instead: on 2 cores the nested read ran at 106/s with 2 arenas, 148/s with 4,
/// 179/s with 8 (37 KiB per idle subscriber). So the arenas are bounded to two per core
/// (at least 4), unless `MALLOC_ARENA_MAX` already chose.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[expect(
    unsafe_code,
    reason = "mallopt only sets an allocator parameter, before any other thread exists"
)]
fn bound_malloc_arenas() {
    if !system_allocator() || std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let arenas = libc::c_int::try_from(cores.saturating_mul(2).max(4)).unwrap_or(libc::c_int::MAX);
    // SAFETY: sets one malloc tunable; no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn bound_malloc_arenas() {}

/// glibc keeps what the program frees in its arenas for reuse; only the top of each
/// heap shrinks by itself. After a burst (a thousand websockets set up at once, a load
/// run) most of it stays resident although nothing uses it: after a load run and 1,000
/// subscribers, the server held 174 MiB of RSS, 110 MiB after one `malloc_trim` (measured
/// with `gdb`). A thread of its own looks every `interval`: when the arenas hold 4 MiB or
/// more of freed memory (`mallinfo2`) and either that or the resident size grew by a MiB
/// since the last look, it returns their free pages to the system (`malloc_trim`). A
/// process whose memory does not move does nothing more.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[expect(
    unsafe_code,
    reason = "sysconf, mallinfo2 and malloc_trim read and trim glibc's own allocator state"
)]
fn start_memory_trimmer(interval: Option<Duration>) {
    const FREE_AT_LEAST: usize = 4 << 20;
    const MOVED_BY: usize = 1 << 20;
    let Some(interval) = interval else { return };
    if !system_allocator() {
        return;
    }
    // SAFETY: reads a constant of the system; no pointers.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let resident = move || -> Option<usize> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages.saturating_mul(page))
    };
    let spawned = std::thread::Builder::new()
        .name("memory-trim".into())
        .spawn(move || {
            let (mut last_resident, mut last_free): (usize, usize) = (0, 0);
            loop {
                std::thread::sleep(interval);
                let Some(now) = resident() else { return };
                // SAFETY: reads the allocator's statistics; takes and returns no pointers.
                let free = unsafe { libc::mallinfo2() }.fordblks;
                let moved = now >= last_resident.saturating_add(MOVED_BY)
                    || free >= last_free.saturating_add(MOVED_BY);
                (last_resident, last_free) = (now, free);
                if free < FREE_AT_LEAST || !moved {
                    continue;
                }
                let started = std::time::Instant::now();
                // SAFETY: glibc locks each arena while it trims it; callable from any thread.
                unsafe { libc::malloc_trim(0) };
                last_resident = resident().unwrap_or(now);
                tracing::debug!(
                    free_bytes = free,
                    resident_before = now,
                    resident_after = last_resident,
                    micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                    "returned freed memory to the system"
                );
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "the memory trimming thread did not start");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn start_memory_trimmer(_interval: Option<Duration>) {}

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
    let allocator = if system_allocator() {
        "system"
    } else {
        "mimalloc"
    };
    tracing::info!(%addr, database = %backend, allocator, "agentplane listening");
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
