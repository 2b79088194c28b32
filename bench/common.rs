//! What every bench shares: knobs from the environment, percentiles, and a fresh
//! database (a SQLite temp file, or a PostgreSQL schema dropped afterwards).

#![allow(dead_code, reason = "each bench uses its part")]

/// A numeric knob from the environment.
pub fn env_num(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p` quantile of sorted samples (NaN when there are none).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

/// A database for one run: `DATABASE_URL=postgres://…` gets a fresh schema (dropped by
/// [`BenchDb::drop_schema`]); anything else a SQLite file in a temp folder.
pub struct BenchDb {
    /// What to put in `DATABASE_URL`.
    pub url: String,
    /// `(server URL, schema)` on PostgreSQL.
    pub pg: Option<(String, String)>,
    /// Holds the SQLite file (and a place for logs) until the run ends.
    pub tmp: tempfile::TempDir,
}

impl BenchDb {
    /// Creates the database; `name` prefixes the PostgreSQL schema.
    pub async fn create(name: &str) -> anyhow::Result<Self> {
        let tmp = tempfile::tempdir()?;
        let (url, pg) = match std::env::var("DATABASE_URL") {
            Ok(u) if u.starts_with("postgres") => {
                let schema = format!("{name}_{}", std::process::id());
                exec_pg(&u, &format!("CREATE SCHEMA {schema}")).await?;
                (
                    format!("{u}?options=-c%20search_path%3D{schema}"),
                    Some((u, schema)),
                )
            }
            _ => (
                format!("sqlite://{}", tmp.path().join("bench.db").display()),
                None,
            ),
        };
        Ok(Self { url, pg, tmp })
    }

    /// Drops the PostgreSQL schema (SQLite's file goes with the temp folder).
    pub async fn drop_schema(&self) -> anyhow::Result<()> {
        if let Some((base, schema)) = &self.pg {
            exec_pg(base, &format!("DROP SCHEMA {schema} CASCADE")).await?;
        }
        Ok(())
    }
}

/// Runs statements on PostgreSQL through a plain diesel-async connection.
pub async fn exec_pg(url: &str, sql: &str) -> anyhow::Result<()> {
    use diesel_async::{AsyncConnection as _, SimpleAsyncConnection as _};
    let mut conn = diesel_async::AsyncPgConnection::establish(url).await?;
    conn.batch_execute(sql).await?;
    Ok(())
}
