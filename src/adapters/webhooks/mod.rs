//! Webhook notifications: grant events delivered to configured HTTP endpoints as signed JSON
//! POSTs, from a durable queue in Redis, so approvers hear about pending requests without
//! polling.
//!
//! This module owns the whole feature: which events go to which webhook ([`Webhook`],
//! [`known_events`]), the notification body ([`body`]), the queue's key layout ([`Keys`]), the
//! enqueue side ([`Outbox`], behind the broker's `Notifier` port as [`WebhookNotifier`], which
//! the broker calls once a change is recorded), signing ([`signing`]) and delivery ([`worker`]).
//!
//! Keys (`gb` is the configured prefix; the `{notify}` hash tag puts all of them in one Redis
//! Cluster slot, so every step below is one atomic script):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `gb:{notify}:stream` | stream, consumer group `webhooks` | notifications to attempt now: field `n`, a [`Record`] as JSON |
//! | `gb:{notify}:retry` | sorted set | records waiting for their next attempt, scored by when it is due (ms, Redis clock) |
//! | `gb:{notify}:dead` | list | records that used up their attempts, newest first, with the last error; at most [`DEAD_BOUND`] |
//! | `gb:{notify}:stats` | hash | counters: `enqueued`, `delivered`, `retried`, `dead`, `lost` |
//!
//! A notification is in exactly one place at a time: the stream (new, or due again), a
//! consumer's pending list (being attempted), the retry set, or the dead list; every move between
//! them is one Lua script, so a crash leaves it in one of them. Delivery is **at least once**: a
//! broker that dies between a receiver's 2xx and the acknowledgement leaves the entry pending,
//! and another worker reclaims and sends it again, with the same delivery id.
//!
//! Enqueueing never fails a grant operation: the change is already recorded when the outbox
//! writes, so an error is logged and counted ([`Outbox::failures`]) and the change stands.

pub mod signing;
pub mod worker;

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use crate::adapters::redis_store::Traced as ConnectionManager;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;

pub use self::worker::{DeliverySettings, DeliveryWorker};
use crate::domain::{
    EventKind, Grant, GrantEvent, GrantState, Secret,
    audit::{SERVICE_EVENT_NAMES, ServiceEvent},
    grant::EVENT_NAMES,
};

/// Whether `name` is an event a webhook may subscribe to: a grant's event (`EventKind::name`)
/// or a service event (`ServiceEventKind::name`). (A unit test fails when either enum has a name
/// missing from its list.)
pub fn is_known_event(name: &str) -> bool {
    known_events().any(|known| known == name)
}

/// Every event name a webhook may subscribe to: grants' events, then the service's.
pub fn known_events() -> impl Iterator<Item = &'static str> {
    EVENT_NAMES.iter().chain(SERVICE_EVENT_NAMES).copied()
}

/// What a webhook gets when its `events` are not configured: what approvers and requesters act
/// on, and the incident actions and enforcement faults security engineers act on. `requested` is delivered only for grants that wait for approval (see [`Webhook::wants`]).
pub const DEFAULT_EVENTS: &[&str] = &[
    "requested",
    "approved",
    "denied",
    "cancelled",
    "break_glass_used",
    "extension_requested",
    "extended",
    "expired",
    "revoked",
    "target_sessions_revoked",
    "grantee_revoked",
    "role_cutoff_set",
    "role_deny_drifted",
];

/// Shortest HMAC secret accepted: 32 bytes, the size of the SHA-256 digest (RFC 2104 advises
/// keys no shorter than the output).
pub const MIN_SECRET_BYTES: usize = 32;

/// The stream is trimmed to about this many entries (`XADD MAXLEN ~`). It holds only
/// notifications not yet attempted (delivered and retried ones are deleted from it), so it grows
/// only while no worker runs; past this backlog the oldest are dropped (and counted as `lost`
/// when a worker meets their ids).
pub const STREAM_BOUND: usize = 100_000;

/// The dead list keeps the most recent this many.
pub const DEAD_BOUND: usize = 10_000;

/// The consumer group every replica's worker joins.
pub const GROUP: &str = "webhooks";

/// The version of [`Record`] written today.
const RECORD_VERSION: u32 = 1;

/// A configured webhook.
#[derive(Clone)]
pub struct Webhook {
    /// Identifies the webhook in records, logs and the dead list (a URL may hold a token).
    pub name: String,
    pub url: hyper::Uri,
    /// The HMAC key, read from the environment; never in the file, never logged.
    pub secret: Secret,
    /// Event names delivered (each [`is_known_event`]).
    pub events: BTreeSet<String>,
    /// Bound on one attempt: connect, send, and the response's status line.
    pub timeout: Duration,
    /// Attempts in all before a notification goes to the dead list.
    pub max_attempts: u32,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("name", &self.name)
            // Path and query can hold a token (many chat webhooks are a secret path).
            .field("url", &redacted_url(&self.url))
            .field("secret", &self.secret)
            .field("events", &self.events)
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

/// Scheme and authority only.
pub fn redacted_url(url: &hyper::Uri) -> String {
    format!(
        "{}://{}/[redacted]",
        url.scheme_str().unwrap_or("?"),
        url.authority().map_or("?", |authority| authority.as_str())
    )
}

impl Webhook {
    /// Whether this webhook wants `kind`. `requested` means "a request now waits for approval":
    /// requests decided at once need no one's attention (an approved one that used break-glass
    /// has `break_glass_used`; a denied one concerns its caller, who has the answer already).
    pub fn wants(&self, kind: &EventKind) -> bool {
        if !self.events.contains(kind.name()) {
            return false;
        }
        match kind {
            EventKind::Requested { state, .. } => *state == GrantState::PendingApproval,
            _ => true,
        }
    }
}

/// The keys of the queue, for a key prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    pub stream: String,
    pub retry: String,
    pub dead: String,
    pub stats: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        let key = |name: &str| format!("{prefix}:{{notify}}:{name}");
        Self {
            stream: key("stream"),
            retry: key("retry"),
            dead: key("dead"),
            stats: key("stats"),
        }
    }
}

/// One notification for one webhook, as queued. Versioned: entries outlive a release (a retry
/// may be due in minutes, the dead list is kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub v: u32,
    /// Stable across attempts: receivers deduplicate on it.
    pub delivery_id: String,
    pub webhook: String,
    pub event: String,
    /// Attempts made so far.
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// For the dead list: when it was given up (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_at: Option<String>,
    /// The exact bytes sent (and signed).
    pub body: String,
}

/// The notification body: who asked for what, the grant's state after the change, and the
/// event's own fields under `details`. Compact JSON, never a secret: grants and events hold none
/// (credentials' secret parts are never recorded), and this is built from those alone.
///
/// The event's fields are nested rather than merged into the top level so that a field an event
/// gains later (`state`, `target`...) can never shadow the grant's.
pub fn body(delivery_id: &str, grant: &Grant, state: GrantState, event: &GrantEvent) -> Result<String, String> {
    let mut details = serde_json::to_value(&event.kind).map_err(|error| error.to_string())?;
    if let Some(fields) = details.as_object_mut() {
        // The tag: it is `event` at the top level already.
        fields.remove("event");
    }
    let at = event.at.format(&Rfc3339).map_err(|error| error.to_string())?;
    let body = serde_json::json!({
        "delivery_id": delivery_id,
        "event": event.kind.name(),
        "at": at,
        "grant_id": grant.id.to_string(),
        "caller": event.caller,
        "grant_caller": grant.caller.to_string(),
        "target": grant.target,
        "account_id": grant.account_id,
        "requester": grant.requester,
        "grantee": grant.grantee,
        "state": state.as_str(),
        "break_glass": grant.decision.break_glass,
        "duration_secs": grant.duration().whole_seconds(),
        "scopes": grant.scopes,
        "justification": grant.justification,
        "ticket": grant.ticket,
        "details": details,
    });
    serde_json::to_string(&body).map_err(|error| error.to_string())
}

/// The notification body of a service event (an incident action, an enforcement fault): what
/// happened, who did it, and the event's own fields under `details`, as for a grant's event.
/// No `grant_id`: receivers tell the two apart by it.
pub fn service_body(delivery_id: &str, event: &ServiceEvent) -> Result<String, String> {
    let mut details = serde_json::to_value(&event.kind).map_err(|error| error.to_string())?;
    if let Some(fields) = details.as_object_mut() {
        fields.remove("event");
    }
    let at = event.at.format(&Rfc3339).map_err(|error| error.to_string())?;
    let (target, account_id) = event.kind.target_context();
    let body = serde_json::json!({
        "delivery_id": delivery_id,
        "event": event.kind.name(),
        "at": at,
        "caller": event.caller,
        "actor": event.actor(),
        "target": target,
        "account_id": account_id,
        "details": details,
    });
    serde_json::to_string(&body).map_err(|error| error.to_string())
}

/// The enqueue side: which webhooks want which events, and the writes that queue them. Cheap to
/// clone; with no webhooks configured it writes nothing.
#[derive(Debug, Clone)]
pub struct Outbox {
    keys: Keys,
    webhooks: Arc<[Webhook]>,
    failures: Arc<AtomicU64>,
}

impl Outbox {
    pub fn new(prefix: &str, webhooks: &[Webhook]) -> Self {
        Self {
            keys: Keys::new(prefix),
            webhooks: webhooks.into(),
            failures: Arc::default(),
        }
    }

    /// No webhooks: enqueues nothing.
    #[cfg(test)]
    fn none() -> Self {
        Self::new("", &[])
    }

    /// Notifications this process could not enqueue (Redis failed; each also logged).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The records for `events` of `grant`, now in `state`: one per (event, webhook that wants
    /// it), in event order.
    pub fn records(&self, grant: &Grant, state: GrantState, events: &[GrantEvent]) -> Vec<Record> {
        let mut records = Vec::new();
        for event in events {
            for webhook in self.webhooks.iter().filter(|webhook| webhook.wants(&event.kind)) {
                let record = self.record(webhook, event.kind.name(), |id| body(id, grant, state, event));
                records.extend(record);
            }
        }
        records
    }

    /// The records for a service event: one per webhook that wants it.
    pub fn service_records(&self, event: &ServiceEvent) -> Vec<Record> {
        let name = event.kind.name();
        self.webhooks
            .iter()
            .filter(|webhook| webhook.events.contains(name))
            .filter_map(|webhook| self.record(webhook, name, |id| service_body(id, event)))
            .collect()
    }

    /// One record with a new delivery id, or `None` (counted and logged) when its body cannot
    /// be encoded.
    fn record(
        &self,
        webhook: &Webhook,
        event: &str,
        body: impl FnOnce(&str) -> Result<String, String>,
    ) -> Option<Record> {
        let delivery_id = uuid::Uuid::now_v7().to_string();
        match body(&delivery_id) {
            Ok(body) => Some(Record {
                v: RECORD_VERSION,
                delivery_id,
                webhook: webhook.name.clone(),
                event: event.to_owned(),
                attempts: 0,
                last_error: None,
                dead_at: None,
                body,
            }),
            Err(error) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(webhook = %webhook.name, event, %error, "cannot encode a notification");
                None
            }
        }
    }

    /// Queues the notifications for `events`, which the caller has just recorded for `grant`
    /// (now in `state`). Call it only once the change is recorded: the queue lives in a slot of
    /// its own, so it cannot share the grant's atomic step, and queueing first would announce
    /// changes that lose their compare-and-set. One MULTI: a change's notifications are queued
    /// together or not at all. Never fails: errors are logged and counted.
    pub async fn enqueue(
        &self,
        connection: &ConnectionManager,
        grant: &Grant,
        state: GrantState,
        events: &[GrantEvent],
    ) {
        if self.webhooks.is_empty() {
            return;
        }
        let records = self.records(grant, state, events);
        self.queue(connection, &records, &grant.id.to_string()).await;
    }

    /// Queues the notifications for a service event the caller has just logged. Never fails:
    /// errors are logged and counted.
    pub async fn enqueue_service(&self, connection: &ConnectionManager, event: &ServiceEvent) {
        if self.webhooks.is_empty() {
            return;
        }
        let records = self.service_records(event);
        self.queue(connection, &records, "").await;
    }

    /// One MULTI for `records`; `grant_id` (empty for a service event) for the log lines.
    async fn queue(&self, connection: &ConnectionManager, records: &[Record], grant_id: &str) {
        if records.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for record in records {
            let encoded = match serde_json::to_string(record) {
                Ok(encoded) => encoded,
                Err(error) => {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(grant_id, %error, "cannot encode a notification record");
                    continue;
                }
            };
            pipe.cmd("XADD")
                .arg(&self.keys.stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(STREAM_BOUND)
                .arg("*")
                .arg("n")
                .arg(encoded)
                .ignore();
        }
        pipe.cmd("HINCRBY")
            .arg(&self.keys.stats)
            .arg("enqueued")
            .arg(records.len())
            .ignore();
        if let Err(error) = pipe.query_async::<()>(&mut connection.clone()).await {
            let lost = u64::try_from(records.len()).unwrap_or(u64::MAX);
            self.failures.fetch_add(lost, Ordering::Relaxed);
            for record in records {
                tracing::warn!(
                    grant_id, webhook = %record.webhook, event = %record.event,
                    delivery_id = %record.delivery_id, %error,
                    "change recorded, but its notification could not be queued"
                );
            }
        }
    }
}

/// The webhook notifications of a deployment: the [`Outbox`] of its configured webhooks, queued
/// over the grant store's connection.
pub struct WebhookNotifier {
    outbox: Outbox,
    connection: ConnectionManager,
}

impl WebhookNotifier {
    pub fn new(outbox: Outbox, connection: ConnectionManager) -> Self {
        Self { outbox, connection }
    }
}

impl crate::ports::Notifier for WebhookNotifier {
    async fn grant_changed(&self, grant: &Grant, state: GrantState, events: &[GrantEvent]) {
        self.outbox.enqueue(&self.connection, grant, state, events).await;
    }

    async fn service_event(&self, event: &ServiceEvent) {
        self.outbox.enqueue_service(&self.connection, event).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CallerId, Decision, GrantId, Outcome, approval::ApprovalRequirement, audit::ServiceEventKind};
    use time::macros::datetime;

    fn webhook(events: &[&str]) -> Webhook {
        Webhook {
            name: "approvals".into(),
            url: "https://hooks.example.com/T000/B000/very-secret-path?token=abc"
                .parse()
                .unwrap(),
            secret: Secret::new("s".repeat(32)),
            events: events.iter().map(|&name| name.to_owned()).collect(),
            timeout: Duration::from_secs(5),
            max_attempts: 8,
        }
    }

    fn grant(state: GrantState) -> Grant {
        let at = datetime!(2026-11-28 10:00 UTC);
        Grant {
            id: GrantId::from_uuid(uuid::Uuid::now_v7()),
            state,
            request_id: None,
            caller: CallerId::parse("vendor-portal").unwrap(),
            target: "prod-logs-read".into(),
            account_id: "210987654321".into(),
            role_arn: "arn:aws:iam::210987654321:role/vendor-logs-read".into(),
            region: "us-east-1".into(),
            requester: "alice@example.com".into(),
            grantee: "vendor-x".into(),
            scopes: Vec::new(),
            session_policy: "{}".into(),
            justification: "investigate".into(),
            ticket: "CHG-7".into(),
            mfa_serial: None,
            created_at: at,
            start: at,
            end: at + time::Duration::hours(1),
            pending_until: at + time::Duration::hours(24),
            decision: Decision {
                outcome: Outcome::RequireApproval,
                policy_ids: vec!["p".into()],
                reason: "r".into(),
                decided_at: at,
                approvals_required: ApprovalRequirement::default(),
                break_glass: false,
            },
            approvals: Vec::new(),
            review: None,
            extensions: Vec::new(),
            revocation: None,
            enforcement: None,
            role_cutoff: None,
            issuances: Vec::new(),
            issuance_count: 0,
            session_roles: Default::default(),
            requester_verified: None,
        }
    }

    fn event(kind: EventKind) -> GrantEvent {
        GrantEvent {
            at: datetime!(2026-11-28 10:00:01 UTC),
            caller: "approval-portal".into(),
            kind,
            person: None,
        }
    }

    fn requested(state: GrantState) -> EventKind {
        EventKind::Requested {
            state,
            outcome: Outcome::RequireApproval,
            policy_ids: vec![],
            reason: String::new(),
        }
    }

    /// One of every kind. The match below has no wildcard: a new kind does not compile until it
    /// is added here, and then the test checks its name is known.
    fn every_kind() -> Vec<EventKind> {
        let at = datetime!(2026-11-28 10:00 UTC);
        let kinds = vec![
            requested(GrantState::PendingApproval),
            EventKind::Issuing {
                session_name: String::new(),
                duration_secs: 0,
            },
            EventKind::Issued {
                session_name: String::new(),
                access_key_id: String::new(),
                expiration: at,
            },
            EventKind::IssueFailed {
                session_name: String::new(),
                error: String::new(),
            },
            EventKind::IssueDiscarded {
                role_id: None,
                session_name: String::new(),
                access_key_id: String::new(),
                reason: String::new(),
            },
            EventKind::Cancelled { reason: String::new() },
            EventKind::BreakGlassUsed {
                justification: String::new(),
            },
            EventKind::Reviewed {
                reviewer: String::new(),
                comment: String::new(),
            },
            EventKind::Expired {
                was: GrantState::Approved,
            },
            EventKind::ApprovalRecorded {
                approver: String::new(),
                groups: vec![],
                comment: String::new(),
                extension: None,
            },
            EventKind::Approved { start: at, end: at },
            EventKind::Denied {
                approver: String::new(),
                reason: String::new(),
            },
            EventKind::IssueRefused { reason: String::new() },
            EventKind::ExtensionRequested {
                extension: 1,
                additional_secs: 600,
                justification: String::new(),
                outcome: Outcome::RequireApproval,
                policy_ids: vec![],
                reason: String::new(),
            },
            EventKind::Extended { extension: 1, end: at },
            EventKind::ExtensionDenied {
                extension: 1,
                approver: None,
                reason: String::new(),
            },
            EventKind::Revoked {
                revoker: None,
                reason: String::new(),
                operation: None,
                enforcement: crate::domain::revocation::EnforcementStatus::Pending,
            },
            EventKind::EnforcementChanged {
                status: crate::domain::revocation::EnforcementStatus::Enforced,
                error: None,
                cutoff: None,
            },
        ];
        for kind in &kinds {
            match kind {
                EventKind::Requested { .. }
                | EventKind::Issuing { .. }
                | EventKind::Issued { .. }
                | EventKind::IssueFailed { .. }
                | EventKind::IssueDiscarded { .. }
                | EventKind::Cancelled { .. }
                | EventKind::BreakGlassUsed { .. }
                | EventKind::Reviewed { .. }
                | EventKind::Expired { .. }
                | EventKind::ApprovalRecorded { .. }
                | EventKind::Approved { .. }
                | EventKind::Denied { .. }
                | EventKind::IssueRefused { .. }
                | EventKind::ExtensionRequested { .. }
                | EventKind::Extended { .. }
                | EventKind::ExtensionDenied { .. }
                | EventKind::Revoked { .. }
                | EventKind::EnforcementChanged { .. } => {}
            }
        }
        kinds
    }

    fn every_service_kind() -> Vec<ServiceEventKind> {
        let at = datetime!(2026-12-02 10:00 UTC);
        let kinds = vec![
            ServiceEventKind::RulesLoaded {
                digest: "d".into(),
                policies: 1,
                sources: vec![],
            },
            ServiceEventKind::AuditQueried {
                query: "ListAuditEvents".into(),
                filter: "{}".into(),
            },
            ServiceEventKind::TargetSessionsRevoked {
                target: "prod-readonly".into(),
                account_id: "111122223333".into(),
                role_arn: "arn:aws:iam::111122223333:role/ReadOnly".into(),
                cutoff: at,
                until: at + time::Duration::hours(12),
                revoker: Some("ops@example.com".into()),
                reason: "incident 7".into(),
            },
            ServiceEventKind::GranteeRevoked {
                operation: "op-1".into(),
                grantee: "vendor@example.com".into(),
                revoker: None,
                reason: "incident 7".into(),
                examined: 3,
                revoked: 2,
                failed: 0,
                truncated: false,
            },
            ServiceEventKind::RoleCutoffSet {
                target: "prod-readonly".into(),
                account_id: "111122223333".into(),
                role_arn: "arn:aws:iam::111122223333:role/ReadOnly".into(),
                cutoff: at,
                until: at,
                grants: 40,
                needed: 11_000,
                available: 9_000,
            },
            ServiceEventKind::RoleDenyDrifted {
                target: "prod-readonly".into(),
                account_id: "111122223333".into(),
                role_arn: "arn:aws:iam::111122223333:role/ReadOnly".into(),
                found: crate::domain::revocation::DenyDrift::Missing,
                grants: 1,
            },
        ];
        // Exhaustive: a new kind fails to compile here until it is listed above.
        for kind in &kinds {
            match kind {
                ServiceEventKind::RulesLoaded { .. }
                | ServiceEventKind::AuditQueried { .. }
                | ServiceEventKind::TargetSessionsRevoked { .. }
                | ServiceEventKind::GranteeRevoked { .. }
                | ServiceEventKind::RoleCutoffSet { .. }
                | ServiceEventKind::RoleDenyDrifted { .. } => {}
            }
        }
        kinds
    }

    #[test]
    fn every_event_name_is_known_and_the_defaults_are_known_names() {
        for kind in &every_kind() {
            assert!(
                EVENT_NAMES.contains(&kind.name()),
                "{} is not in EVENT_NAMES",
                kind.name()
            );
        }
        for kind in &every_service_kind() {
            assert!(
                SERVICE_EVENT_NAMES.contains(&kind.name()),
                "{} is not in SERVICE_EVENT_NAMES",
                kind.name()
            );
        }
        for name in DEFAULT_EVENTS {
            assert!(is_known_event(name), "{name}");
        }
        let unique: BTreeSet<_> = known_events().collect();
        assert_eq!(unique.len(), known_events().count(), "no name twice");
        assert_eq!(unique.len(), every_kind().len() + every_service_kind().len());
    }

    #[test]
    fn a_service_event_body_names_what_happened_who_did_it_and_no_grant() {
        let event = ServiceEvent {
            at: datetime!(2026-12-02 10:00 UTC),
            caller: "secops-console".into(),
            kind: every_service_kind().swap_remove(2),
            person: None,
        };
        let json: serde_json::Value = serde_json::from_str(&service_body("d-7", &event).unwrap()).unwrap();
        assert_eq!(json["delivery_id"], "d-7");
        assert_eq!(json["event"], "target_sessions_revoked");
        assert_eq!(json["at"], "2026-12-02T10:00:00Z");
        assert_eq!(json["caller"], "secops-console");
        assert_eq!(json["actor"], "ops@example.com");
        assert_eq!(json["target"], "prod-readonly");
        assert_eq!(json["account_id"], "111122223333");
        assert_eq!(json["details"]["cutoff"], "2026-12-02T10:00:00Z");
        assert_eq!(json["details"]["reason"], "incident 7");
        assert!(json.get("grant_id").is_none());
        assert!(json["details"].get("event").is_none());

        let outbox = Outbox::new("gb", &[webhook(DEFAULT_EVENTS), webhook(&["approved"])]);
        let records = outbox.service_records(&event);
        assert_eq!(records.len(), 1, "only the webhook that wants it");
        assert_eq!(records[0].event, "target_sessions_revoked");
    }

    #[test]
    fn requested_is_delivered_only_for_grants_that_wait_for_people() {
        let hook = webhook(DEFAULT_EVENTS);
        assert!(hook.wants(&requested(GrantState::PendingApproval)));
        assert!(!hook.wants(&requested(GrantState::Approved)));
        assert!(!hook.wants(&requested(GrantState::Denied)));
        assert!(hook.wants(&EventKind::Cancelled { reason: String::new() }));
        assert!(!hook.wants(&EventKind::Issuing {
            session_name: String::new(),
            duration_secs: 1
        }));
        let only_denials = webhook(&["denied"]);
        let wanted: Vec<_> = every_kind()
            .iter()
            .filter(|kind| only_denials.wants(kind))
            .map(EventKind::name)
            .collect();
        assert_eq!(wanted, ["denied"]);
    }

    #[test]
    fn the_body_describes_the_grant_and_nests_the_event_fields() {
        let grant = grant(GrantState::PendingApproval);
        let denied = event(EventKind::Denied {
            approver: "bob@example.com".into(),
            reason: "no ticket".into(),
        });
        let text = body("d-1", &grant, GrantState::Denied, &denied).unwrap();
        assert!(!text.contains('\n') && !text.contains(": "), "compact: {text}");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["delivery_id"], "d-1");
        assert_eq!(json["event"], "denied");
        assert_eq!(json["at"], "2026-11-28T10:00:01Z");
        assert_eq!(json["grant_id"], grant.id.to_string());
        assert_eq!(json["caller"], "approval-portal");
        assert_eq!(json["grant_caller"], "vendor-portal");
        assert_eq!(json["target"], "prod-logs-read");
        assert_eq!(json["account_id"], "210987654321");
        assert_eq!(json["requester"], "alice@example.com");
        assert_eq!(json["grantee"], "vendor-x");
        assert_eq!(json["state"], "denied");
        assert_eq!(json["break_glass"], false);
        assert_eq!(json["duration_secs"], 3600);
        assert_eq!(json["ticket"], "CHG-7");
        assert_eq!(
            json["details"],
            serde_json::json!({"approver": "bob@example.com", "reason": "no ticket"})
        );
    }

    #[test]
    fn records_are_one_per_wanted_event_and_webhook_with_their_own_ids() {
        let mut second = webhook(&["approved", "approval_recorded"]);
        second.name = "audit".into();
        let outbox = Outbox::new("gb", &[webhook(DEFAULT_EVENTS), second]);
        let grant = grant(GrantState::PendingApproval);
        let at = datetime!(2026-11-28 10:00 UTC);
        let events = [
            event(EventKind::ApprovalRecorded {
                approver: "bob@example.com".into(),
                groups: vec![],
                comment: String::new(),
                extension: None,
            }),
            event(EventKind::Approved { start: at, end: at }),
        ];
        let records = outbox.records(&grant, GrantState::Approved, &events);
        let routes: Vec<_> = records
            .iter()
            .map(|record| (record.event.as_str(), record.webhook.as_str(), record.attempts))
            .collect();
        assert_eq!(
            routes,
            [
                ("approval_recorded", "audit", 0),
                ("approved", "approvals", 0),
                ("approved", "audit", 0)
            ]
        );
        let ids: BTreeSet<_> = records.iter().map(|record| &record.delivery_id).collect();
        assert_eq!(ids.len(), 3);
        for record in &records {
            let json: serde_json::Value = serde_json::from_str(&record.body).unwrap();
            assert_eq!(json["delivery_id"], record.delivery_id);
            assert_eq!(json["state"], "approved");
        }
        assert!(Outbox::none().records(&grant, GrantState::Approved, &events).is_empty());
    }

    #[test]
    fn keys_share_one_cluster_slot() {
        let keys = Keys::new("gb");
        for key in [&keys.stream, &keys.retry, &keys.dead, &keys.stats] {
            assert!(key.starts_with("gb:{notify}:"), "{key}");
        }
    }

    #[test]
    fn debug_hides_the_secret_and_the_url_path() {
        let printed = format!("{:?}", webhook(DEFAULT_EVENTS));
        assert!(printed.contains("https://hooks.example.com/[redacted]"), "{printed}");
        for hidden in ["very-secret-path", "token=abc", &"s".repeat(32)] {
            assert!(!printed.contains(hidden), "{hidden} in {printed}");
        }
    }
}
