//! The generated workload API (`proto/credbroker/v1/broker.proto` and `types.proto`), client
//! side only. The daemon uses these same message types (its build maps them here with
//! `extern_path`), so a `Task` from the broker socket and one from the admin socket are one type.

#![allow(unreachable_pub, clippy::all, missing_docs, unused_qualifications)]

pub mod v1 {
    tonic::include_proto!("credbroker.v1");

    use std::fmt;

    // Hand-written because the derived ones would print the token or the secret values
    // (build.rs turns the derived `Debug` off for exactly these three messages).

    impl fmt::Debug for Credential {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Credential")
                .field("lease_id", &self.lease_id)
                .field("grant", &self.grant)
                .field("provider", &self.provider)
                .field("kind", &self.kind)
                .field("expires_at", &self.expires_at)
                .field("public", &self.public)
                .field("secret", &crate::task::Redacted(self.secret.keys()))
                .finish()
        }
    }

    impl fmt::Debug for BeginTaskRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("BeginTaskRequest")
                .field("token", &"[REDACTED]")
                .field("tool", &self.tool)
                .field("grants", &self.grants)
                .field("ttl_seconds", &self.ttl_seconds)
                .field("idempotency_key", &self.idempotency_key)
                .field("call_id", &self.call_id)
                .finish()
        }
    }

    impl fmt::Debug for RenewTaskRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("RenewTaskRequest")
                .field("task_id", &self.task_id)
                .field("token", &"[REDACTED]")
                .field("ttl_seconds", &self.ttl_seconds)
                .finish()
        }
    }
}
