//! Taking back what Vault issued: revoking tokens by accessor and leases by id, renewing
//! leases, and telling "already gone" from a backend failure.

use credbroker_provider_api::{ProviderError, Revoked};
use reqwest::Method;
use serde_json::json;

use crate::client::Failure;
use crate::provider::Inner;

/// Whether a failed revocation means the lease or token is already gone. Almost never: OpenBao
/// answers 204 to revoking an unknown lease and 200 with a warning for an unknown accessor
/// (both handled as successes by the callers). A 400 is what a *backend* failure looks like
/// (a revocation statement that fails, `failed to revoke entry: …`), whatever words the
/// backend's own message happens to contain, so only Vault's own phrases for an id that does
/// not exist count, matched whole, never as words inside another message.
fn gone(f: &Failure) -> bool {
    const GONE: [&str; 4] = [
        "lease not found",
        "invalid lease",
        "invalid lease id",
        "token not found",
    ];
    f.status()
        .is_some_and(|s| s.as_u16() == 400 || s.as_u16() == 404)
        && f.errors()
            .iter()
            .any(|e| GONE.contains(&e.trim().trim_end_matches('.').to_ascii_lowercase().as_str()))
}

impl Inner {
    /// `sys/leases/renew` to `secs` from now; returns the lease's new duration.
    pub(crate) async fn renew_lease(
        &self,
        lease_id: &str,
        secs: u64,
    ) -> Result<u64, ProviderError> {
        let body = json!({ "lease_id": lease_id, "increment": secs });
        let env = self
            .with_token(|t| {
                let body = body.clone();
                async move {
                    self.client
                        .call(Method::PUT, "sys/leases/renew", Some(&t), Some(&body))
                        .await
                }
            })
            .await
            .map_err(|f| f.retryable("renewing a lease"))?;
        Ok(env.map_or(secs, |e| e.lease_duration))
    }

    pub(crate) async fn revoke_accessor(&self, accessor: &str) -> Result<Revoked, ProviderError> {
        let body = json!({ "accessor": accessor });
        match self
            .with_token(|t| {
                let body = body.clone();
                async move {
                    self.client
                        .call(
                            Method::POST,
                            "auth/token/revoke-accessor",
                            Some(&t),
                            Some(&body),
                        )
                        .await
                }
            })
            .await
        {
            // An unknown accessor is a 200 with a warning, not an error.
            Ok(Some(env))
                if env
                    .warnings
                    .iter()
                    .flatten()
                    .any(|w| w.contains("No token found")) =>
            {
                Ok(Revoked::AlreadyGone)
            }
            Ok(_) => Ok(Revoked::Revoked),
            Err(f) if gone(&f) => Ok(Revoked::AlreadyGone),
            Err(f) => Err(f.retryable("revoking a token")),
        }
    }

    pub(crate) async fn revoke_lease(&self, lease_id: &str) -> Result<Revoked, ProviderError> {
        let body = json!({ "lease_id": lease_id });
        match self
            .with_token(|t| {
                let body = body.clone();
                async move {
                    self.client
                        .call(Method::PUT, "sys/leases/revoke", Some(&t), Some(&body))
                        .await
                }
            })
            .await
        {
            Ok(_) => Ok(Revoked::Revoked),
            Err(f) if gone(&f) => Ok(Revoked::AlreadyGone),
            Err(f) => Err(f.retryable("revoking a lease")),
        }
    }
}
