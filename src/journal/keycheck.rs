//! Proof that the journal key is the one the journal was written with.
//!
//! A wrong key (a new `keygen`, the wrong credential) used to be accepted at start: the daemon
//! recorded `daemon_started success` and then could not open a single revocation handle, so
//! nothing issued before could be revoked. Now the journal keeps a check value sealed with its
//! key (under associated data no lease id can have) and a daemon whose key does not open it
//! refuses to start, and a reload that would change the key is refused.

use super::seal::Sealer;
use super::{Journal, JournalError, Op, read};
use credbroker_provider_api::SecretValue;

const NAME: &str = "journal_key_check";
/// Associated data of the check value: not a UUID, so no lease's handle can pass for it.
const AAD: &str = "credbroker journal key check v1";

#[derive(Debug, thiserror::Error)]
pub enum KeyCheckError {
    #[error(
        "the journal key does not open this journal: it is not the key the journal was written \
         with. Revocation handles sealed with the old key could never be opened. Restore the \
         key the journal was created with (or move the journal aside to start afresh)"
    )]
    WrongKey,
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl Journal {
    /// Checks `sealer` against the journal; records the check value on first use. A journal
    /// written before the check existed proves the key with any sealed handle it holds.
    pub async fn check_key(&self, sealer: &Sealer) -> Result<(), KeyCheckError> {
        let (check, sample) = self
            .read(|c| Ok((read::meta(c, NAME)?, read::any_sealed_handle(c)?)))
            .await?;
        match (check, sample) {
            (Some(check), _) => sealer
                .open(AAD, &check)
                .map(drop)
                .map_err(|_| KeyCheckError::WrongKey),
            (None, sample) => {
                if let Some((lease, sealed)) = sample
                    && sealer.open(&lease, &sealed).is_err()
                {
                    return Err(KeyCheckError::WrongKey);
                }
                let value = sealer
                    .seal(AAD, &SecretValue::new(AAD))
                    .map_err(|e| JournalError::Encode(e.to_string()))?;
                self.commit(vec![Op::SetMeta { name: NAME, value }]).await?;
                Ok(())
            }
        }
    }

    /// The same check for a key read on reload, without recording anything.
    pub async fn key_matches(&self, sealer: &Sealer) -> Result<bool, JournalError> {
        let check = self.read(|c| read::meta(c, NAME)).await?;
        Ok(check.is_none_or(|c| sealer.open(AAD, &c).is_ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_new_key_is_refused_and_the_right_one_accepted() {
        let dir = tempfile::tempdir().expect("a temp dir for the journal should be created");
        let path = dir.path().join("j.db");
        let right =
            Sealer::from_bytes(&[7u8; 32]).expect("the right 32-byte key should build a sealer");
        let wrong = Sealer::from_bytes(&[8u8; 32])
            .expect("the wrong 32-byte key should build a sealer too");
        let j = Journal::open(&path).expect("a fresh journal should open");
        assert!(
            j.check_key(&right).await.is_ok(),
            "first use records the check"
        );
        assert!(j.check_key(&right).await.is_ok());
        assert!(matches!(
            j.check_key(&wrong).await,
            Err(KeyCheckError::WrongKey)
        ));
        assert_eq!(j.key_matches(&right).await.ok(), Some(true));
        assert_eq!(j.key_matches(&wrong).await.ok(), Some(false));
    }
}
