//! Revocation: taking back access that is already out. STS credentials cannot be invalidated,
//! but IAM evaluates the role's policies on every call, so the broker keeps one inline Deny
//! policy of its own on each target role, listing the revoked sessions (`aws:userid` =
//! `<RoleId>:<session name>`) and, when the list would not fit or an operator cuts off every
//! session of a role, denying sessions issued before a time (`aws:TokenIssueTime`).
//!
//! This module holds what a grant records about its revocation and builds the role's document
//! from what Redis holds (never from what AWS holds), saying when it does not fit.

use std::fmt::Write as _;

use time::{Duration, OffsetDateTime};

use super::{GrantId, SessionRoles, identity::Verified, policy::rfc3339_utc};

/// The name of the inline policy the broker manages on a target role; it touches no other.
pub const DENY_POLICY_NAME: &str = "grant-broker-revocations";

/// IAM's cap on the aggregate size of a role's inline policies, whitespace not counted.
pub const MAX_ROLE_INLINE_POLICY_CHARS: usize = 10_240;

/// How far enforcement has got for a revoked grant's sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnforcementStatus {
    /// Recorded; the deny is not yet written to the role.
    Pending,
    /// The role's deny policy covers every session of the grant.
    Enforced,
    /// Nothing to deny: the grant never issued credentials, or they have all expired.
    NotNeeded,
    /// The last attempt to write the deny failed; retried in the background.
    Failed,
    /// The target is record-only: the broker may not modify its role.
    NotAvailable,
}

impl EnforcementStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Enforced => "enforced",
            Self::NotNeeded => "not_needed",
            Self::Failed => "failed",
            Self::NotAvailable => "not_available",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Enforced,
            Self::NotNeeded,
            Self::Failed,
            Self::NotAvailable,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
    }
}

/// A grantee as a person reads it, for warning of near misses: case, leading and trailing
/// whitespace and runs of whitespace do not count.
pub fn fold_grantee(grantee: &str) -> String {
    grantee.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// Whether the policy IAM holds on the role is the document the broker wrote: the same JSON,
/// whatever IAM did to its whitespace or key order.
pub fn same_policy(found: &str, written: &str) -> bool {
    match (
        serde_json::from_str::<serde_json::Value>(found),
        serde_json::from_str::<serde_json::Value>(written),
    ) {
        (Ok(found), Ok(written)) => found == written,
        _ => false,
    }
}

/// How the broker's deny policy on a role was found to differ from what it wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyDrift {
    /// Deleted from the role.
    Missing,
    /// Edited outside the broker.
    Changed,
}

impl DenyDrift {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Changed => "changed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Missing, Self::Changed]
            .into_iter()
            .find(|drift| drift.as_str() == text)
    }
}

/// Who revoked a grant, when and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The calling system that asked.
    pub caller: String,
    /// The person it named, if any (an approver, an incident responder).
    pub revoker: Option<String>,
    /// What the revoker's verified token proved; `None`: asserted, or no person named.
    pub revoker_verified: Option<Verified>,
    pub at: OffsetDateTime,
    pub reason: String,
    /// Set when the grant was revoked as part of a larger operation (RevokeGrantee): every
    /// grant it revoked carries the same id.
    pub operation: Option<String>,
}

/// Where enforcement of a grant's revocation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enforcement {
    pub status: EnforcementStatus,
    pub at: OffsetDateTime,
    /// The last error, for FAILED (kept while retrying).
    pub error: Option<String>,
    /// When the role's deny is a token-issue-time cutoff rather than the grant's own entry (the
    /// list would not fit): every session of the role issued before it is denied.
    pub cutoff: Option<OffsetDateTime>,
}

/// One revoked grant's entry in its role's deny list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    pub grant: GrantId,
    /// When it was revoked: no session of it is issued later, so a cutoff after this covers it.
    pub revoked_at: OffsetDateTime,
    /// When its last session's credentials expire (the grant's end): the entry is pruned then.
    pub until: OffsetDateTime,
    /// The role incarnations its sessions belong to, as STS reported them.
    pub roles: SessionRoles,
}

impl RevokedEntry {
    /// Every session of a grant uses the same name (see `Grant::session_name`), so one entry
    /// covers them all, recorded or not.
    pub fn session_name(&self) -> String {
        format!("gb-{}", self.grant)
    }

    /// The `aws:userid` of each of its sessions: `<RoleId>:<session name>` for every RoleId STS
    /// reported, and for `current_role_id` (the role as IAM has it now) when a session may exist
    /// that STS never reported.
    pub fn user_ids(&self, current_role_id: &str) -> Vec<String> {
        let session = self.session_name();
        let current = (self.roles.unreported || self.roles.known.is_empty()).then_some(current_role_id);
        let mut ids: Vec<String> = self
            .roles
            .known
            .iter()
            .map(String::as_str)
            .chain(current)
            .map(|role_id| format!("{role_id}:{session}"))
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

/// A role-wide cutoff: sessions issued before `at` are denied, until `until` (when every one of
/// them has expired, whatever its length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cutoff {
    pub at: OffsetDateTime,
    pub until: OffsetDateTime,
    pub reason: String,
}

impl Cutoff {
    /// A cutoff at the next whole second after `now` (IAM compares whole seconds, and a session
    /// issued in the current second must be covered), lasting as long as the longest session of
    /// the role can.
    pub fn after(now: OffsetDateTime, max_session_secs: u64, reason: String) -> Self {
        let at = now.replace_nanosecond(0).unwrap_or(now) + Duration::seconds(1);
        let max_session = Duration::seconds(i64::try_from(max_session_secs).unwrap_or(i64::MAX));
        Self {
            at,
            until: at + max_session,
            reason,
        }
    }

    pub fn covers(&self, entry: &RevokedEntry) -> bool {
        entry.revoked_at < self.at
    }
}

/// What the role's policy must be, given what Redis holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolePolicy {
    /// Nothing left to deny: the policy is deleted.
    Absent,
    /// This document, which fits beside the role's other inline policies.
    Deny {
        document: String,
        /// Entries listed by `aws:userid` (the others are covered by the cutoff, or expired).
        listed: Vec<GrantId>,
    },
    /// The listed entries would not fit: a cutoff must replace them.
    Overflow { needed: usize, available: usize },
}

/// Characters IAM counts towards the role's inline policy cap.
pub fn counted_chars(document: &str) -> usize {
    document.chars().filter(|c| !c.is_whitespace()).count()
}

/// The role's policy as of `now`: entries still live and not covered by a cutoff still in
/// effect, listed by the `aws:userid` of each of their sessions (see [`RevokedEntry::user_ids`];
/// `role_id` is the role's RoleId as IAM has it now), plus the cutoff statement; `Overflow` when
/// that exceeds what the role's other inline policies leave. Deterministic (entries and ids
/// sorted), so the same state always writes the same document.
pub fn role_policy(
    role_id: &str,
    entries: &[RevokedEntry],
    cutoff: Option<&Cutoff>,
    other_policy_chars: usize,
    now: OffsetDateTime,
) -> RolePolicy {
    let cutoff = cutoff.filter(|cutoff| cutoff.until > now);
    let mut listed: Vec<&RevokedEntry> = entries
        .iter()
        .filter(|entry| entry.until > now && !cutoff.is_some_and(|cutoff| cutoff.covers(entry)))
        .collect();
    // A grant may have more than one entry (a discarded session reported after its revocation):
    // the ids of all of them, listed once.
    let mut user_ids: Vec<String> = listed.iter().flat_map(|entry| entry.user_ids(role_id)).collect();
    user_ids.sort();
    user_ids.dedup();
    listed.sort_by_key(|entry| entry.grant);
    listed.dedup_by_key(|entry| entry.grant);
    if listed.is_empty() && cutoff.is_none() {
        return RolePolicy::Absent;
    }
    let mut statements = Vec::new();
    if !listed.is_empty() {
        let mut ids = String::new();
        for (n, user_id) in user_ids.iter().enumerate() {
            let separator = if n == 0 { "" } else { "," };
            let _ = write!(ids, "{separator}\"{user_id}\"");
        }
        statements.push(format!(
            r#"{{"Sid":"RevokedSessions","Effect":"Deny","Action":"*","Resource":"*","Condition":{{"StringEquals":{{"aws:userid":[{ids}]}}}}}}"#
        ));
    }
    if let Some(cutoff) = cutoff {
        statements.push(format!(
            r#"{{"Sid":"SessionsIssuedBeforeCutoff","Effect":"Deny","Action":"*","Resource":"*","Condition":{{"DateLessThan":{{"aws:TokenIssueTime":"{}"}}}}}}"#,
            rfc3339_utc(cutoff.at)
        ));
    }
    let document = format!(r#"{{"Version":"2012-10-17","Statement":[{}]}}"#, statements.join(","));
    let available = MAX_ROLE_INLINE_POLICY_CHARS.saturating_sub(other_policy_chars);
    let needed = counted_chars(&document);
    if needed > available {
        return RolePolicy::Overflow { needed, available };
    }
    RolePolicy::Deny {
        document,
        listed: listed.iter().map(|entry| entry.grant).collect(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use time::macros::datetime;
    use uuid::Uuid;

    use super::*;

    #[test]
    fn a_policy_is_the_same_whatever_its_whitespace_and_key_order() {
        let written = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"*","Resource":"*"}]}"#;
        let reformatted = "{\n  \"Statement\": [ {\"Resource\":\"*\", \"Action\":\"*\",\"Effect\":\"Deny\"} ],\n  \"Version\": \"2012-10-17\"\n}";
        assert!(same_policy(reformatted, written));
        assert!(!same_policy(&written.replace("Deny", "Allow"), written));
        assert!(!same_policy(r#"{"Version":"2012-10-17","Statement":[]}"#, written));
        assert!(!same_policy("not json", written));
    }

    #[test]
    fn grantees_fold_case_and_whitespace_only() {
        assert_eq!(fold_grantee(" Vendor-X "), "vendor-x");
        assert_eq!(fold_grantee("ACME\t  Corp"), "acme corp");
        assert_eq!(fold_grantee("vendor-x"), fold_grantee("VENDOR-X"));
        assert_ne!(fold_grantee("vendor-x"), fold_grantee("vendor_x"));
        assert_ne!(fold_grantee("vendorx"), fold_grantee("vendor x"));
    }

    const NOW: OffsetDateTime = datetime!(2026-11-29 10:00:00.250 UTC);
    const ROLE: &str = "AROAEXAMPLEEXAMPLE123";

    fn entry(n: u128, revoked_ago_secs: i64, left_secs: i64) -> RevokedEntry {
        RevokedEntry {
            grant: GrantId::from_uuid(Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + n)),
            revoked_at: NOW - Duration::seconds(revoked_ago_secs),
            until: NOW + Duration::seconds(left_secs),
            roles: SessionRoles::default(),
        }
    }

    fn with_roles(mut entry: RevokedEntry, known: &[&str], unreported: bool) -> RevokedEntry {
        entry.roles = SessionRoles {
            known: known.iter().map(|id| (*id).to_owned()).collect(),
            unreported,
        };
        entry
    }

    #[test]
    fn each_session_is_denied_under_the_role_id_sts_reported_for_it() {
        // Issued before and after the role was re-created; the role is now its third incarnation.
        let both = with_roles(entry(1, 60, 600), &["AROAOLD", "AROANEW"], false);
        let unreported = with_roles(entry(2, 60, 600), &["AROANEW"], true);
        let json = document(&role_policy(
            "AROACURRENT",
            &[both.clone(), unreported.clone()],
            None,
            0,
            NOW,
        ));
        assert_eq!(
            json["Statement"][0]["Condition"]["StringEquals"]["aws:userid"],
            serde_json::json!([
                format!("AROACURRENT:gb-{}", unreported.grant),
                format!("AROANEW:gb-{}", both.grant),
                format!("AROANEW:gb-{}", unreported.grant),
                format!("AROAOLD:gb-{}", both.grant),
            ]),
            "exactly what was issued, and the current role only where a session went unreported"
        );
        // Two entries of one grant (a discarded session reported later) list both ids once.
        let later = with_roles(both.clone(), &["AROANEW", "AROALATER"], false);
        let RolePolicy::Deny { document, listed } = role_policy("AROAX", &[both.clone(), later], None, 0, NOW) else {
            panic!("a document")
        };
        assert_eq!(listed, [both.grant]);
        let json: serde_json::Value = serde_json::from_str(&document).unwrap();
        assert_eq!(
            json["Statement"][0]["Condition"]["StringEquals"]["aws:userid"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
    }

    fn document(policy: &RolePolicy) -> serde_json::Value {
        match policy {
            RolePolicy::Deny { document, .. } => serde_json::from_str(document).unwrap(),
            other => panic!("no document: {other:?}"),
        }
    }

    #[test]
    fn revoked_live_sessions_are_denied_by_user_id_and_expired_ones_pruned() {
        let entries = [entry(2, 60, 600), entry(1, 30, 3600), entry(3, 7200, -1)];
        let policy = role_policy(ROLE, &entries, None, 0, NOW);
        let json = document(&policy);
        assert_eq!(json["Version"], "2012-10-17");
        let statement = &json["Statement"][0];
        assert_eq!(statement["Effect"], "Deny");
        assert_eq!(statement["Action"], "*");
        assert_eq!(statement["Resource"], "*");
        assert_eq!(
            statement["Condition"]["StringEquals"]["aws:userid"],
            serde_json::json!([
                format!("{ROLE}:gb-{}", entries[1].grant),
                format!("{ROLE}:gb-{}", entries[0].grant),
            ]),
            "sorted, and the expired entry left out"
        );
        assert_eq!(json["Statement"].as_array().unwrap().len(), 1);
        assert_eq!(
            role_policy(ROLE, &[entry(3, 7200, 0)], None, 0, NOW),
            RolePolicy::Absent
        );
        assert_eq!(role_policy(ROLE, &[], None, 0, NOW), RolePolicy::Absent);
    }

    #[test]
    fn a_cutoff_denies_by_issue_time_and_covers_what_was_revoked_before_it() {
        let cutoff = Cutoff::after(NOW - Duration::seconds(10), 3600, "full".into());
        assert_eq!(cutoff.at, datetime!(2026-11-29 09:59:51 UTC), "the next whole second");
        let before = entry(1, 20, 600);
        let after = entry(2, 1, 600);
        let policy = role_policy(ROLE, &[before.clone(), after.clone()], Some(&cutoff), 0, NOW);
        let RolePolicy::Deny { listed, .. } = &policy else {
            panic!("{policy:?}")
        };
        assert_eq!(
            listed,
            &[after.grant],
            "the earlier revocation is covered by the cutoff"
        );
        let json = document(&policy);
        assert_eq!(
            json["Statement"][1]["Condition"]["DateLessThan"]["aws:TokenIssueTime"],
            "2026-11-29T09:59:51Z"
        );
        // Once every session issued before it has expired, the cutoff goes too.
        let later = NOW + Duration::hours(2);
        assert_eq!(
            role_policy(ROLE, std::slice::from_ref(&before), Some(&cutoff), 0, later),
            RolePolicy::Absent
        );
    }

    #[test]
    fn a_list_that_would_not_fit_beside_the_other_policies_overflows() {
        let entries: Vec<RevokedEntry> = (0..200).map(|n| entry(n, 60, 600)).collect();
        let RolePolicy::Overflow { needed, available } = role_policy(ROLE, &entries, None, 0, NOW) else {
            panic!("200 sessions do not fit")
        };
        assert_eq!(available, MAX_ROLE_INLINE_POLICY_CHARS);
        assert!(needed > available);
        // What fits alone may not fit beside another 9,000 characters.
        let few = &entries[..10];
        assert!(matches!(role_policy(ROLE, few, None, 0, NOW), RolePolicy::Deny { .. }));
        assert!(matches!(
            role_policy(ROLE, few, None, 9_800, NOW),
            RolePolicy::Overflow { available: 440, .. }
        ));
        // A cutoff covering them all always fits.
        let cutoff = Cutoff::after(NOW, 3600, "full".into());
        let policy = role_policy(ROLE, &entries, Some(&cutoff), 9_800, NOW);
        assert!(
            matches!(&policy, RolePolicy::Deny { listed, .. } if listed.is_empty()),
            "{policy:?}"
        );
    }

    proptest! {
        /// Whatever the entries, the document is valid JSON that IAM would accept by size, lists
        /// exactly the live uncovered entries, and is the same for the same entries in any order.
        #[test]
        fn documents_list_exactly_the_live_uncovered_entries(
            raw in proptest::collection::vec((0u128..40, 0i64..7200, -600i64..7200), 0..60),
            other in 0usize..10_240,
            with_cutoff: bool,
        ) {
            let entries: Vec<RevokedEntry> = raw.iter().map(|&(n, ago, left)| entry(n, ago, left)).collect();
            let cutoff = with_cutoff.then(|| Cutoff::after(NOW - Duration::seconds(3600), 7200, "x".into()));
            let policy = role_policy(ROLE, &entries, cutoff.as_ref(), other, NOW);
            let mut reversed = entries.clone();
            reversed.reverse();
            prop_assert_eq!(&policy, &role_policy(ROLE, &reversed, cutoff.as_ref(), other, NOW));
            let mut expected: Vec<GrantId> = entries
                .iter()
                .filter(|e| e.until > NOW && !cutoff.as_ref().is_some_and(|c| c.covers(e)))
                .map(|e| e.grant)
                .collect();
            expected.sort();
            expected.dedup();
            match &policy {
                RolePolicy::Absent => prop_assert!(expected.is_empty() && cutoff.is_none()),
                RolePolicy::Deny { document, listed } => {
                    prop_assert_eq!(listed, &expected);
                    prop_assert!(counted_chars(document) + other <= MAX_ROLE_INLINE_POLICY_CHARS);
                    let json: serde_json::Value = serde_json::from_str(document).unwrap();
                    let statements = json["Statement"].as_array().unwrap().len();
                    prop_assert_eq!(statements, usize::from(!expected.is_empty()) + usize::from(cutoff.is_some()));
                }
                RolePolicy::Overflow { needed, available } => {
                    prop_assert!(needed > available);
                    // Only something to deny can overflow (a cutoff alone, when nearly nothing is left).
                    prop_assert!(!expected.is_empty() || cutoff.is_some());
                }
            }
        }
    }
}
