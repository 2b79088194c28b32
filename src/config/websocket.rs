//! `websocket`: init timeout, caps per address/socket/principal, credential re-checks.

use super::ConfigError;
use super::layers::{Layers, parse_num, toml_scalar};
use serde::Deserialize;
use std::time::Duration;

/// GraphQL-over-WebSocket limits.
#[derive(Debug, Clone)]
pub struct WebsocketConfig {
    /// A socket that has not sent `connection_init` by then is closed with 4408.
    pub init_timeout: Duration,
    /// Open sockets per client address; more are refused with 429.
    pub max_connections_per_address: usize,
    /// Operations running at once on one socket.
    pub max_subscriptions_per_socket: usize,
    /// Operations running at once for one user or API key, over all its sockets.
    pub max_subscriptions_per_principal: usize,
    /// How often an open socket re-checks its credential and rights while this process
    /// does not hear authentication changes (`auth::cache`'s follower is down). While it
    /// does, a socket re-checks only when its tenant's authentication changes.
    pub recheck_interval: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileWebsocket {
    pub(super) init_timeout_secs: Option<toml::Value>,
    pub(super) max_connections_per_address: Option<toml::Value>,
    pub(super) max_subscriptions_per_socket: Option<toml::Value>,
    pub(super) max_subscriptions_per_principal: Option<toml::Value>,
    pub(super) recheck_secs: Option<toml::Value>,
}

/// Reads the section from its layers.
pub(super) fn load(
    layers: &Layers<'_>,
    file: FileWebsocket,
) -> Result<WebsocketConfig, ConfigError> {
    let websocket = WebsocketConfig {
        init_timeout: Duration::from_secs(parse_num(
            layers.pick(
                "AGENTPLANE_WS_INIT_TIMEOUT_SECS",
                "websocket.init_timeout_secs",
                toml_scalar(file.init_timeout_secs),
            ),
            10u64,
            1,
            300,
            "seconds between 1 and 300",
        )?),
        max_connections_per_address: parse_num(
            layers.pick(
                "AGENTPLANE_WS_MAX_CONNECTIONS_PER_ADDRESS",
                "websocket.max_connections_per_address",
                toml_scalar(file.max_connections_per_address),
            ),
            100usize,
            1,
            100_000,
            "a number of sockets between 1 and 100000",
        )?,
        max_subscriptions_per_socket: parse_num(
            layers.pick(
                "AGENTPLANE_WS_MAX_SUBSCRIPTIONS_PER_SOCKET",
                "websocket.max_subscriptions_per_socket",
                toml_scalar(file.max_subscriptions_per_socket),
            ),
            100usize,
            1,
            10_000,
            "a number of operations between 1 and 10000",
        )?,
        max_subscriptions_per_principal: parse_num(
            layers.pick(
                "AGENTPLANE_WS_MAX_SUBSCRIPTIONS_PER_PRINCIPAL",
                "websocket.max_subscriptions_per_principal",
                toml_scalar(file.max_subscriptions_per_principal),
            ),
            500usize,
            1,
            100_000,
            "a number of operations between 1 and 100000",
        )?,
        recheck_interval: Duration::from_secs(parse_num(
            layers.pick(
                "AGENTPLANE_WS_RECHECK_SECS",
                "websocket.recheck_secs",
                toml_scalar(file.recheck_secs),
            ),
            5u64,
            1,
            3600,
            "seconds between 1 and 3600",
        )?),
    };

    Ok(websocket)
}
