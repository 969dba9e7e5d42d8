//! Extending an approved grant: asking for more time, and approving or refusing an extension that
//! waits for people. Every change of a grant's extensions is one compare-and-set on the
//! extensions as read (and on the grant being APPROVED), so of racing requests, approvals and
//! refusals exactly one lands and the others decide again on what is recorded.

use super::{
    APPROVAL_ATTEMPTS, Applied, Asking, Broker, BrokerError, MAX_RECORDED_APPROVALS, decide::Decider, policy_until,
    with_rule_input,
};
use crate::{
    domain::{
        Caller, EventKind, Grant, GrantEvent, GrantId, GrantState, Outcome, Target,
        approval::Approval,
        extension::{Extension, ExtensionRequest, ExtensionState, MAX_EXTENSIONS, check_total},
        lifecycle::{NotAllowed, Transition},
    },
    ports::{Change, Clock, ExtensionsChange, GrantQueues, GrantRecords, Ports, Window},
};

/// A change of a grant's extensions, ready to be written.
struct ExtensionWrite {
    transition: Transition,
    extensions: Vec<Extension>,
    events: Vec<GrantEvent>,
    /// For an approved extension: the new end and the session policy for it.
    new_window: Option<(time::OffsetDateTime, String)>,
}

impl<P: Ports> Broker<P> {
    /// Whether what waits on this grant, as of now, is an extension (rather than the request).
    pub(super) fn extension_waits(&self, grant: &Grant) -> bool {
        grant.state_at(self.clock.now()) == GrantState::Approved && grant.pending_extension().is_some()
    }

    /// Asks for more time on one of the caller's approved grants whose window has not ended. The
    /// rules decide at once (action `extend`): approved, the end moves now; waiting, approvers
    /// decide with ApproveGrant and DenyGrant; denied, the grant is returned with the extension
    /// refused (not an error, like a denied request). The same `request_id` again returns the
    /// grant as it is.
    pub async fn extend_grant(
        &self,
        caller: &Caller,
        id: GrantId,
        request: ExtensionRequest,
    ) -> Result<Grant, BrokerError> {
        for _ in 0..APPROVAL_ATTEMPTS {
            let grant = self
                .own_grant(caller, id, "only the caller that requested it may extend it")
                .await?;
            let now = self.clock.now();
            if let Some(request_id) = &request.request_id
                && let Some(earlier) = grant
                    .extensions
                    .iter()
                    .find(|extension| extension.request_id.as_ref() == Some(request_id))
            {
                if earlier.additional_secs != request.additional_secs || earlier.justification != request.justification
                {
                    return Err(BrokerError::RequestIdReused {
                        request_id: request_id.clone(),
                        grant_id: id,
                    });
                }
                return Ok(self.as_of_now(grant));
            }
            Transition::RequestExtension
                .from(grant.state_at(now))
                .map_err(|refused| BrokerError::TransitionNotAllowed { grant_id: id, refused })?;
            if let Some(waiting) = grant.pending_extension() {
                return Err(BrokerError::ExtensionWaiting {
                    grant_id: id,
                    number: waiting.number,
                });
            }
            if grant.extensions.len() >= MAX_EXTENSIONS {
                return Err(BrokerError::TooManyExtensions {
                    grant_id: id,
                    limit: MAX_EXTENSIONS,
                });
            }
            let target = self.target_for(caller, &grant.target)?;
            check_total(&grant, request.additional_secs, self.max_duration_secs(target))
                .map_err(|violation| BrokerError::InvalidRequest(vec![violation]))?;
            let decision = with_rule_input(
                caller.id.as_str(),
                &grant,
                target,
                grant.mfa_serial.is_some(),
                now,
                Asking::Extension(request.additional_secs),
                |input| super::ask_rules(super::Question::Extension, || self.rules.decide_extension(input)),
            );
            let number = u32::try_from(grant.extensions.len() + 1).unwrap_or(u32::MAX);
            let event = |kind| GrantEvent {
                at: now,
                caller: caller.id.to_string(),
                person: None,
                kind,
            };
            let mut events = vec![event(EventKind::ExtensionRequested {
                extension: number,
                additional_secs: request.additional_secs,
                justification: request.justification.clone(),
                outcome: decision.outcome,
                policy_ids: decision.policy_ids.clone(),
                reason: decision.reason.clone(),
            })];
            let mut extension = Extension {
                number,
                request_id: request.request_id.clone(),
                additional_secs: request.additional_secs,
                justification: request.justification.clone(),
                requested_at: now,
                caller: caller.id.to_string(),
                state: ExtensionState::Pending,
                decision,
                approvals: Vec::new(),
                denied_by: None,
                new_end: None,
            };
            let (transition, new_window) = match extension.decision.outcome {
                Outcome::Approve => {
                    let end = grant.end + extension.additional();
                    extension.state = ExtensionState::Approved;
                    extension.new_end = Some(end);
                    events.push(event(EventKind::Extended { extension: number, end }));
                    (Transition::Extend, Some((end, policy_until(&grant, end)?)))
                }
                Outcome::Deny => {
                    extension.state = ExtensionState::Denied;
                    events.push(event(EventKind::ExtensionDenied {
                        extension: number,
                        approver: None,
                        reason: extension.decision.reason.clone(),
                    }));
                    (Transition::RequestExtension, None)
                }
                Outcome::RequireApproval => (Transition::RequestExtension, None),
            };
            let mut extensions = grant.extensions.clone();
            extensions.push(extension);
            let write = ExtensionWrite {
                transition,
                extensions,
                events,
                new_window,
            };
            if let Some(grant) = self.write_extensions(grant, write).await? {
                tracing::info!(
                    grant_id = %id, caller = %caller.id, extension = number,
                    state = grant.extensions.last().map_or("", |extension| extension.state.as_str()),
                    "extension requested"
                );
                return Ok(grant);
            }
        }
        Err(BrokerError::Contended { grant_id: id })
    }

    /// The grant's waiting extension and its target, for a decision by `approver`: eligible under
    /// the rules (asked about the extension), never the requester.
    fn waiting_extension_for(&self, grant: &Grant, decider: &Decider) -> Result<(Extension, &Target), BrokerError> {
        let extension = grant
            .pending_extension()
            .cloned()
            .ok_or(BrokerError::TransitionNotAllowed {
                grant_id: grant.id,
                refused: NotAllowed {
                    transition: Transition::RecordExtensionApproval,
                    state: grant.state,
                },
            })?;
        let target = self.target_for_decider(grant, &decider.person)?;
        self.check_eligible(
            grant,
            target,
            decider,
            self.clock.now(),
            Asking::Extension(extension.additional_secs),
        )?;
        Ok((extension, target))
    }

    /// Records `approver`'s approval of the grant's waiting extension; the one that meets the
    /// extension's requirement moves the grant's end. `None` when another change of the
    /// extensions landed first (the caller decides again).
    pub(super) async fn approve_extension(
        &self,
        caller: &Caller,
        grant: Grant,
        decider: &Decider,
        comment: &str,
    ) -> Result<Option<Grant>, BrokerError> {
        let approver = &decider.person;
        let (mut extension, target) = self.waiting_extension_for(&grant, decider)?;
        if extension
            .approvals
            .iter()
            .any(|approval| &approval.approver == approver)
        {
            return Ok(Some(self.as_of_now(grant)));
        }
        if extension.approvals.len() >= MAX_RECORDED_APPROVALS {
            return Err(BrokerError::TooManyApprovals { grant_id: grant.id });
        }
        // The target's maximum may have been lowered since the extension was asked for.
        check_total(&grant, extension.additional_secs, self.max_duration_secs(target)).map_err(|violation| {
            BrokerError::TargetChanged {
                grant_id: grant.id,
                target: target.id.clone(),
                what: violation.description,
            }
        })?;
        self.check_approval_mfa(target, decider)?;
        let now = self.clock.now();
        extension.approvals.push(Approval {
            approver: approver.clone(),
            groups: decider.groups.clone(),
            at: now,
            comment: comment.to_owned(),
            caller: caller.id.to_string(),
            verified: decider.attribution.verified.clone(),
        });
        let event = |person, kind| GrantEvent {
            at: now,
            caller: caller.id.to_string(),
            person,
            kind,
        };
        let mut events = vec![event(
            Some(decider.attribution.clone()),
            EventKind::ApprovalRecorded {
                approver: approver.to_string(),
                groups: decider.groups.iter().cloned().collect(),
                comment: comment.to_owned(),
                extension: Some(extension.number),
            },
        )];
        let met = extension.decision.approvals_required.is_met(&extension.approvals);
        let (transition, new_window) = if met {
            let end = grant.end + extension.additional();
            extension.state = ExtensionState::Approved;
            extension.new_end = Some(end);
            events.push(event(
                None,
                EventKind::Extended {
                    extension: extension.number,
                    end,
                },
            ));
            (Transition::Extend, Some((end, policy_until(&grant, end)?)))
        } else {
            (Transition::RecordExtensionApproval, None)
        };
        let number = extension.number;
        let mut extensions = grant.extensions.clone();
        if let Some(last) = extensions.last_mut() {
            *last = extension;
        }
        let id = grant.id;
        let written = self
            .write_extensions(
                grant,
                ExtensionWrite {
                    transition,
                    extensions,
                    events,
                    new_window,
                },
            )
            .await?;
        if written.is_some() {
            tracing::info!(grant_id = %id, %approver, extension = number, approved = met, "extension approval recorded");
        }
        Ok(written)
    }

    /// An eligible approver refuses the grant's waiting extension; the grant stays approved,
    /// its end where it was.
    pub(super) async fn deny_extension(
        &self,
        caller: &Caller,
        mut grant: Grant,
        decider: &Decider,
        reason: String,
    ) -> Result<Grant, BrokerError> {
        let approver = &decider.person;
        let id = grant.id;
        for _ in 0..APPROVAL_ATTEMPTS {
            // A requester may refuse their own extension, as they may their own request.
            let mut extension = if grant.requester == approver.as_str() {
                grant
                    .pending_extension()
                    .cloned()
                    .ok_or(BrokerError::TransitionNotAllowed {
                        grant_id: id,
                        refused: NotAllowed {
                            transition: Transition::DenyExtension,
                            state: grant.state,
                        },
                    })?
            } else {
                self.waiting_extension_for(&grant, decider)?.0
            };
            extension.state = ExtensionState::Denied;
            extension.denied_by = Some((approver.clone(), reason.clone()));
            let events = vec![GrantEvent {
                at: self.clock.now(),
                caller: caller.id.to_string(),
                person: Some(decider.attribution.clone()),
                kind: EventKind::ExtensionDenied {
                    extension: extension.number,
                    approver: Some(approver.to_string()),
                    reason: reason.clone(),
                },
            }];
            let number = extension.number;
            let mut extensions = grant.extensions.clone();
            if let Some(last) = extensions.last_mut() {
                *last = extension;
            }
            let write = ExtensionWrite {
                transition: Transition::DenyExtension,
                extensions,
                events,
                new_window: None,
            };
            if let Some(denied) = self.write_extensions(grant, write).await? {
                tracing::info!(grant_id = %id, %approver, extension = number, "extension denied");
                return Ok(denied);
            }
            grant = self.store.get(id).await?.ok_or(BrokerError::GrantNotFound(id))?;
            if !self.extension_waits(&grant) {
                return Err(BrokerError::TransitionNotAllowed {
                    grant_id: id,
                    refused: NotAllowed {
                        transition: Transition::DenyExtension,
                        state: grant.state_at(self.clock.now()),
                    },
                });
            }
        }
        Err(BrokerError::Contended { grant_id: id })
    }

    /// Writes a change of the grant's extensions, on the condition that they are still as read
    /// and the grant still approved. `None` when its extensions changed meanwhile.
    async fn write_extensions(&self, mut grant: Grant, write: ExtensionWrite) -> Result<Option<Grant>, BrokerError> {
        let id = grant.id;
        let change = Change::Extension {
            transition: write.transition,
            extensions: ExtensionsChange {
                before: &grant.extensions,
                after: &write.extensions,
            },
            window: write.new_window.as_ref().map(|(end, policy)| Window {
                start: grant.start,
                end: *end,
                session_policy: policy,
            }),
            events: &write.events,
        };
        if self.apply(&grant, change).await? == Applied::LostRace {
            return Ok(None);
        }
        grant.extensions = write.extensions;
        if let Some((end, policy)) = write.new_window {
            (grant.end, grant.session_policy) = (end, policy);
            // Best effort, as for an approval: a deadline left at the old end is found not yet
            // due by the sweep, and moved then.
            if let Err(error) = self.store.schedule_deadline(id, end).await {
                tracing::warn!(grant_id = %id, %error, "could not move the grant's deadline");
            }
        }
        Ok(Some(self.as_of_now(grant)))
    }
}
