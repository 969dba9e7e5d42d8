//! Issuing credentials: every issuance decided again (the rules, the window, the cap), recorded
//! before STS is called and after it answers, and never returned when a cutoff the broker set
//! already denies them.

use super::*;

impl<P: Ports> Broker<P> {
    /// Issues for `grant` and returns it with the new issuance among its recent ones.
    pub(super) async fn issue_into(
        &self,
        caller: &Caller,
        grant: Grant,
        mfa: Option<&MfaToken>,
        decided: Decided,
    ) -> Result<AccessOutcome, BrokerError> {
        let (issuance, credentials) = self.issue(caller, &grant, mfa, decided).await?;
        let mut grant = self.as_of_now(grant);
        grant.session_roles.note(issuance.role_id.clone());
        grant.issuances.push(issuance);
        grant.issuance_count += 1;
        if grant.issuances.len() > crate::domain::RECENT_ISSUANCES {
            grant.issuances.remove(0);
        }
        Ok(AccessOutcome {
            grant,
            credentials: Some(credentials),
        })
    }

    /// Fresh credentials for one of the caller's approved grants whose window is open: exactly
    /// the checks and records of every issuance (the rules are asked again, the cap holds).
    pub async fn issue_credentials(
        &self,
        caller: &Caller,
        id: GrantId,
        mfa: Option<MfaToken>,
    ) -> Result<AccessOutcome, BrokerError> {
        let grant = self
            .own_grant(
                caller,
                id,
                "only the caller that requested it may get credentials for it",
            )
            .await?;
        tracing::info!(grant_id = %grant.id, caller = %caller.id, "credentials asked for by grant id");
        self.issue_into(caller, grant, mfa.as_ref(), Decided::Earlier).await
    }

    /// Mints credentials for an approved grant: checks everything again, records the attempt,
    /// calls STS, records the issuance; returns the credentials only once that record is written,
    /// and never credentials a role-wide cutoff already denies (a session STS issued before a
    /// cutoff the broker has set, or is setting, on the role is dead on arrival: it is recorded,
    /// and the grant issues again once the cutoff has passed).
    pub(super) async fn issue(
        &self,
        caller: &Caller,
        grant: &Grant,
        mfa: Option<&MfaToken>,
        decided: Decided,
    ) -> Result<(Issuance, IssuedCredentials), BrokerError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (issuance, credentials, cutoff) = self.issue_once(caller, grant, mfa, decided).await?;
            let Some(cutoff) = cutoff else {
                return Ok((issuance, credentials));
            };
            tracing::warn!(
                grant_id = %grant.id, access_key_id = %issuance.access_key_id, cutoff = %cutoff,
                "credentials issued before the role's cutoff are denied already: issuing again after it"
            );
            if attempts >= MAX_CUTOFF_REISSUES {
                return Err(BrokerError::Issue(IssueError {
                    kind: IssueErrorKind::Unavailable,
                    code: "RoleCutoff".to_owned(),
                    message: format!(
                        "the role's sessions keep being cut off (latest cutoff {})",
                        crate::domain::policy::rfc3339_utc(cutoff)
                    ),
                }));
            }
            let wait = cutoff + CUTOFF_MARGIN - self.clock.now();
            if wait.is_positive() {
                tokio::time::sleep(wait.unsigned_abs()).await;
            }
        }
    }

    /// One STS call for `grant`, recorded; with the role's cutoff when that covers the session.
    pub(super) async fn issue_once(
        &self,
        caller: &Caller,
        grant: &Grant,
        mfa: Option<&MfaToken>,
        decided: Decided,
    ) -> Result<(Issuance, IssuedCredentials, Option<time::OffsetDateTime>), BrokerError> {
        let spec = self.checked_session(caller, grant, mfa, decided).await?;
        // Before the attempt is recorded: a call the circuit holds back costs the grant nothing.
        if let Err(retry_after) = self.circuits.admit(&grant.target, self.clock.now()) {
            return Err(BrokerError::StsThrottled {
                target: grant.target.clone(),
                retry_after,
            });
        }
        let session_name = spec.session_name().to_owned();
        let event = |kind| GrantEvent {
            at: self.clock.now(),
            caller: caller.id.to_string(),
            person: None,
            kind,
        };

        let issuing = event(EventKind::Issuing {
            session_name: session_name.clone(),
            duration_secs: spec.duration_secs(),
        });
        let recorded = self
            .record(
                grant,
                Change::IssueAttempt {
                    limit: self.settings.max_issuances_per_grant,
                    event: &issuing,
                },
            )
            .await?;
        self.expect_appended(grant, recorded)?;

        let sent_at = self.clock.now();
        let answer = self.issuer.assume_role(&spec).await;
        let throttled = matches!(&answer, Err(error) if error.kind == IssueErrorKind::Throttled);
        let retry_after = if throttled {
            Some(self.circuits.throttled(&grant.target, self.clock.now()))
        } else {
            self.circuits.answered(&grant.target);
            None
        };
        let credentials = match answer {
            Ok(credentials) => credentials,
            Err(error) => {
                tracing::warn!(
                    grant_id = %grant.id, kind = ?error.kind, code = %error.code, error = %error.message,
                    "STS did not issue credentials"
                );
                let failed = event(EventKind::IssueFailed {
                    session_name,
                    error: format!("{}: {}", error.code, error.message),
                });
                if let Err(store_error) = self.record_event(grant, &failed).await {
                    tracing::warn!(grant_id = %grant.id, error = %store_error, "could not record the failed issuance");
                }
                if let Some(retry_after) = retry_after {
                    return Err(BrokerError::StsThrottled {
                        target: grant.target.clone(),
                        retry_after,
                    });
                }
                return Err(BrokerError::Issue(error));
            }
        };

        let issuance = Issuance {
            access_key_id: credentials.access_key_id.clone(),
            session_name: session_name.clone(),
            source_identity: spec.source_identity().to_owned(),
            assumed_role_arn: credentials.assumed_role_arn.clone(),
            role_id: credentials.role_id.clone(),
            expiration: credentials.expiration,
            issued_at: self.clock.now(),
            packed_policy_percent: credentials.packed_policy_percent,
        };
        let issued = event(EventKind::Issued {
            session_name,
            access_key_id: issuance.access_key_id.clone(),
            expiration: issuance.expiration,
        });
        // INVARIANT: credentials are returned only once this write has succeeded.
        let record = self.record(
            grant,
            Change::Issued {
                issuance: &issuance,
                event: &issued,
            },
        );
        // Read beside the record, so it costs no round trip: a cutoff any replica has set.
        let (recorded, cutoff) = tokio::join!(record, self.cutoff_covering(&grant.role_arn, sent_at));
        match recorded {
            Ok(Appended::Yes) => {}
            Ok(other) => {
                tracing::warn!(
                    grant_id = %grant.id, access_key_id = %issuance.access_key_id, outcome = ?other,
                    "credentials issued but the grant changed meanwhile: discarded"
                );
                self.record_discarded(caller, grant, &issuance, format!("grant changed meanwhile: {other:?}"))
                    .await;
                self.expect_appended(grant, other)?;
            }
            Err(error) => {
                tracing::error!(
                    grant_id = %grant.id, access_key_id = %issuance.access_key_id, error = %error,
                    "credentials issued but not recorded: discarded"
                );
                self.record_discarded(caller, grant, &issuance, error.to_string()).await;
                return Err(BrokerError::CredentialsNotRecorded {
                    grant_id: grant.id,
                    cause: error,
                });
            }
        }
        let cutoff = match cutoff {
            Ok(cutoff) => cutoff,
            // Not knowing is not a reason to withhold credentials already recorded: the cutoff
            // read fails only with the store, and then the grant says which sessions it denies.
            Err(error) => {
                tracing::warn!(grant_id = %grant.id, %error, "could not read the role's cutoff");
                None
            }
        };
        if cutoff.is_none() {
            tracing::info!(
                grant_id = %grant.id, access_key_id = %issuance.access_key_id, expiration = %issuance.expiration,
                "credentials issued"
            );
        }
        Ok((issuance, credentials, cutoff))
    }

    /// The role's cutoff when it denies a session whose AssumeRole call was sent at `sent_at`
    /// (STS stamps the session somewhere between sending and answering; IAM's clock may differ
    /// from ours by a little: [`CUTOFF_MARGIN`]).
    pub(super) async fn cutoff_covering(
        &self,
        role_arn: &str,
        sent_at: time::OffsetDateTime,
    ) -> Result<Option<time::OffsetDateTime>, BrokerError> {
        if self.enforcing_target(role_arn).is_none() {
            return Ok(None);
        }
        let summary = self
            .store
            .role_summaries(&[role_arn.to_owned()])
            .await?
            .pop()
            .unwrap_or_default();
        let now = self.clock.now();
        Ok(summary
            .cutoff
            .filter(|cutoff| cutoff.until > now && cutoff.at + CUTOFF_MARGIN > sent_at)
            .map(|cutoff| cutoff.at))
    }

    /// The checks made before every STS call: the grant is approved and open, its target still
    /// is what it was decided for, its record is consistent (the session comes from the rebuilt
    /// policy), and the rules still permit it (unless they decided it in this very call).
    pub(super) async fn checked_session(
        &self,
        caller: &Caller,
        grant: &Grant,
        mfa: Option<&MfaToken>,
        decided: Decided,
    ) -> Result<SessionSpec, BrokerError> {
        let now = self.clock.now();
        let approved = ApprovedGrant::check(grant, now).map_err(|not| match not.starts_at {
            Some(start) => BrokerError::NotStarted {
                grant_id: grant.id,
                start,
            },
            None => BrokerError::NotIssuable {
                grant_id: grant.id,
                state: not.state,
            },
        })?;
        let target = self.target_for(caller, &grant.target)?;
        if target.mfa_required && mfa.is_none() {
            return Err(BrokerError::InvalidRequest(vec![FieldViolation::new(
                "mfa_code",
                format!("target `{}` requires MFA: send mfa_serial and mfa_code", target.id),
            )]));
        }
        let spec = match approved.session_spec(target, mfa, self.max_duration_secs(target)) {
            Ok(spec) => spec,
            Err(SessionRefused::TargetChanged { target, what }) => {
                return Err(BrokerError::TargetChanged {
                    grant_id: grant.id,
                    target,
                    what,
                });
            }
            Err(SessionRefused::ScopesInvalid(problems)) => {
                return Err(BrokerError::ScopesNoLongerValid {
                    grant_id: grant.id,
                    problems,
                });
            }
            Err(SessionRefused::RecordInconsistent(what)) => {
                tracing::error!(grant_id = %grant.id, %what, "grant record failed its integrity checks: nothing issued");
                let refused = GrantEvent {
                    at: now,
                    caller: caller.id.to_string(),
                    person: None,
                    kind: EventKind::IssueRefused { reason: what.clone() },
                };
                if let Err(error) = self.record_event(grant, &refused).await {
                    tracing::warn!(grant_id = %grant.id, %error, "could not record the refused issuance");
                }
                return Err(BrokerError::RecordInconsistent {
                    grant_id: grant.id,
                    what,
                });
            }
        };
        if decided == Decided::Earlier {
            self.rules_still_permit(caller, grant, target, mfa.is_some(), now)?;
        }
        Ok(spec)
    }

    /// Asks the rules again, as of now: `request` must still be permitted, and a grant that was
    /// approved automatically must still be approvable automatically (a `forbid` added after
    /// approval stops re-issue at once, not when the grant ends).
    pub(super) fn rules_still_permit(
        &self,
        caller: &Caller,
        grant: &Grant,
        target: &Target,
        mfa_present: bool,
        now: time::OffsetDateTime,
    ) -> Result<(), BrokerError> {
        // The request as it was decided: an approved extension was decided on its own terms, and
        // a longer total must not turn a grant approved at once into one that needed people.
        let decision: Decision = with_rule_input(
            caller.id.as_str(),
            grant,
            target,
            mfa_present,
            now,
            Asking::Request,
            |input| super::ask_rules(super::Question::Issuance, || self.rules.decide(input)),
        );
        let refused = match (grant.decision.outcome, decision.outcome) {
            (_, Outcome::Deny) => Some(decision.reason),
            (Outcome::Approve, Outcome::RequireApproval) => Some(format!(
                "it was approved automatically, and the rules no longer approve it automatically: {}",
                decision.reason
            )),
            _ => None,
        };
        match refused {
            None => Ok(()),
            Some(reason) => {
                tracing::warn!(grant_id = %grant.id, %reason, policy_ids = ?decision.policy_ids, "rules refuse issuance");
                Err(BrokerError::RulesRefuseIssuance {
                    grant_id: grant.id,
                    policy_ids: decision.policy_ids,
                    reason,
                })
            }
        }
    }

    /// Best effort: the audit trail says which session STS created but nobody received. If the
    /// store is down this fails too, and the `issuing` event plus the error log still name it.
    pub(super) async fn record_discarded(&self, caller: &Caller, grant: &Grant, issuance: &Issuance, reason: String) {
        let event = GrantEvent {
            at: self.clock.now(),
            caller: caller.id.to_string(),
            person: None,
            kind: EventKind::IssueDiscarded {
                session_name: issuance.session_name.clone(),
                access_key_id: issuance.access_key_id.clone(),
                reason,
                role_id: issuance.role_id.clone(),
            },
        };
        if let Err(error) = self.record_event(grant, &event).await {
            tracing::warn!(grant_id = %grant.id, error = %error, "could not record the discarded issuance");
        }
    }
}
