//! The broker in process (`harness`): begin, the gate, issue, end, expiry and revocation
//! retries, with time moved by hand. Each test runs in milliseconds.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::harness::Harness;
use crate::journal::rows::{LeaseState, TaskState};

const MIN: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_task_begins_issues_ends_and_is_journaled_in_order() {
    let h = Harness::new().await;
    let begun = h
        .begin(10 * MIN)
        .await
        .expect("a registered workload should begin a 10-minute task");
    let task = &begun.task.task;
    assert_eq!(task.state, TaskState::Active);
    assert_eq!(task.owner.as_deref(), Some("alice@example.com"));
    assert_eq!(begun.credentials.len(), 1);
    let lease = begun.task.leases[0].id.to_string();
    assert_eq!(h.mem.live(), std::slice::from_ref(&lease));

    let ended = h
        .broker
        .end_by_workload(&h.peer(), &task.id)
        .await
        .expect("the workload should end its own task");
    assert_eq!(ended.task.state, TaskState::Ended);
    assert_eq!(ended.leases[0].state, LeaseState::Revoked);
    assert!(h.mem.live().is_empty());
    assert_eq!(h.mem.revoked(), [lease]);
    // The intent went to the intent log, and its pin went with the answering commit.
    assert_eq!(h.broker.journal.intents_pinned(), 0);
    let events: Vec<String> = h.events().await.into_iter().map(|(e, _)| e).collect();
    assert_eq!(
        events,
        [
            "client_first_seen",
            "token_accepted",
            "task_opened",
            "lease_issued",
            "task_begun",
            "lease_revoked",
            "task_ended"
        ]
    );
}

/// The intent is in the intent log only when the provider fails: the failure must first put
/// the intent's rows into SQLite, then record the failure against them, and release the log.
#[tokio::test]
async fn a_failed_issue_journals_its_intent_then_its_failure() {
    let h = Harness::new().await;
    h.mem.fail_issue.store(true, Ordering::SeqCst);
    let err = h.begin(MIN).await.err();
    assert_eq!(err.map(|e| e.code).as_deref(), Some("provider_unavailable"));
    assert_eq!(h.broker.journal.intents_pinned(), 0);
    let events: Vec<String> = h.events().await.into_iter().map(|(e, _)| e).collect();
    assert_eq!(
        events,
        [
            "client_first_seen",
            "token_accepted",
            "task_opened",
            "lease_issue_failed",
            "task_ending",
            "task_ended"
        ]
    );
    assert!(h.mem.live().is_empty());
}

#[tokio::test]
async fn an_unknown_peer_is_refused_at_begin_and_at_end_and_both_are_audited() {
    let h = Harness::new().await;
    let begun = h
        .begin(10 * MIN)
        .await
        .expect("the registered peer should begin before the stranger");
    let refused = h.begin_as(&h.stranger(), h.token(), MIN).await.err();
    assert_eq!(refused.map(|e| e.code).as_deref(), Some("unknown_peer"));
    let refused = h
        .broker
        .end_by_workload(&h.stranger(), &begun.task.task.id)
        .await
        .err();
    assert_eq!(refused.map(|e| e.code).as_deref(), Some("unknown_peer"));
    assert_eq!(h.mem.live().len(), 1, "the stranger ended nothing");
    let rejected = h
        .events()
        .await
        .into_iter()
        .filter(|(e, r)| e == "peer_rejected" && r.as_deref() == Some("unknown_peer"))
        .count();
    assert_eq!(rejected, 2);
}

#[tokio::test]
async fn a_task_ends_when_the_clock_passes_its_expiry_and_not_before() {
    let h = Harness::new().await;
    let begun = h.begin(MIN).await.expect("a one-minute task should begin");
    h.clock.advance(Duration::from_secs(59));
    assert!(h.broker.reap_due().await.is_empty(), "not yet due");
    assert_eq!(h.mem.live().len(), 1);
    h.clock.advance(Duration::from_secs(2));
    let reaped = h.broker.reap_due().await;
    assert_eq!(reaped.len(), 1);
    let task = reaped[0]
        .as_ref()
        .expect("the expired task should be reaped cleanly");
    assert_eq!(task.task.id, begun.task.task.id);
    assert_eq!(task.task.state, TaskState::Ended);
    assert_eq!(task.task.end_reason.as_deref(), Some("expired"));
    assert!(h.mem.live().is_empty());
}

#[tokio::test]
async fn a_token_past_its_expiry_by_the_brokers_clock_is_refused() {
    let h = Harness::new().await;
    let token = h.token();
    // The fixture tokens live five minutes.
    h.clock.advance(Duration::from_secs(301));
    let refused = h.begin_as(&h.peer(), token, MIN).await.err();
    assert_eq!(refused.map(|e| e.code).as_deref(), Some("expired"));
    assert!(h.mem.live().is_empty());
}

#[tokio::test]
async fn a_failed_revocation_stays_revoking_until_a_retry_succeeds() {
    let h = Harness::new().await;
    let begun = h
        .begin(10 * MIN)
        .await
        .expect("a task should begin before revocation fails");
    let (task_id, lease_id) = (
        begun.task.task.id.to_string(),
        begun.task.leases[0].id.to_string(),
    );
    h.mem.fail_revoke.store(true, Ordering::SeqCst);
    let ending = h
        .broker
        .end_by_workload(&h.peer(), &task_id)
        .await
        .expect("ending should succeed and leave the lease revoking");
    assert_eq!(ending.task.state, TaskState::Ending);
    assert_eq!(ending.leases[0].state, LeaseState::Revoking);
    assert_eq!(ending.leases[0].attempts, 1);
    assert_eq!(h.mem.live().len(), 1, "still live at the backend");

    // The backend is back; the retry queue's next attempt settles it.
    h.mem.fail_revoke.store(false, Ordering::SeqCst);
    h.clock.advance(MIN);
    h.broker.retry_lease(&task_id, &lease_id).await;
    assert!(h.mem.live().is_empty());
    let events = h.events().await;
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert!(
        names.ends_with(&[
            "task_ending",
            "lease_revocation_failed",
            "lease_revoked",
            "task_ended"
        ]),
        "{names:?}"
    );
}

/// A panic while the state lock was held leaves memory possibly half updated: every request is
/// refused with `state_poisoned` (never treated as "no such task"), and nothing is issued.
#[tokio::test]
async fn a_poisoned_state_refuses_requests_instead_of_skipping_them() {
    let h = Harness::new().await;
    let begun = h
        .begin(10 * MIN)
        .await
        .expect("a task should begin before the lock is poisoned");
    let broker = std::sync::Arc::clone(&h.broker);
    let poisoned = std::thread::spawn(move || {
        let _held = broker.state.lock();
        panic!("a bug while the state lock is held");
    })
    .join();
    assert!(poisoned.is_err());
    let end = h
        .broker
        .end_by_workload(&h.peer(), &begun.task.task.id)
        .await;
    assert_eq!(end.err().map(|e| e.code).as_deref(), Some("state_poisoned"));
    let begin = h.begin(MIN).await;
    assert_eq!(
        begin.err().map(|e| e.code).as_deref(),
        Some("state_poisoned")
    );
    assert_eq!(
        h.mem.live().len(),
        1,
        "only the first task's credential was issued"
    );
}

#[tokio::test]
async fn renewal_extends_a_task_within_the_token_and_the_counts_follow() {
    let h = Harness::new().await;
    let begun = h
        .begin(2 * MIN)
        .await
        .expect("a two-minute task should begin");
    let first = begun.task.task.expires_ms;
    assert_eq!(h.broker.counts().active_tasks, 1);
    assert_eq!(h.broker.counts().active_leases, 1);
    h.clock.advance(MIN);
    let renewed = h
        .broker
        .renew(
            &h.peer(),
            super::RenewRequest {
                task_id: begun.task.task.id.to_string(),
                token: h.token(),
                ttl: Some(4 * MIN),
            },
        )
        .await
        .expect("renewal with a fresh token should extend the task");
    // Four minutes from now: longer than before, and inside the new token's five minutes.
    let now_ms = crate::time::to_ms(crate::time::Clock::now(&*h.clock));
    assert_eq!(renewed.task.expires_ms, now_ms + 4 * 60_000);
    assert!(renewed.task.expires_ms > first);
    // The old deadline passes; the task lives on until the new one.
    h.clock.advance(2 * MIN);
    assert!(h.broker.reap_due().await.is_empty());
    h.clock.advance(2 * MIN + Duration::from_secs(1));
    assert_eq!(h.broker.reap_due().await.len(), 1);
    assert_eq!(h.broker.counts().active_tasks, 0);
    assert_eq!(h.broker.counts().active_leases, 0);
}

#[tokio::test]
async fn retention_prunes_what_is_older_and_anchors_the_chain() {
    let h = Harness::with("[audit]\nretention = \"1day\"\n").await;
    let old = h
        .begin(MIN)
        .await
        .expect("the task to be pruned later should begin");
    h.broker
        .end_by_workload(&h.peer(), &old.task.task.id)
        .await
        .expect("the old task should end before it ages");
    assert_eq!(
        h.broker.prune_audit().await.ok(),
        Some(0),
        "nothing is old yet"
    );
    h.clock.advance(Duration::from_secs(2 * 24 * 3600));
    h.begin(MIN)
        .await
        .expect("a new task should begin two days later");
    assert_eq!(
        h.broker.prune_audit().await.ok(),
        Some(7),
        "the client's first sight and the first task's six records"
    );
    let events: Vec<String> = h.events().await.into_iter().map(|(e, _)| e).collect();
    assert_eq!(
        events,
        [
            "token_accepted",
            "task_opened",
            "lease_issued",
            "task_begun",
            "audit_pruned"
        ]
    );
}
