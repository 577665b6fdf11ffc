//! BeginTask idempotency: a retry after a lost answer.
//!
//! A client whose BeginTask answer was lost (a reset, a daemon killed just after committing
//! `task_begun`) cannot end a task it never heard of; its credential stayed usable until the
//! task's TTL. With an idempotency key the retry finds that task: the key is journaled with the
//! intent (so a second use conflicts before any provider is called), and the retry ends the
//! first attempt's task and says so. The credentials are not handed out again: the daemon does
//! not keep secrets to deliver twice, and the client begins afresh with a new key.

use aws_lc_rs::digest::{SHA256, digest};

use super::end::Ender;
use super::{Broker, BrokerError, ErrorKind};
use crate::journal::read;
use crate::policy::GrantAsk;

/// A key as the request carried it, with the digest of everything the request asked for.
pub(crate) struct BeginKey {
    pub(crate) key: String,
    pub(crate) digest: [u8; 32],
}

/// Keys are chosen by clients: plain, bounded, never parsed further.
pub(crate) fn check_key(key: &str) -> Result<(), BrokerError> {
    if key.is_empty()
        || key.len() > 128
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
    {
        return Err(BrokerError::invalid(
            "invalid_idempotency_key",
            "idempotency keys are 1-128 characters of [A-Za-z0-9._:-]",
        ));
    }
    Ok(())
}

/// The request a key stands for: the token (by fingerprint), the tool, the grants with their
/// narrowing, the TTL. A retry must ask for exactly the same.
pub(crate) fn request_digest(
    token_fp: &str,
    tool: &str,
    grants: &[GrantAsk],
    ttl_secs: Option<u64>,
) -> [u8; 32] {
    let grants: Vec<(&str, &std::collections::BTreeMap<String, Vec<String>>)> = grants
        .iter()
        .map(|g| (g.name.as_str(), &g.narrow))
        .collect();
    let canonical = serde_json::json!([token_fp, tool, grants, ttl_secs]).to_string();
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, canonical.as_bytes()).as_ref());
    out
}

impl Broker {
    /// The key was used before by this workload: end what the first attempt began. Always an
    /// error for the caller: `begin_replayed` (ended), or why the replay cannot be honoured.
    pub(super) async fn replay(&self, workload: &str, key: &BeginKey) -> BrokerError {
        match self.replay_inner(workload, key).await {
            Ok(e) | Err(e) => e,
        }
    }

    async fn replay_inner(
        &self,
        workload: &str,
        key: &BeginKey,
    ) -> Result<BrokerError, BrokerError> {
        let (w, k) = (workload.to_string(), key.key.clone());
        let found = self
            .journal
            .read(move |c| read::begin_key(c, &w, &k))
            .await
            .map_err(|e| BrokerError::journal(&e))?;
        let Some((task_id, digest)) = found else {
            // Either the row is gone (cannot happen while keys are kept), or the first attempt's
            // intent never reached SQLite (the journal failed): the next start settles it.
            return Err(BrokerError::new(
                ErrorKind::Unavailable,
                "idempotency_key_lost",
                "this idempotency key was used, but its task is not in the journal yet",
            ));
        };
        if digest != key.digest {
            return Err(BrokerError::new(
                ErrorKind::FailedPrecondition,
                "idempotency_key_reused",
                "this idempotency key was used for a different request; use a new key",
            ));
        }
        let ended = self
            .end_task(
                &task_id,
                Ender::Replay {
                    workload: workload.to_string(),
                },
            )
            .await?;
        let mut e = BrokerError::new(
            ErrorKind::Aborted,
            "begin_replayed",
            format!(
                "this key already began task {task_id}, whose answer was lost; that task is {} \
                 and its credentials are revoked, never handed out twice: begin again with a new key",
                ended.task.state.as_str()
            ),
        );
        e.task_id = Some(task_id);
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_plain_and_digests_cover_the_whole_request() {
        assert!(check_key("0197a0c2-1b2c-7d3e-8f40-123456789abc").is_ok());
        for bad in ["", "a b", "a/b", "ä", &"x".repeat(129)] {
            assert_eq!(
                check_key(bad).err().map(|e| e.code),
                Some("invalid_idempotency_key".into()),
                "{bad:?}"
            );
        }
        let g = |n: &str| GrantAsk {
            name: n.into(),
            narrow: Default::default(),
        };
        let base = request_digest("fp", "query", &[g("a")], Some(60));
        assert_eq!(base, request_digest("fp", "query", &[g("a")], Some(60)));
        assert_ne!(base, request_digest("fp2", "query", &[g("a")], Some(60)));
        assert_ne!(base, request_digest("fp", "other", &[g("a")], Some(60)));
        assert_ne!(base, request_digest("fp", "query", &[g("b")], Some(60)));
        assert_ne!(base, request_digest("fp", "query", &[g("a")], None));
        let mut narrowed = g("a");
        narrowed.narrow.insert("items".into(), vec!["x".into()]);
        assert_ne!(base, request_digest("fp", "query", &[narrowed], Some(60)));
    }
}
