//! What it takes to mint credentials, as types: only an approved grant yields a [`SessionSpec`],
//! and the credential issuer accepts nothing else, so no code path can call STS for a request the
//! rules did not approve. Secrets travel in [`Secret`], which never prints.

use time::OffsetDateTime;

use super::{
    Grant, GrantId, GrantState, MfaToken, Target, limits, policy::build_session_policy, scope::check_within_ceiling,
};

/// A secret string (secret access key, session token, MFA code). Debug and Display print
/// `[redacted]`; it has no serde impls, so it cannot be written to Redis or a log by accident.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// A secret read from a file (a private key): kept as text, invalid UTF-8 replaced.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(String::from_utf8(bytes).unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned()))
    }

    /// The secret itself, for the one place that must hand it over (the RPC response, STS).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Why an approved grant cannot become a session on its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionRefused {
    /// The target's configuration no longer matches what the grant was decided for (another
    /// role, region or account, or a ceiling that no longer contains the grant's scopes).
    TargetChanged { target: String, what: String },
    /// The recorded scopes are not valid today (for example a policy variable, which an earlier
    /// release accepted): the grant reads back but never issues again.
    ScopesInvalid(Vec<String>),
    /// The record disagrees with itself: its session policy is not the one its scopes and end
    /// build, or its window is not one any grant can have. Storage was edited or is corrupt.
    RecordInconsistent(String),
}

/// Why credentials cannot be minted for a grant: its state, or a window that has not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotIssuable {
    pub state: GrantState,
    /// Set when the grant is approved but its (scheduled) window starts later.
    pub starts_at: Option<OffsetDateTime>,
}

/// Proof that a grant may have credentials minted now: it is approved and its window is open.
/// Only [`ApprovedGrant::check`] constructs one.
#[derive(Debug)]
pub struct ApprovedGrant<'a> {
    grant: &'a Grant,
    now: OffsetDateTime,
}

impl<'a> ApprovedGrant<'a> {
    pub fn check(grant: &'a Grant, now: OffsetDateTime) -> Result<Self, NotIssuable> {
        match grant.state_at(now) {
            GrantState::Approved if now < grant.start => Err(NotIssuable {
                state: GrantState::Approved,
                starts_at: Some(grant.start),
            }),
            GrantState::Approved => Ok(Self { grant, now }),
            state => Err(NotIssuable { state, starts_at: None }),
        }
    }

    pub fn grant(&self) -> &Grant {
        self.grant
    }

    /// Everything STS AssumeRole needs for this grant on `target`, with `max_duration_secs`
    /// already the least of the target's maximum, STS's and the role-chaining cap.
    ///
    /// The duration is the time left in the grant window, but never below STS's 900-second
    /// minimum: the session policy's time condition ends access at the grant's end regardless.
    ///
    /// INVARIANT: what reaches STS is rebuilt from validated facts, never taken from the record
    /// as is. The record comes from storage, so its scopes are validated again, checked against
    /// today's ceiling, and the session policy is rebuilt from them and the grant's end; a stored
    /// policy that differs means the record was edited, and nothing is issued.
    pub fn session_spec(
        &self,
        target: &Target,
        mfa: Option<&MfaToken>,
        max_duration_secs: u64,
    ) -> Result<SessionSpec, SessionRefused> {
        let grant = self.grant;
        let problems: Vec<String> = grant
            .scopes
            .iter()
            .enumerate()
            .flat_map(|(i, scope)| {
                scope
                    .revalidate()
                    .err()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |problem| format!("scopes[{i}].{problem}"))
            })
            .collect();
        if !problems.is_empty() {
            return Err(SessionRefused::ScopesInvalid(problems));
        }
        let changed = |what: &str| {
            Err(SessionRefused::TargetChanged {
                target: target.id.clone(),
                what: what.to_owned(),
            })
        };
        if (
            target.role_arn.as_str(),
            target.region.as_str(),
            target.account_id.as_str(),
        ) != (
            grant.role_arn.as_str(),
            grant.region.as_str(),
            grant.account_id.as_str(),
        ) {
            return changed("role, region or account");
        }
        if !check_within_ceiling(&grant.scopes, &target.ceiling).is_empty() {
            return changed("ceiling, which no longer contains the grant's scopes");
        }
        let window = grant.end - grant.start;
        let longest = time::Duration::seconds(i64::try_from(limits::MAX_DURATION_SECS).unwrap_or(i64::MAX));
        if window <= time::Duration::ZERO || window > longest {
            return Err(SessionRefused::RecordInconsistent(format!(
                "its window {} .. {} is not one any grant can have",
                grant.start, grant.end
            )));
        }
        let policy = build_session_policy(&grant.scopes, grant.end)
            .map_err(|why| SessionRefused::RecordInconsistent(format!("its scopes build no session policy: {why}")))?;
        if policy != grant.session_policy {
            return Err(SessionRefused::RecordInconsistent(
                "its stored session policy is not the one its scopes and end build".to_owned(),
            ));
        }
        // Rounded up, so a grant issued the instant it is created gets its whole duration.
        let remaining_ms = u128::try_from((grant.end - self.now).whole_milliseconds()).unwrap_or(0);
        let remaining = u64::try_from(remaining_ms.div_ceil(1000)).unwrap_or(u64::MAX);
        let duration_secs = remaining.clamp(
            limits::MIN_DURATION_SECS,
            max_duration_secs.max(limits::MIN_DURATION_SECS),
        );

        let mut tags = Vec::new();
        if target.session_tags {
            tags.push(SessionTag::new("grant-id", &grant.id.to_string()));
            tags.push(SessionTag::new("requester", &grant.requester));
            tags.push(SessionTag::new("grantee", &grant.grantee));
            if !grant.ticket.is_empty() {
                tags.push(SessionTag::new("ticket", &grant.ticket));
            }
            // CloudTrail then says whether `requester` was proven, and by which issuer.
            let proof = match &grant.requester_verified {
                Some(verified) => format!("verified:{}", verified.issuer),
                None => "asserted".to_owned(),
            };
            tags.push(SessionTag::new("requester-identity", &proof));
        }
        Ok(SessionSpec {
            grant_id: grant.id,
            role_arn: grant.role_arn.clone(),
            region: grant.region.clone(),
            session_name: grant.session_name(),
            // Validated on receipt (`grpc::inbound::validate_access_request`), so this never falls back in practice.
            source_identity: limits::source_identity_for(&grant.requester).unwrap_or_else(|| "grant-broker".to_owned()),
            policy,
            duration_secs,
            external_id: target.external_id.clone(),
            tags,
            mfa: mfa.cloned(),
        })
    }
}

/// A session tag, its value already sanitised to STS's charset and length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionTag {
    pub key: &'static str,
    pub value: String,
}

impl SessionTag {
    fn new(key: &'static str, value: &str) -> Self {
        Self {
            key,
            value: limits::sanitize_tag_value(value),
        }
    }
}

/// The AssumeRole call for one approved grant. Constructed only from an [`ApprovedGrant`].
#[derive(Debug, Clone)]
pub struct SessionSpec {
    grant_id: GrantId,
    role_arn: String,
    region: String,
    session_name: String,
    source_identity: String,
    policy: String,
    duration_secs: u64,
    external_id: Option<String>,
    tags: Vec<SessionTag>,
    mfa: Option<MfaToken>,
}

impl SessionSpec {
    pub fn grant_id(&self) -> GrantId {
        self.grant_id
    }
    pub fn role_arn(&self) -> &str {
        &self.role_arn
    }
    pub fn region(&self) -> &str {
        &self.region
    }
    pub fn session_name(&self) -> &str {
        &self.session_name
    }
    pub fn source_identity(&self) -> &str {
        &self.source_identity
    }
    pub fn policy(&self) -> &str {
        &self.policy
    }
    pub fn duration_secs(&self) -> u64 {
        self.duration_secs
    }
    pub fn external_id(&self) -> Option<&str> {
        self.external_id.as_deref()
    }
    pub fn tags(&self) -> &[SessionTag] {
        &self.tags
    }
    pub fn mfa(&self) -> Option<&MfaToken> {
        self.mfa.as_ref()
    }
}

/// Credentials STS returned. The secret parts leave the service only in the RPC response.
#[derive(Debug, Clone)]
pub struct IssuedCredentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Secret,
    pub expiration: OffsetDateTime,
    pub assumed_role_arn: String,
    /// The RoleId STS reported for the session (the part of `AssumedRoleUser.AssumedRoleId`
    /// before `:<session name>`).
    pub role_id: Option<String>,
    pub packed_policy_percent: Option<i32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::{Duration, macros::datetime};

    use crate::domain::samples::{grant, read_a};

    fn target(tags: bool) -> Target {
        Target {
            id: "t".into(),
            description: String::new(),
            environment: "dev".into(),
            account_id: "123456789012".into(),
            role_arn: "arn:aws:iam::123456789012:role/r".into(),
            region: "eu-west-1".into(),
            external_id: Some("ext-1".into()),
            max_duration_secs: 3600,
            mfa_required: false,
            session_tags: tags,
            ceiling: read_a(),
            allow_unknown_actions: false,
            revocation: crate::domain::RevocationMode::Enforce,
            iam: crate::domain::IamAccess::default(),
            identity: Default::default(),
        }
    }

    #[test]
    fn only_open_approved_grants_are_issuable() {
        let start = datetime!(2026-11-28 10:00 UTC);
        let approved = grant(GrantState::Approved, start, 3600);
        assert!(ApprovedGrant::check(&approved, start + Duration::minutes(5)).is_ok());
        assert_eq!(
            ApprovedGrant::check(&approved, start + Duration::hours(1))
                .unwrap_err()
                .state,
            GrantState::Expired
        );
        for state in [
            GrantState::PendingApproval,
            GrantState::Denied,
            GrantState::Revoked,
            GrantState::Cancelled,
        ] {
            assert_eq!(
                ApprovedGrant::check(&grant(state, start, 3600), start)
                    .unwrap_err()
                    .state,
                state
            );
        }
    }

    #[test]
    fn duration_is_what_is_left_of_the_window_within_sts_limits() {
        let start = datetime!(2026-11-28 10:00 UTC);
        let long = grant(GrantState::Approved, start, 7200);
        let spec = ApprovedGrant::check(&long, start)
            .unwrap()
            .session_spec(&target(false), None, 3600)
            .unwrap();
        assert_eq!(spec.duration_secs(), 3600, "clipped to the target maximum");
        let spec = ApprovedGrant::check(&long, start + Duration::seconds(6000))
            .unwrap()
            .session_spec(&target(false), None, 3600)
            .unwrap();
        assert_eq!(spec.duration_secs(), 1200, "clipped to the grant window");
        let spec = ApprovedGrant::check(&long, start + Duration::seconds(7000))
            .unwrap()
            .session_spec(&target(false), None, 3600)
            .unwrap();
        assert_eq!(spec.duration_secs(), 900, "never below the STS minimum");
    }

    #[test]
    fn tags_are_sanitised_and_sent_only_where_enabled() {
        let start = datetime!(2026-11-28 10:00 UTC);
        let g = grant(GrantState::Approved, start, 3600);
        let approved = ApprovedGrant::check(&g, start).unwrap();
        assert!(
            approved
                .session_spec(&target(false), None, 3600)
                .unwrap()
                .tags()
                .is_empty()
        );
        let spec = approved.session_spec(&target(true), None, 3600).unwrap();
        let tags: Vec<_> = spec.tags().iter().map(|t| (t.key, t.value.as_str())).collect();
        assert_eq!(tags[1], ("requester", "alice smith _alice@example.com_"));
        assert_eq!(tags[2], ("grantee", "vendor/x"));
        assert_eq!(tags[3], ("ticket", "INC_7"));
        assert_eq!(tags[4], ("requester-identity", "asserted"));
        assert_eq!(spec.source_identity(), "alice_smith__alice@example.com_");
        assert_eq!(spec.external_id(), Some("ext-1"));
    }

    fn what_changed(refused: SessionRefused) -> String {
        match refused {
            SessionRefused::TargetChanged { what, .. } => what,
            other => panic!("expected TargetChanged, got {other:?}"),
        }
    }

    #[test]
    fn a_changed_target_refuses_to_issue() {
        let start = datetime!(2026-11-28 10:00 UTC);
        let g = grant(GrantState::Approved, start, 3600);
        let approved = ApprovedGrant::check(&g, start).unwrap();
        let mut moved = target(false);
        assert!(approved.session_spec(&moved, None, 3600).is_ok());
        moved.role_arn = "arn:aws:iam::123456789012:role/other".into();
        assert_eq!(
            what_changed(approved.session_spec(&moved, None, 3600).unwrap_err()),
            "role, region or account"
        );
        let mut narrowed = target(false);
        narrowed.ceiling = vec![];
        assert!(what_changed(approved.session_spec(&narrowed, None, 3600).unwrap_err()).starts_with("ceiling"));
    }

    #[test]
    fn the_session_policy_is_rebuilt_and_a_tampered_record_refused() {
        let start = datetime!(2026-11-28 10:00 UTC);
        let g = grant(GrantState::Approved, start, 3600);
        let spec = ApprovedGrant::check(&g, start)
            .unwrap()
            .session_spec(&target(false), None, 3600)
            .unwrap();
        assert_eq!(spec.policy(), build_session_policy(&g.scopes, g.end).unwrap());

        // One field edited in storage: the policy widened to everything.
        let mut widened = g.clone();
        widened.session_policy = widened.session_policy.replace("arn:aws:s3:::a/*", "*");
        // Or the scopes edited, leaving the policy: still inside the ceiling here, still refused.
        let mut rescoped = g.clone();
        rescoped.scopes[0].resources = vec![crate::domain::ResourcePattern::parse("arn:aws:s3:::a/x").unwrap()];
        // Or the end pushed out, past what any grant may last.
        let mut endless = g.clone();
        endless.end = start + Duration::days(30);
        for (tampered, says) in [
            (widened, "not the one its scopes and end build"),
            (rescoped, "not the one its scopes and end build"),
            (endless, "not one any grant can have"),
        ] {
            match ApprovedGrant::check(&tampered, start)
                .unwrap()
                .session_spec(&target(false), None, 3600)
            {
                Err(SessionRefused::RecordInconsistent(what)) => assert!(what.contains(says), "{what}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_record_with_patterns_refused_today_reads_but_never_issues() {
        let start = datetime!(2026-11-28 10:00 UTC);
        let mut legacy = grant(GrantState::Approved, start, 3600);
        legacy.scopes[0].resources = vec![crate::domain::ResourcePattern::from_record(
            "arn:aws:s3:::a/${aws:username}".to_owned(),
        )];
        match ApprovedGrant::check(&legacy, start)
            .unwrap()
            .session_spec(&target(false), None, 3600)
        {
            Err(SessionRefused::ScopesInvalid(problems)) => {
                assert_eq!(problems.len(), 1);
                assert!(problems[0].starts_with("scopes[0].resources[0]: "), "{problems:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("wJalrXUtnFEMI");
        assert_eq!(format!("{secret:?} {secret}"), "[redacted] [redacted]");
    }
}
