//! `[abuse]`: the detectors that draw conclusions from requests, and what each does about it.
//! Absent, no detector runs and the request path pays nothing for them.

use std::time::Duration;

use super::KeySource;

/// What a detector does when it fires, in the order written (all of them run).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Response {
    /// An `abuse_detected` record, and nothing else (always written).
    Log,
    /// Refuse the request that fired it (`abuse_detected`).
    Deny,
    /// End every task of that token and refuse it until it expires.
    RevokeToken,
    /// End every task of that client and refuse its tokens for `block_for`.
    RevokeClient,
    /// End every task of that owner and refuse their tokens for `block_for`.
    RevokeOwner,
    /// Send the finding to the webhook.
    Alert,
}

impl Response {
    pub const ALL: [Response; 6] = [
        Self::Log,
        Self::Deny,
        Self::RevokeToken,
        Self::RevokeClient,
        Self::RevokeOwner,
        Self::Alert,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::Deny => "deny",
            Self::RevokeToken => "revoke-token",
            Self::RevokeClient => "revoke-client",
            Self::RevokeOwner => "revoke-owner",
            Self::Alert => "alert",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Whose requests a counting detector counts together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Per {
    Token,
    Client,
    Owner,
}

impl Per {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Client => "client",
            Self::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Token, Self::Client, Self::Owner]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

/// A detector that fires on one event.
#[derive(Clone, Debug, PartialEq)]
pub struct Simple {
    pub responses: Vec<Response>,
    /// `token_reuse` only: at the gateway, also a client's call from a network (/24, /48) it
    /// was never seen from since the daemon started (its first network is trusted).
    pub new_network: bool,
}

/// A detector that fires when `threshold` events of one `per` fall within `window`.
#[derive(Clone, Debug, PartialEq)]
pub struct Counting {
    pub responses: Vec<Response>,
    pub threshold: u32,
    pub window: Duration,
    pub per: Per,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Webhook {
    pub url: String,
    /// The HMAC-SHA256 key the body is signed with.
    pub secret: KeySource,
    pub timeout: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AbuseConfig {
    /// How long `revoke-client` and `revoke-owner` refuse (a `revoke-token` block lasts until
    /// the token expires).
    pub block_for: Duration,
    pub webhook: Option<Webhook>,
    /// A token presented by a workload that is not its audience.
    pub wrong_audience: Option<Simple>,
    /// One token (jti) from two peers (uid, executable or unit), or from two networks at the
    /// gateway.
    pub token_reuse: Option<Simple>,
    /// Refusals for want of scope or grant, counted.
    pub scope_probing: Option<Counting>,
    /// BeginTasks and MCP calls, counted.
    pub rate: Option<Counting>,
    /// A blocked token (or a blocked client's or owner's) presented again.
    pub blocked_reuse: Option<Simple>,
}
