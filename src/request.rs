//! Who sent a request and under which id: plain values the transport fills in and
//! every layer below reads (audit records, lockout, limits).

/// The request id of the current HTTP request or websocket connection.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Where a request came from; recorded by security features (lockout, audit).
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// Peer address.
    pub ip: std::net::IpAddr,
    /// `User-Agent`, truncated to 256 characters.
    pub user_agent: Option<String>,
}
