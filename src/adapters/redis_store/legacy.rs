//! Grants recorded by releases before version 3 of the record: read as they are, and converted
//! to version 3 ([`super::record`]) by the first change made to them. Nothing writes this layout
//! any more.
//!
//! Keys: `gb:grant:{<id>}` (hash), and beside it, in the same slot, `:issuances`, `:events` and
//! `:approvals` (lists of JSON entries). The grant hash holds `v` (the record version), `state`, `doc` (what the request fixed, as
//! JSON), `attempts` (STS calls made for it) and, once an approval starts the window, `window`
//! (start, end and the session policy they imply). Issuances and approvals are JSON entries of
//! lists of their own. These types, not the domain's, define the stored format, so a domain field
//! can be renamed without making 400 days of records unreadable.
//!
//! Versions:
//! - 1: the format of the first release. Its records carry no `v` field; a missing `v` means 1.
//! - 2: the doc gains `approvals_required` and `pending_until`; the hash may hold `window`; the
//!   grant has an approvals list. A version 1 record reads as needing one approval, pending
//!   until its end. Added later within version 2, without changing what was there: the hash may
//!   hold `extensions` (a JSON array, absent when there are none) and `ext_tag` (see
//!   [`extensions_tag`]), and for a revoked grant `revocation` and `enforcement`; a release that
//!   does not know them reads the grant correctly, its window and state included, only without
//!   its extension history and revocation details.
//!
//! INVARIANT: a record is read back leniently (patterns a later release refuses still read, so
//! old grants stay visible) and is never trusted for issuance as is: the broker re-validates
//! scopes and rebuilds the session policy before calling STS.

use redis::Value;
use serde::Deserialize;
use time::OffsetDateTime;

use super::{RedisGrantStore, record, reply, unavailable};
use crate::ports::StoreError;

use crate::domain::{
    ActionPattern, CallerId, Decision, Grant, GrantId, GrantState, Issuance, Outcome, ResourcePattern, Scope,
    approval::{Approval, ApprovalRequirement, Person, Review},
    extension::{Extension, ExtensionState},
    revocation::{Enforcement, EnforcementStatus, Revocation},
};

/// The last version of this layout.
const CURRENT_VERSION: u32 = 2;

/// The doc of versions 1 and 2 (2 only adds optional fields).
#[derive(Deserialize)]
struct GrantDoc {
    id: String,
    request_id: Option<String>,
    // `fingerprint` is not read: the request body's fingerprint lives with the request id.
    caller: String,
    target: String,
    account_id: String,
    role_arn: String,
    region: String,
    requester: String,
    grantee: String,
    scopes: Vec<ScopeV1>,
    session_policy: String,
    justification: String,
    ticket: String,
    mfa_serial: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    start: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    end: OffsetDateTime,
    decision: DecisionV1,
    /// Version 2: the `@approvals` requirement, in annotation form.
    #[serde(default)]
    approvals_required: Option<String>,
    /// Version 2.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pending_until: Option<OffsetDateTime>,
}

/// The `window` field: set when an approval starts the window.
#[derive(Deserialize)]
struct WindowV2 {
    #[serde(with = "time::serde::rfc3339")]
    start: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    end: OffsetDateTime,
    session_policy: String,
}

#[derive(Deserialize)]
struct ReviewV2 {
    reviewer: String,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    comment: String,
    caller: String,
}

#[derive(Deserialize)]
struct ApprovalV2 {
    approver: String,
    groups: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    comment: String,
    caller: String,
}

#[derive(Deserialize)]
struct ExtensionV2 {
    number: u32,
    #[serde(default)]
    request_id: Option<String>,
    additional_secs: u64,
    justification: String,
    #[serde(with = "time::serde::rfc3339")]
    requested_at: OffsetDateTime,
    caller: String,
    decision: DecisionV1,
    approvals_required: String,
    state: String,
    #[serde(default)]
    approvals: Vec<ApprovalV2>,
    #[serde(default)]
    denied_by: Option<(String, String)>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    new_end: Option<OffsetDateTime>,
}

#[derive(Deserialize)]
struct RevocationV2 {
    caller: String,
    #[serde(default)]
    revoker: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    reason: String,
    #[serde(default)]
    operation: Option<String>,
}

#[derive(Deserialize)]
struct EnforcementV2 {
    status: EnforcementStatus,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    #[serde(default)]
    error: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    cutoff: Option<OffsetDateTime>,
}

#[derive(Deserialize)]
struct ScopeV1 {
    actions: Vec<String>,
    resources: Vec<String>,
}

#[derive(Deserialize)]
struct DecisionV1 {
    outcome: OutcomeV1,
    policy_ids: Vec<String>,
    reason: String,
    #[serde(with = "time::serde::rfc3339")]
    decided_at: OffsetDateTime,
    /// Version 2.
    #[serde(default)]
    break_glass: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum OutcomeV1 {
    Approve,
    RequireApproval,
    Deny,
}

#[derive(Deserialize)]
struct IssuanceV1 {
    access_key_id: String,
    session_name: String,
    source_identity: String,
    assumed_role_arn: String,
    #[serde(with = "time::serde::rfc3339")]
    expiration: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    issued_at: OffsetDateTime,
    packed_policy_percent: Option<i32>,
}

fn decision_from_v1(decision: DecisionV1, approvals_required: ApprovalRequirement) -> Decision {
    Decision {
        outcome: match decision.outcome {
            OutcomeV1::Approve => Outcome::Approve,
            OutcomeV1::RequireApproval => Outcome::RequireApproval,
            OutcomeV1::Deny => Outcome::Deny,
        },
        policy_ids: decision.policy_ids,
        reason: decision.reason,
        decided_at: decision.decided_at,
        approvals_required,
        break_glass: decision.break_glass,
    }
}

fn decode_extensions(text: &str) -> Result<Vec<Extension>, String> {
    let stored: Vec<ExtensionV2> = serde_json::from_str(text).map_err(|error| format!("extensions: {error}"))?;
    stored
        .into_iter()
        .map(|extension| {
            let approvals_required = ApprovalRequirement::parse(&extension.approvals_required)
                .map_err(|why| format!("extension {}: approvals_required: {why}", extension.number))?;
            Ok(Extension {
                number: extension.number,
                request_id: extension.request_id,
                additional_secs: extension.additional_secs,
                justification: extension.justification,
                requested_at: extension.requested_at,
                caller: extension.caller,
                decision: decision_from_v1(extension.decision, approvals_required),
                state: ExtensionState::parse(&extension.state)
                    .ok_or_else(|| format!("extension {}: unknown state `{}`", extension.number, extension.state))?,
                approvals: extension.approvals.into_iter().map(approval_from_v2).collect(),
                denied_by: extension
                    .denied_by
                    .map(|(person, reason)| (Person::from_trusted(person), reason)),
                new_end: extension.new_end,
            })
        })
        .collect()
}

/// The fields of one grant as read from Redis, before decoding.
pub struct StoredGrant {
    pub version: Option<String>,
    pub state: String,
    pub doc: String,
    pub window: Option<String>,
    pub review: Option<String>,
    pub extensions: Option<String>,
    pub revocation: Option<String>,
    pub enforcement: Option<String>,
    pub approvals: Vec<String>,
    /// Every issuance, oldest first.
    pub issuances: Vec<Issuance>,
}

/// Decodes a record of any version this release knows. Errors say what is wrong, for the log.
pub fn decode_grant(id: GrantId, stored: StoredGrant) -> Result<Grant, String> {
    let version = match stored.version.as_deref() {
        None => 1,
        Some(text) => text
            .parse::<u32>()
            .map_err(|_| format!("record version `{text}` is not a number"))?,
    };
    if !(1..=CURRENT_VERSION).contains(&version) {
        return Err(format!(
            "record version {version} is not one this release reads (it reads 1 to {CURRENT_VERSION})"
        ));
    }
    let state = GrantState::parse(&stored.state).ok_or_else(|| format!("unknown state `{}`", stored.state))?;
    let doc: GrantDoc = serde_json::from_str(&stored.doc).map_err(|error| format!("doc: {error}"))?;
    let approvals_required = match &doc.approvals_required {
        None => ApprovalRequirement::default(),
        Some(text) => ApprovalRequirement::parse(text).map_err(|why| format!("approvals_required: {why}"))?,
    };
    let window = match &stored.window {
        None => None,
        Some(text) => Some(serde_json::from_str::<WindowV2>(text).map_err(|error| format!("window: {error}"))?),
    };
    let approvals = stored
        .approvals
        .iter()
        .map(|text| serde_json::from_str::<ApprovalV2>(text).map(approval_from_v2))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("approval: {error}"))?;
    let pending_until = doc.pending_until.unwrap_or(doc.end);
    let review = match &stored.review {
        None => None,
        Some(text) => {
            let review: ReviewV2 = serde_json::from_str(text).map_err(|error| format!("review: {error}"))?;
            Some(Review {
                reviewer: Person::from_trusted(review.reviewer),
                at: review.at,
                comment: review.comment,
                caller: review.caller,
            })
        }
    };
    let (start, end, session_policy) = match window {
        Some(window) => (window.start, window.end, window.session_policy),
        None => (doc.start, doc.end, doc.session_policy),
    };
    if doc.id != id.to_string() {
        return Err(format!("doc belongs to grant {}", doc.id));
    }
    let caller = CallerId::parse(&doc.caller).map_err(|why| format!("caller: {why}"))?;
    let extensions = match &stored.extensions {
        None => Vec::new(),
        Some(text) => decode_extensions(text)?,
    };
    let revocation = match &stored.revocation {
        None => None,
        Some(text) => {
            let stored: RevocationV2 = serde_json::from_str(text).map_err(|error| format!("revocation: {error}"))?;
            Some(Revocation {
                caller: stored.caller,
                revoker: stored.revoker,
                at: stored.at,
                reason: stored.reason,
                operation: stored.operation,
            })
        }
    };
    let enforcement = match &stored.enforcement {
        None => None,
        Some(text) => {
            let stored: EnforcementV2 = serde_json::from_str(text).map_err(|error| format!("enforcement: {error}"))?;
            Some(Enforcement {
                status: stored.status,
                at: stored.at,
                error: stored.error,
                cutoff: stored.cutoff,
            })
        }
    };
    let issuance_count = u64::try_from(stored.issuances.len()).unwrap_or(u64::MAX);
    let issuances = stored.issuances[stored.issuances.len().saturating_sub(crate::domain::RECENT_ISSUANCES)..].to_vec();
    Ok(Grant {
        session_roles: crate::domain::SessionRoles::default(),
        id,
        state,
        request_id: doc.request_id,
        caller,
        target: doc.target,
        account_id: doc.account_id,
        role_arn: doc.role_arn,
        region: doc.region,
        requester: doc.requester,
        grantee: doc.grantee,
        // Lenient on purpose (see the module docs): a pattern a later release refuses still reads.
        scopes: doc
            .scopes
            .into_iter()
            .map(|scope| Scope {
                actions: scope.actions.into_iter().map(ActionPattern::from_record).collect(),
                resources: scope.resources.into_iter().map(ResourcePattern::from_record).collect(),
            })
            .collect(),
        session_policy,
        justification: doc.justification,
        ticket: doc.ticket,
        mfa_serial: doc.mfa_serial,
        created_at: doc.created_at,
        start,
        end,
        pending_until,
        decision: decision_from_v1(doc.decision, approvals_required),
        approvals,
        review,
        extensions,
        revocation,
        enforcement,
        role_cutoff: None,
        issuances,
        issuance_count,
    })
}

fn approval_from_v2(approval: ApprovalV2) -> Approval {
    Approval {
        approver: Person::from_trusted(approval.approver),
        groups: approval.groups.into_iter().collect(),
        at: approval.at,
        comment: approval.comment,
        caller: approval.caller,
    }
}

/// One entry of a grant's issuances list.
pub fn decode_issuance(text: &str) -> Result<Issuance, String> {
    serde_json::from_str::<IssuanceV1>(text)
        .map(issuance_from_v1)
        .map_err(|error| format!("issuance: {error}"))
}

fn issuance_from_v1(issuance: IssuanceV1) -> Issuance {
    Issuance {
        access_key_id: issuance.access_key_id,
        session_name: issuance.session_name,
        source_identity: issuance.source_identity,
        assumed_role_arn: issuance.assumed_role_arn,
        role_id: None,
        expiration: issuance.expiration,
        issued_at: issuance.issued_at,
        packed_policy_percent: issuance.packed_policy_percent,
    }
}

/// Replaces a legacy grant by its version 3 record, if it is still as read.
/// KEYS: hash, issuances, events, approvals, record; ARGV: state, events, approvals (as read),
/// the record, its expiry (unix s).
pub const MIGRATE: &str = r"
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if state ~= ARGV[1] or redis.call('LLEN', KEYS[3]) ~= tonumber(ARGV[2])
  or redis.call('LLEN', KEYS[4]) ~= tonumber(ARGV[3]) then return 'changed' end
redis.call('SET', KEYS[5], ARGV[4], 'EXAT', ARGV[5])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return 'ok'
";

/// Commands per grant in a legacy read: HMGET, LRANGE of the issuances (all), LRANGE of the
/// approvals, LRANGE of the events.
const READ_COMMANDS: usize = 4;

impl RedisGrantStore {
    pub(super) fn legacy_grant_key(&self, id: GrantId) -> String {
        format!("{}:grant:{{{id}}}", self.prefix)
    }

    fn legacy_part(&self, id: GrantId, part: &str) -> String {
        format!("{}:grant:{{{id}}}:{part}", self.prefix)
    }

    /// Queues the [`READ_COMMANDS`] reads of one legacy grant.
    fn queue_legacy_read(&self, pipe: &mut redis::Pipeline, id: GrantId) {
        pipe.cmd("HMGET")
            .arg(self.legacy_grant_key(id))
            .arg("v")
            .arg("state")
            .arg("doc")
            .arg("window")
            .arg("review")
            .arg("extensions")
            .arg("revocation")
            .arg("enforcement")
            .arg("attempts");
        // Bounded by the issuance cap and the approval and event limits of those releases.
        pipe.lrange(self.legacy_part(id, "issuances"), 0, -1);
        pipe.lrange(self.legacy_part(id, "approvals"), 0, -1);
        pipe.lrange(self.legacy_part(id, "events"), 0, -1);
    }

    /// Reads grants in the legacy layout, in order; `None` where there is none.
    pub(super) async fn read_legacy(&self, ids: &[GrantId]) -> Result<Vec<Option<record::Decoded>>, StoreError> {
        let mut pipe = redis::pipe();
        for &id in ids {
            self.queue_legacy_read(&mut pipe, id);
        }
        let replies: Vec<Value> = pipe
            .query_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        if replies.len() != ids.len() * READ_COMMANDS {
            return Err(StoreError::Corrupt(format!(
                "expected {} replies, got {}",
                ids.len() * READ_COMMANDS,
                replies.len()
            )));
        }
        let mut replies = replies.into_iter();
        let mut found = Vec::with_capacity(ids.len());
        for &id in ids {
            let one = [(); READ_COMMANDS].map(|()| replies.next().unwrap_or(Value::Nil));
            found.push(
                decode_legacy(id, one)
                    .map_err(|what| StoreError::Corrupt(format!("grant {id}: {what}")))?
                    .map(|(decoded, _)| decoded),
            );
        }
        Ok(found)
    }

    /// Converts a legacy grant to version 3 in one atomic step (same slot). Nothing to do when it
    /// is gone or was converted meanwhile.
    pub(super) async fn convert_legacy(&self, id: GrantId) -> Result<(), StoreError> {
        let corrupt = |what: String| StoreError::Corrupt(format!("grant {id}: {what}"));
        let mut pipe = redis::pipe();
        self.queue_legacy_read(&mut pipe, id);
        let replies: Vec<Value> = pipe
            .query_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        let replies: [Value; READ_COMMANDS] = replies
            .try_into()
            .map_err(|_| corrupt("legacy read reply".to_owned()))?;
        let Some((decoded, attempts)) = decode_legacy(id, replies).map_err(corrupt)? else {
            return Ok(());
        };
        let record::Decoded {
            grant,
            events,
            issuances,
        } = decoded;
        let record = record::encode_record(&grant, attempts, &events, &issuances).map_err(corrupt)?;
        let reply: String = self
            .migrate
            .key(self.legacy_grant_key(id))
            .key(self.legacy_part(id, "issuances"))
            .key(self.legacy_part(id, "events"))
            .key(self.legacy_part(id, "approvals"))
            .key(self.record_key(id))
            .arg(grant.state.as_str())
            .arg(events.len())
            .arg(grant.approvals.len())
            .arg(record)
            .arg(self.expiry(grant.last_moment()))
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        tracing::info!(grant_id = %id, outcome = %reply, "converted a grant recorded before version 3");
        Ok(())
    }
}

/// Decodes one legacy read: the grant with every event and issuance, and its STS attempts.
fn decode_legacy(id: GrantId, replies: [Value; READ_COMMANDS]) -> Result<Option<(record::Decoded, u16)>, String> {
    let [fields, issuances, approvals, events] = replies;
    let [
        version,
        state,
        doc,
        window,
        review,
        extensions,
        revocation,
        enforcement,
        attempts,
    ]: [Value; 9] = reply::array_of(fields, 9)?
        .try_into()
        .map_err(|_| "HMGET reply".to_owned())?;
    let (Some(state), Some(doc)) = (reply::optional_text(state)?, reply::optional_text(doc)?) else {
        return Ok(None);
    };
    let issuances = reply::texts(issuances)?;
    // Records of the first release have no `attempts`: their issuances are the attempts they are
    // known to have made.
    let attempts = match reply::optional_text(attempts)? {
        Some(text) => text.parse().map_err(|_| format!("attempts `{text}`"))?,
        None => u16::try_from(issuances.len()).unwrap_or(u16::MAX),
    };
    let all_issuances = issuances
        .iter()
        .map(|text| decode_issuance(text))
        .collect::<Result<Vec<_>, _>>()?;
    let stored = StoredGrant {
        version: reply::optional_text(version)?,
        state,
        doc,
        window: reply::optional_text(window)?,
        review: reply::optional_text(review)?,
        extensions: reply::optional_text(extensions)?,
        revocation: reply::optional_text(revocation)?,
        enforcement: reply::optional_text(enforcement)?,
        approvals: reply::texts(approvals)?,
        issuances: all_issuances.clone(),
    };
    let grant = decode_grant(id, stored)?;
    let events = reply::texts(events)?
        .iter()
        .map(|text| serde_json::from_str(text).map_err(|error| format!("event: {error}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some((
        record::Decoded {
            grant,
            events,
            issuances: all_issuances,
        },
        attempts,
    )))
}
