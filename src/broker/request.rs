//! Asking for access: the targets a caller may ask for, RequestAccess (decided by the rules,
//! replayed for a request id already used, issued at once when approved), Explain (the same
//! decision, nothing recorded) and CancelGrant.

use super::*;

impl<P: Ports> Broker<P> {
    /// The targets `caller` may request, in id order.
    pub fn list_targets(&self, caller: &Caller) -> Vec<&Target> {
        self.targets
            .values()
            .filter(|target| caller.may_request(&target.id))
            .collect()
    }

    /// The longest session STS will issue on `target` for this broker.
    pub fn max_duration_secs(&self, target: &Target) -> u64 {
        max_duration_secs(target, self.settings.role_chaining)
    }

    /// What the request would get now, without any of the effects of making it.
    pub fn explain(&self, caller: &Caller, request: &AccessRequest) -> Result<Explanation, BrokerError> {
        explain::explain(
            &self.rules,
            &self.targets,
            &self.settings,
            caller,
            request,
            self.clock.now(),
        )
    }

    /// The target as `caller` may use it ([`explain::target_for`]).
    pub(super) fn target_for(&self, caller: &Caller, id: &str) -> Result<&Target, BrokerError> {
        explain::target_for(&self.targets, caller, id)
    }

    /// Decides, records and (when approved) issues. A repeated request id with the same body
    /// returns the recorded grant and, if it is approved, fresh credentials.
    pub async fn request_access(
        &self,
        caller: &Caller,
        mut request: AccessRequest,
    ) -> Result<AccessOutcome, BrokerError> {
        let now = self.clock.now();
        let vetted = explain::vet(&self.targets, &self.settings, caller, &request, now)?;
        // The requester as proven: what the fingerprint, the rules and the record name.
        request.requester.clone_from(&vetted.requester.name);
        let (target, start, end) = (vetted.target, vetted.start, vetted.end);
        let duration = end - start;
        // A scheduled request never waits past the end of the window it asked for.
        let pending_until = match request.start {
            Some(_) => (now + self.settings.pending_timeout).min(end),
            None => now + self.settings.pending_timeout,
        };

        // Every request counts, a retry too (it may call STS again).
        let rates = [
            (Rate::Caller(caller.id.clone()), caller.limits.requests_per_minute),
            (
                Rate::Person(vetted.requester.name.clone()),
                caller.limits.requests_per_person_per_minute,
            ),
        ];
        if let Some(exceeded) = self.store.count_request(&rates, now).await? {
            tracing::info!(caller = %caller.id, limit = exceeded.limit.name(), "request refused by a limit");
            return Err(BrokerError::LimitExceeded(exceeded));
        }

        let fingerprint = request.fingerprint();
        let candidate = GrantId::from_uuid(Uuid::now_v7());
        let grant_id = match self
            .store
            .reserve(
                &caller.id,
                request.request_id.as_ref(),
                &fingerprint,
                candidate,
                now,
                // The latest end the grant can get: approved just before its request times out.
                end.max(pending_until + duration),
            )
            .await?
        {
            Reservation::New => candidate,
            Reservation::Existing {
                grant_id,
                fingerprint: recorded,
            } => {
                if recorded != fingerprint {
                    return Err(BrokerError::RequestIdReused {
                        request_id: request.request_id.map(|id| id.as_str().to_owned()).unwrap_or_default(),
                        grant_id,
                    });
                }
                match self.store.get(grant_id).await? {
                    Some(grant) => {
                        Self::bound_to(&grant, caller, request.request_id.as_ref())?;
                        Self::same_proof(&grant, &vetted.requester, request.request_id.as_ref())?;
                        return self.replay(caller, grant, request.mfa.as_ref()).await;
                    }
                    // Reserved by an attempt that stopped before creating the grant: finish it.
                    None => grant_id,
                }
            }
        };

        let decision = super::ask_rules(super::Question::Request, || {
            self.rules.decide(&vetted.rule_input(caller, &request, now))
        });
        let state = decision.outcome.initial_state();
        let event = GrantEvent {
            at: now,
            caller: caller.id.to_string(),
            person: Some(vetted.requester.clone()),
            kind: EventKind::Requested {
                state,
                outcome: decision.outcome,
                policy_ids: decision.policy_ids.clone(),
                reason: decision.reason.clone(),
            },
        };
        let grant = Grant {
            id: grant_id,
            state,
            request_id: request.request_id.as_ref().map(|id| id.as_str().to_owned()),
            caller: caller.id.clone(),
            target: target.id.clone(),
            account_id: target.account_id.clone(),
            role_arn: target.role_arn.clone(),
            region: target.region.clone(),
            requester: request.requester,
            requester_verified: vetted.requester.verified.clone(),
            grantee: request.grantee,
            scopes: request.scopes,
            session_policy: vetted.session_policy,
            justification: request.justification,
            ticket: request.ticket,
            mfa_serial: request.mfa.as_ref().map(|mfa| mfa.serial.clone()),
            created_at: now,
            start,
            end,
            pending_until,
            decision,
            approvals: Vec::new(),
            review: None,
            extensions: Vec::new(),
            revocation: None,
            enforcement: None,
            role_cutoff: None,
            issuances: Vec::new(),
            issuance_count: 0,
            session_roles: Default::default(),
        };
        tracing::info!(
            grant_id = %grant.id, caller = %caller.id, target = %grant.target, state = state.as_str(),
            policy_ids = ?grant.decision.policy_ids, "access requested"
        );
        let mut events = vec![event];
        if grant.decision.break_glass {
            events.push(GrantEvent {
                at: now,
                caller: caller.id.to_string(),
                person: Some(vetted.requester.clone()),
                kind: EventKind::BreakGlassUsed {
                    justification: grant.justification.clone(),
                },
            });
            tracing::warn!(grant_id = %grant.id, caller = %caller.id, requester = %grant.requester, "break-glass used");
        }
        // Places under the caps, held before the grant exists (a denied grant takes none).
        let caps = Self::caps_of(&grant, &caller.limits);
        if let Some(exceeded) = self
            .store
            .hold_places(grant.id, &caps, grant.last_moment(), now)
            .await?
        {
            tracing::info!(caller = %caller.id, limit = exceeded.limit.name(), "request refused by a limit");
            return Err(BrokerError::LimitExceeded(exceeded));
        }
        let created = match self.store.create(&grant, &events).await {
            Ok(created) => created,
            Err(error) => {
                let held: Vec<Cap> = caps.into_iter().map(|(cap, _)| cap).collect();
                if let Err(release) = self.store.release_places(grant.id, &held).await {
                    tracing::warn!(grant_id = %grant.id, error = %release, "places not given back; they free themselves at the grant's end");
                }
                return Err(error.into());
            }
        };
        if created {
            super::count_events(&grant, &events);
            self.notifier.grant_changed(&grant, grant.state, &events).await;
        } else {
            // A concurrent retry with the same request id created it first.
            let existing = self
                .store
                .get(grant_id)
                .await?
                .ok_or(BrokerError::GrantNotFound(grant_id))?;
            Self::bound_to(&existing, caller, request.request_id.as_ref())?;
            Self::same_proof(&existing, &vetted.requester, request.request_id.as_ref())?;
            return self.replay(caller, existing, request.mfa.as_ref()).await;
        }
        self.finish(caller, grant, request.mfa.as_ref(), Decided::JustNow).await
    }

    /// The grant a request id entry names must be the one this caller recorded under that id: the
    /// entry is not sealed (the grant is), so one rewritten to point at another caller's grant
    /// is tampering, never a way to be handed that grant.
    fn bound_to(
        grant: &Grant,
        caller: &Caller,
        request_id: Option<&crate::domain::RequestId>,
    ) -> Result<(), BrokerError> {
        if grant.caller == caller.id && grant.request_id.as_deref() == request_id.map(|id| id.as_str()) {
            return Ok(());
        }
        tracing::error!(
            grant_id = %grant.id, caller = %caller.id,
            "a request id entry names a grant recorded for another caller or request id: changed outside the broker"
        );
        Err(BrokerError::Store(StoreError::Tampered {
            grant_id: grant.id,
            what: "the request id entry names a grant recorded for another caller or request id".to_owned(),
        }))
    }

    /// A retry names its requester as the recorded request did, and proves them the same way
    /// (the same issuer, or asserted both times): otherwise it is another request under a
    /// reused id.
    fn same_proof(
        grant: &Grant,
        requester: &crate::domain::identity::Attribution,
        request_id: Option<&crate::domain::RequestId>,
    ) -> Result<(), BrokerError> {
        let issuer = |verified: Option<&crate::domain::identity::Verified>| verified.map(|v| v.issuer.clone());
        if issuer(grant.requester_verified.as_ref()) == issuer(requester.verified.as_ref()) {
            return Ok(());
        }
        Err(BrokerError::RequestIdReused {
            request_id: request_id.map(|id| id.as_str().to_owned()).unwrap_or_default(),
            grant_id: grant.id,
        })
    }

    /// The caps a new grant counts against: one of its grantee's live grants, and while it waits,
    /// one of its caller's pending grants.
    fn caps_of(grant: &Grant, limits: &Limits) -> Vec<(Cap, u32)> {
        let mut caps = Vec::new();
        if matches!(grant.state, GrantState::PendingApproval | GrantState::Approved) {
            caps.push((
                Cap::LiveForGrantee(grant.grantee.clone()),
                limits.live_grants_per_grantee,
            ));
        }
        if grant.state == GrantState::PendingApproval {
            caps.push((Cap::PendingForCaller(grant.caller.clone()), limits.pending_grants));
        }
        caps
    }

    /// A retried request: the recorded grant, with fresh credentials when it is approved.
    pub(super) async fn replay(
        &self,
        caller: &Caller,
        grant: Grant,
        mfa: Option<&MfaToken>,
    ) -> Result<AccessOutcome, BrokerError> {
        tracing::info!(grant_id = %grant.id, caller = %caller.id, "request retried with the same request id");
        self.finish(caller, grant, mfa, Decided::Earlier).await
    }

    pub(super) async fn finish(
        &self,
        caller: &Caller,
        grant: Grant,
        mfa: Option<&MfaToken>,
        decided: Decided,
    ) -> Result<AccessOutcome, BrokerError> {
        let now = self.clock.now();
        // Pending, denied, ...; or approved for a scheduled window that has not opened yet:
        // the grant, and credentials later (IssueCredentials, or a retry).
        if grant.state != GrantState::Approved || now < grant.start {
            return Ok(AccessOutcome {
                grant: self.as_of_now(grant),
                credentials: None,
            });
        }
        self.issue_into(caller, grant, mfa, decided).await
    }

    /// Withdraws one of the caller's grants: PENDING_APPROVAL or APPROVED becomes CANCELLED, with
    /// a `cancelled` event, in one compare-and-set (an issuance racing it either lands first or
    /// is refused).
    pub async fn cancel_grant(&self, caller: &Caller, id: GrantId, reason: String) -> Result<Grant, BrokerError> {
        let mut grant = self
            .own_grant(caller, id, "only the caller that requested it may cancel it")
            .await?;
        let now = self.clock.now();
        let transition = Transition::Cancel;
        let not_allowed = |state| BrokerError::TransitionNotAllowed {
            grant_id: id,
            refused: NotAllowed { transition, state },
        };
        transition
            .from(grant.state_at(now))
            .map_err(|refused| not_allowed(refused.state))?;
        let event = GrantEvent {
            at: now,
            caller: caller.id.to_string(),
            person: None,
            kind: EventKind::Cancelled { reason },
        };
        self.apply(
            &grant,
            Change::Transition {
                transition,
                event: &event,
            },
        )
        .await?;
        tracing::info!(grant_id = %id, caller = %caller.id, "grant cancelled");
        grant.state = GrantState::Cancelled;
        Ok(grant)
    }
}
