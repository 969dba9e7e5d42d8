//! People deciding: approvals toward a quorum, denials, and reviews of break-glass grants, each
//! by a person the rules let decide, relayed by a caller that may relay them.

use super::*;

/// A person deciding on a grant: who, how the broker knows (verified or asserted), and their
/// groups (configured, and from their token).
pub(super) struct Decider {
    /// The calling system relaying them (the rules see it as `context.acting_caller`).
    pub(super) relayed_by: String,
    pub(super) person: Person,
    pub(super) attribution: Attribution,
    pub(super) groups: BTreeSet<String>,
}

impl<P: Ports> Broker<P> {
    /// A person's approver groups, from the configuration (none when not listed).
    pub(super) fn groups_of(&self, person: &Person) -> BTreeSet<String> {
        self.settings.approver_groups.get(person).cloned().unwrap_or_default()
    }

    /// The person a call names to decide on a grant (approve, deny, review, revoke in their
    /// name): a verified person, unless the caller may assert people; in the groups the
    /// configuration gives them and those their token carries.
    pub(super) fn decider(&self, caller: &Caller, claimed: &Claimed, field: &str) -> Result<Decider, BrokerError> {
        let policy = AssertionPolicy {
            may_assert_people: caller.assert_people,
            must_be_verified: false,
            person_only: true,
        };
        self.decider_under(caller, claimed, field, policy)
    }

    /// The person whose approval queue a caller reads: the subject of their token (with its
    /// groups) when it sends one, else the name it sends (a read discloses nothing the caller,
    /// which relays approvers, could not list anyway).
    pub(super) fn reader(&self, caller: &Caller, claimed: &Claimed, field: &str) -> Result<Decider, BrokerError> {
        let policy = AssertionPolicy {
            may_assert_people: true,
            must_be_verified: false,
            person_only: false,
        };
        self.decider_under(caller, claimed, field, policy)
    }

    fn decider_under(
        &self,
        caller: &Caller,
        claimed: &Claimed,
        field: &str,
        policy: AssertionPolicy,
    ) -> Result<Decider, BrokerError> {
        let attribution = attribute(caller, claimed, field, policy)?;
        let person = claimed
            .person()
            .cloned()
            .ok_or_else(|| BrokerError::InvalidRequest(vec![FieldViolation::new(field, "required")]))?;
        // The configured groups are the person's only when proven by the issuer the
        // configuration names for them (if it names one).
        let configured_apply = match (&attribution.verified, self.settings.approver_issuers.get(&person)) {
            (Some(verified), Some(issuer)) => &verified.issuer == issuer,
            _ => true,
        };
        let mut groups = if configured_apply {
            self.groups_of(&person)
        } else {
            BTreeSet::new()
        };
        if let Some(verified) = &attribution.verified {
            groups.extend(verified.groups.iter().cloned());
        }
        Ok(Decider {
            relayed_by: caller.id.to_string(),
            person,
            attribution,
            groups,
        })
    }

    /// A target's demand that approvals come from a person who used MFA recently.
    pub(super) fn check_approval_mfa(&self, target: &Target, decider: &Decider) -> Result<(), BrokerError> {
        let Some(max_age) = target.identity.approval_mfa_max_age else {
            return Ok(());
        };
        let refuse = |reason| BrokerError::ApproverMfaRequired {
            approver: decider.person.to_string(),
            target: target.id.clone(),
            max_age_minutes: max_age.whole_minutes(),
            reason,
        };
        let verified = decider
            .attribution
            .verified
            .as_ref()
            .ok_or_else(|| refuse("the approver is not verified"))?;
        if !verified.mfa {
            return Err(refuse("the approver's token does not show MFA (`amr`)"));
        }
        match verified.auth_age_secs(self.clock.now()) {
            None => Err(refuse(
                "the approver's token does not say when they authenticated (`auth_time`)",
            )),
            Some(age) if age > max_age.whole_seconds() => Err(refuse("the approver authenticated too long ago")),
            Some(_) => Ok(()),
        }
    }

    /// The target of a grant `person` is about to decide on, refusing when they requested it.
    pub(super) fn target_for_decider(&self, grant: &Grant, person: &Person) -> Result<&Target, BrokerError> {
        if person.as_str() == grant.requester {
            return Err(BrokerError::SelfApproval {
                grant_id: grant.id,
                approver: person.to_string(),
            });
        }
        self.targets
            .get(&grant.target)
            .ok_or_else(|| BrokerError::TargetNotAllowed {
                caller: grant.caller.to_string(),
                target: grant.target.clone(),
            })
    }

    /// Whether the rules let `approver` decide on this grant (its request, or its extension).
    pub(super) fn check_eligible(
        &self,
        grant: &Grant,
        target: &Target,
        decider: &Decider,
        now: time::OffsetDateTime,
        asking: Asking,
    ) -> Result<(), BrokerError> {
        let approver = &decider.person;
        let eligibility = with_rule_input(
            &decider.relayed_by,
            grant,
            target,
            grant.mfa_serial.is_some(),
            now,
            asking,
            |input| {
                self.rules
                    .eligible_approver(input, approver, &decider.groups, decider.attribution.verified.as_ref())
            },
        );
        match eligibility {
            Eligibility::Eligible { .. } => Ok(()),
            Eligibility::NotEligible { policy_ids, reason } => Err(BrokerError::ApproverNotEligible {
                grant_id: grant.id,
                approver: approver.to_string(),
                policy_ids,
                reason,
            }),
        }
    }

    /// A pending grant and its target, for a decision by `approver` (never on their own request).
    pub(super) fn pending_for(
        &self,
        grant: Grant,
        approver: &Person,
        transition: Transition,
    ) -> Result<(Grant, &Target), BrokerError> {
        let id = grant.id;
        transition
            .from(grant.state_at(self.clock.now()))
            .map_err(|refused| BrokerError::TransitionNotAllowed { grant_id: id, refused })?;
        let target = match transition {
            // A requester may refuse their own request (as they may cancel it), never approve it.
            Transition::Deny => self
                .targets
                .get(&grant.target)
                .ok_or_else(|| BrokerError::TargetNotAllowed {
                    caller: grant.caller.to_string(),
                    target: grant.target.clone(),
                })?,
            _ => self.target_for_decider(&grant, approver)?,
        };
        Ok((grant, target))
    }

    /// Records `approver`'s approval of a pending grant, or of an approved grant's waiting
    /// extension; the approval that meets the requirement approves it: a grant's window starts
    /// now, an extension moves its end. Of racing approvals each is decided on the approvals
    /// actually recorded (a compare-and-set on their count), so a quorum is met exactly once.
    /// Approving twice is answered with the grant as it is.
    pub async fn approve_grant(
        &self,
        caller: &Caller,
        id: GrantId,
        approver: impl Into<Claimed>,
        comment: String,
    ) -> Result<Grant, BrokerError> {
        permit(caller, Rpc::ApproveGrant)?;
        let decider = self.decider(caller, &approver.into(), "approver")?;
        let approver = decider.person.clone();
        for _ in 0..APPROVAL_ATTEMPTS {
            let grant = self.store.get(id).await?.ok_or(BrokerError::GrantNotFound(id))?;
            permit_on(caller, GrantAct::Decide, &grant)?;
            if self.extension_waits(&grant) {
                match self.approve_extension(caller, grant, &decider, &comment).await? {
                    Some(grant) => return Ok(grant),
                    // Another change to its extensions landed first: decide again.
                    None => continue,
                }
            }
            // A retry (a portal whose answer was lost) gets the grant as its approval left it,
            // whatever state that led to: approved, issued, even expired or revoked since.
            let approved_already =
                |approvals: &[Approval]| approvals.iter().any(|approval| approval.approver == approver);
            if approved_already(&grant.approvals)
                || grant
                    .extensions
                    .last()
                    .is_some_and(|extension| approved_already(&extension.approvals))
            {
                return Ok(self.as_of_now(grant));
            }
            let (mut grant, target) = self.pending_for(grant, &approver, Transition::RecordApproval)?;
            let now = self.clock.now();
            if grant.approvals.len() >= MAX_RECORDED_APPROVALS {
                return Err(BrokerError::TooManyApprovals { grant_id: id });
            }
            self.check_eligible(&grant, target, &decider, now, Asking::Request)?;
            self.check_approval_mfa(target, &decider)?;
            let approval = Approval {
                approver: approver.clone(),
                groups: decider.groups.clone(),
                at: now,
                comment: comment.clone(),
                caller: caller.id.to_string(),
                verified: decider.attribution.verified.clone(),
            };
            let before = grant.approvals.len();
            grant.approvals.push(approval.clone());
            let met = grant.decision.approvals_required.is_met(&grant.approvals);
            let mut events = vec![GrantEvent {
                at: now,
                caller: caller.id.to_string(),
                person: Some(decider.attribution.clone()),
                kind: EventKind::ApprovalRecorded {
                    approver: approver.to_string(),
                    groups: approval.groups.iter().cloned().collect(),
                    comment: comment.clone(),
                    extension: None,
                },
            }];
            // The window starts at the approval that meets the quorum (or the scheduled start, if
            // later), with the full duration.
            let start = now.max(grant.start);
            let end = start + grant.duration();
            let policy = policy_until(&grant, end)?;
            if met {
                events.push(GrantEvent {
                    at: now,
                    caller: caller.id.to_string(),
                    person: None,
                    kind: EventKind::Approved { start, end },
                });
            }
            let transition = if met {
                Transition::Approve
            } else {
                Transition::RecordApproval
            };
            let change = Change::Approval {
                transition,
                approvals_before: before,
                approval: &approval,
                window: met.then_some(Window {
                    start,
                    end,
                    session_policy: &policy,
                }),
                events: &events,
            };
            match self.apply(&grant, change).await? {
                Applied::Landed => {
                    tracing::info!(grant_id = %id, %approver, approved = met, "approval recorded");
                    if met {
                        grant.state = GrantState::Approved;
                        (grant.start, grant.end, grant.session_policy) = (start, end, policy);
                        // Best effort: a grant whose deadline was not moved is met by the sweep
                        // at its old deadline, found not yet due, and rescheduled then.
                        if let Err(error) = self.store.schedule_deadline(id, end).await {
                            tracing::warn!(grant_id = %id, %error, "could not move the grant's deadline");
                        }
                    }
                    return Ok(grant);
                }
                // Another approval landed first: decide again on what is recorded now.
                Applied::LostRace => continue,
            }
        }
        Err(BrokerError::Contended { grant_id: id })
    }

    /// An eligible approver refuses a pending grant: DENIED, with their reason. On an approved
    /// grant whose extension waits, refuses the extension; the grant stays approved.
    pub async fn deny_grant(
        &self,
        caller: &Caller,
        id: GrantId,
        approver: impl Into<Claimed>,
        reason: String,
    ) -> Result<Grant, BrokerError> {
        permit(caller, Rpc::DenyGrant)?;
        let decider = self.decider(caller, &approver.into(), "approver")?;
        let approver = decider.person.clone();
        let grant = self.store.get(id).await?.ok_or(BrokerError::GrantNotFound(id))?;
        permit_on(caller, GrantAct::Decide, &grant)?;
        if self.extension_waits(&grant) {
            return self.deny_extension(caller, grant, &decider, reason).await;
        }
        let (mut grant, target) = self.pending_for(grant, &approver, Transition::Deny)?;
        let now = self.clock.now();
        self.check_eligible(&grant, target, &decider, now, Asking::Request)?;
        let event = GrantEvent {
            at: now,
            caller: caller.id.to_string(),
            person: Some(decider.attribution.clone()),
            kind: EventKind::Denied {
                approver: approver.to_string(),
                reason,
            },
        };
        self.apply(
            &grant,
            Change::Transition {
                transition: Transition::Deny,
                event: &event,
            },
        )
        .await?;
        tracing::info!(grant_id = %id, %approver, "grant denied");
        grant.state = GrantState::Denied;
        Ok(grant)
    }

    /// An eligible approver (never the requester) reviews a break-glass grant after the fact:
    /// once, whatever its state now, with a `reviewed` event.
    pub async fn review_grant(
        &self,
        caller: &Caller,
        id: GrantId,
        reviewer: impl Into<Claimed>,
        comment: String,
    ) -> Result<Grant, BrokerError> {
        permit(caller, Rpc::ReviewGrant)?;
        let decider = self.decider(caller, &reviewer.into(), "reviewer")?;
        let reviewer = decider.person.clone();
        let mut grant = self.store.get(id).await?.ok_or(BrokerError::GrantNotFound(id))?;
        permit_on(caller, GrantAct::Decide, &grant)?;
        if !grant.decision.break_glass {
            return Err(BrokerError::NotBreakGlass { grant_id: id });
        }
        let target = self.target_for_decider(&grant, &reviewer)?;
        let now = self.clock.now();
        self.check_eligible(&grant, target, &decider, now, Asking::Request)?;
        let review = Review {
            reviewer: reviewer.clone(),
            at: now,
            comment: comment.clone(),
            caller: caller.id.to_string(),
            verified: decider.attribution.verified.clone(),
        };
        let event = GrantEvent {
            at: now,
            caller: caller.id.to_string(),
            person: Some(decider.attribution.clone()),
            kind: EventKind::Reviewed {
                reviewer: reviewer.to_string(),
                comment,
            },
        };
        let changed = self
            .record(
                &grant,
                Change::Review {
                    review: &review,
                    event: &event,
                },
            )
            .await?;
        match changed {
            Appended::Yes => {
                tracing::info!(grant_id = %id, %reviewer, "break-glass grant reviewed");
                grant.review = Some(review);
                Ok(self.as_of_now(grant))
            }
            Appended::AlreadyReviewed => Err(BrokerError::AlreadyReviewed { grant_id: id }),
            Appended::Missing => Err(BrokerError::GrantNotFound(id)),
            other => Err(unasked_refusal("review", other)),
        }
    }
}
