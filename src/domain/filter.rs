//! Which grants a search asks for: the audit questions ("which vendors had access to account X
//! last month", "what did requester Y ask for", "which grants are live now"), as one predicate.

use std::collections::BTreeSet;

use time::OffsetDateTime;

use super::{CallerId, Grant, GrantState};

/// Where a grant sits in a search index: the order grants were recorded in, which is their
/// creation order to within [`INDEX_SKEW`]. Positions have the form of audit cursors
/// (`<ms>-<seq>`), and stay valid while grants are added.
pub type IndexPosition = super::audit::AuditCursor;

/// How much later than its grant's creation an index position may be: searches by creation time
/// read this much further, and decide on the creation time itself.
pub const INDEX_SKEW: time::Duration = time::Duration::minutes(1);

/// Conditions a grant must all meet; an empty filter matches every grant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantFilter {
    pub caller: Option<CallerId>,
    pub requester: Option<String>,
    pub grantee: Option<String>,
    pub target: Option<String>,
    pub account_id: Option<String>,
    /// Any of these states, as of now (empty: any state).
    pub states: BTreeSet<GrantState>,
    /// Live now: approved, its window open (not revoked, cancelled or expired).
    pub live: bool,
    /// Only break-glass grants (`Some(true)`), or only others (`Some(false)`).
    pub break_glass: Option<bool>,
    /// Created at or after this.
    pub created_from: Option<OffsetDateTime>,
    /// Created before this.
    pub created_to: Option<OffsetDateTime>,
}

impl GrantFilter {
    /// The conditions set, as a JSON object (what an audit query record says was asked).
    pub fn describe(&self) -> String {
        let mut set = serde_json::Map::new();
        let mut text = |name: &str, value: Option<&str>| {
            if let Some(value) = value {
                set.insert(name.to_owned(), value.into());
            }
        };
        text("caller", self.caller.as_ref().map(CallerId::as_str));
        text("requester", self.requester.as_deref());
        text("grantee", self.grantee.as_deref());
        text("target", self.target.as_deref());
        text("account_id", self.account_id.as_deref());
        if !self.states.is_empty() {
            let states: Vec<&str> = self.states.iter().map(|state| state.as_str()).collect();
            set.insert("states".to_owned(), states.into());
        }
        if self.live {
            set.insert("live".to_owned(), true.into());
        }
        if let Some(break_glass) = self.break_glass {
            set.insert("break_glass".to_owned(), break_glass.into());
        }
        for (name, at) in [("created_from", self.created_from), ("created_to", self.created_to)] {
            if let Some(at) = at.and_then(|at| at.format(&time::format_description::well_known::Rfc3339).ok()) {
                set.insert(name.to_owned(), at.into());
            }
        }
        serde_json::Value::Object(set).to_string()
    }

    /// Whether only grants pending or approved now can match (live now, or only those states).
    pub fn live_only(&self) -> bool {
        self.live
            || (!self.states.is_empty()
                && self
                    .states
                    .iter()
                    .all(|state| matches!(state, GrantState::PendingApproval | GrantState::Approved)))
    }

    /// Whether `grant` (its state as stored) meets every condition as of `now`.
    pub fn matches(&self, grant: &Grant, now: OffsetDateTime) -> bool {
        let state = grant.state_at(now);
        let equal = |wanted: &Option<String>, actual: &str| wanted.as_deref().is_none_or(|wanted| wanted == actual);
        self.caller.as_ref().is_none_or(|caller| caller == &grant.caller)
            && equal(&self.requester, &grant.requester)
            && equal(&self.grantee, &grant.grantee)
            && equal(&self.target, &grant.target)
            && equal(&self.account_id, &grant.account_id)
            && (self.states.is_empty() || self.states.contains(&state))
            && (!self.live || (state == GrantState::Approved && grant.start <= now))
            && self
                .break_glass
                .is_none_or(|wanted| wanted == grant.decision.break_glass)
            && self.created_from.is_none_or(|from| grant.created_at >= from)
            && self.created_to.is_none_or(|to| grant.created_at < to)
    }
}
