//! What each STS session carries: its duration, its SourceIdentity and its tags.

use std::time::{Duration, SystemTime};

use credbroker_provider_api::{ErrorKind, ProviderError, TaskContext};

use crate::grant::MIN_DURATION;

/// The owner, as STS accepts a SourceIdentity (2–64 of `[\w+=,.@-]`); the subject when the task
/// has no owner. Once set, SourceIdentity cannot be changed by chained sessions.
pub(crate) fn source_identity(task: &TaskContext) -> Option<String> {
    let who = task.owner.as_deref().unwrap_or(&task.subject);
    Some(crate::identity::source_identity(who))
}

/// The session tags: who and what the session is for, for CloudTrail and for ABAC conditions.
pub(crate) fn session_tags<'a>(
    task: &'a TaskContext,
    grant: &'a str,
) -> Vec<(&'static str, String)> {
    let mut tags = Vec::with_capacity(4);
    if let Some(owner) = &task.owner {
        tags.push(("credbroker:owner", crate::identity::tag_value(owner)));
    }
    tags.push(("credbroker:task", crate::identity::tag_value(&task.task_id)));
    tags.push((
        "credbroker:client",
        crate::identity::tag_value(&task.client_id),
    ));
    tags.push(("credbroker:grant", crate::identity::tag_value(grant)));
    tags
}

/// STS's DurationSeconds for a credential wanted until `wanted`: the time left, rounded up to
/// STS's 15-minute floor, no longer than the grant's duration or the role's maximum.
pub(crate) fn duration_for(
    wanted: SystemTime,
    now: SystemTime,
    grant: Duration,
    role_max: Duration,
) -> Duration {
    let left = wanted.duration_since(now).unwrap_or_default();
    let left = Duration::from_secs(left.as_secs() + u64::from(left.subsec_nanos() > 0));
    left.min(grant).min(role_max).max(MIN_DURATION)
}

pub(crate) fn duration_refused(e: &ProviderError) -> bool {
    e.kind == ErrorKind::Config
        && (e.message.contains("DurationSeconds") || e.message.contains("MaxSessionDuration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_follow_the_task_within_sts_and_role_limits() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = Duration::from_secs(3600);
        let d = |left: u64, grant: u64, max: u64| {
            duration_for(
                now + Duration::from_millis(left),
                now,
                Duration::from_secs(grant),
                Duration::from_secs(max),
            )
            .as_secs()
        };
        assert_eq!(d(120_000, 3600, 43200), 900, "raised to STS's floor");
        assert_eq!(
            d(1_800_500, 3600, 43200),
            1801,
            "the task's time, rounded up"
        );
        assert_eq!(d(7_200_000, 3600, 43200), 3600, "the grant's duration");
        assert_eq!(d(7_200_000, 7200, 3600), 3600, "the role's maximum");
        assert_eq!(duration_for(now, now + hour, hour, hour).as_secs(), 900);
    }

    #[test]
    fn tags_and_source_identity_name_the_human() {
        let task = TaskContext {
            task_id: "t-1".into(),
            subject: "sub|123".into(),
            client_id: "agent/1".into(),
            owner: Some("alice smith@example.com".into()),
            ..TaskContext::default()
        };
        assert_eq!(
            source_identity(&task).as_deref(),
            Some("alice=20smith@example.com")
        );
        let tags = session_tags(&task, "s3-read");
        assert_eq!(
            tags,
            [
                ("credbroker:owner", "alice smith@example.com".to_string()),
                ("credbroker:task", "t-1".into()),
                ("credbroker:client", "agent/1".into()),
                ("credbroker:grant", "s3-read".into()),
            ]
        );
        let anonymous = TaskContext {
            owner: None,
            ..task
        };
        assert_eq!(source_identity(&anonymous).as_deref(), Some("sub=7C123"));
        assert_eq!(session_tags(&anonymous, "g").len(), 3);
    }
}
