//! Records for the domain's unit tests: a consistent grant, its scopes.

use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use super::{CallerId, Decision, Grant, GrantState, Outcome, policy::build_session_policy};

pub(crate) fn read_a() -> Vec<crate::domain::Scope> {
    vec![crate::domain::Scope {
        actions: vec![crate::domain::ActionPattern::parse("s3:GetObject").unwrap()],
        resources: vec![crate::domain::ResourcePattern::parse("arn:aws:s3:::a/*").unwrap()],
    }]
}

/// A consistent record: its policy is the one its scopes and end build.
pub(crate) fn grant(state: GrantState, start: OffsetDateTime, secs: i64) -> Grant {
    let end = start + Duration::seconds(secs);
    Grant {
        id: crate::domain::GrantId::from_uuid(Uuid::now_v7()),
        state,
        request_id: None,
        caller: CallerId::parse("portal").unwrap(),
        target: "t".into(),
        account_id: "123456789012".into(),
        role_arn: "arn:aws:iam::123456789012:role/r".into(),
        region: "eu-west-1".into(),
        requester: "alice smith <alice@example.com>".into(),
        grantee: "vendor/x".into(),
        scopes: read_a(),
        session_policy: build_session_policy(&read_a(), end).unwrap(),
        justification: String::new(),
        ticket: "INC#7".into(),
        mfa_serial: None,
        created_at: start,
        start,
        end,
        pending_until: end,
        decision: Decision {
            outcome: Outcome::Approve,
            policy_ids: vec![],
            reason: String::new(),
            decided_at: start,
            approvals_required: Default::default(),
            break_glass: false,
        },
        approvals: vec![],
        review: None,
        issuances: vec![],
        issuance_count: 0,
        session_roles: Default::default(),
        extensions: vec![],
        revocation: None,
        enforcement: None,
        role_cutoff: None,
        requester_verified: None,
    }
}
