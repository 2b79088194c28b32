//! The router's state: the shared `App` plus the executable schemas.

use std::sync::Arc;

use crate::app::App;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::graphql::{AppSchema, build_schema};

/// Cheap handle to the shared state plus the executable schema (the router's state).
#[derive(Clone)]
pub struct AppState {
    /// Shared state.
    pub app: Arc<App>,
    /// The GraphQL schema, holding `Arc<App>` as context data.
    pub schema: AppSchema,
    /// The same schema for requests without credentials (see `graphql.anonymous_*`).
    pub anonymous_schema: AppSchema,
    /// Admission: requests served at once (`http.max_in_flight`).
    pub in_flight: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// Connects to storage (migrations must already be applied) and builds the schema.
    pub async fn new(config: Config) -> anyhow::Result<Self> {
        Self::with_clock(config, Arc::new(SystemClock)).await
    }

    /// Like [`AppState::new`] with an explicit clock.
    pub async fn with_clock(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let app = Arc::new(App::connect(config, clock).await?);
        let schema = build_schema(Some(app.clone()));
        let anonymous_schema = crate::graphql::build_anonymous_schema(app.clone());
        let in_flight = Arc::new(tokio::sync::Semaphore::new(app.config.http.max_in_flight));
        Ok(Self {
            in_flight,
            app,
            schema,
            anonymous_schema,
        })
    }
}
