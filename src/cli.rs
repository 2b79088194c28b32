//! The `agentplane` binary's command line: its commands and options (a module of
//! `main.rs`, not of the library).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Control plane of an AI-agent workflow platform, served as one GraphQL schema.
#[derive(Debug, Parser)]
#[command(name = "agentplane", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// Optional TOML configuration file (environment variables override it).
    #[arg(long, global = true, value_name = "PATH")]
    pub(crate) config: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
pub(crate) struct Remote {
    /// The server.
    #[arg(
        long,
        env = "AGENTPLANE_SERVER",
        default_value = "http://127.0.0.1:8000"
    )]
    pub(crate) server: String,
    /// An access token or API key.
    #[arg(long, env = "AGENTPLANE_TOKEN", hide_env_values = true)]
    pub(crate) token: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AdminCommand {
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
