//! The expiry sweep: grants whose window or approval deadline has passed are recorded EXPIRED.

use super::*;

impl<P: Ports> Broker<P> {
    /// Records the expiry of grants whose deadline has passed: a pending request that timed out,
    /// an approved window that ended. Any replica may run it at any time: each expiry is one
    /// compare-and-set with its `expired` event, so it is recorded exactly once. Returns how many
    /// this call recorded.
    pub async fn expire_due(&self) -> Result<usize, BrokerError> {
        let now = self.clock.now();
        let mut recorded = 0;
        for id in self.store.due(now, EXPIRY_BATCH).await? {
            let Some(grant) = self.store.get(id).await? else {
                self.store.forget_deadline(id).await?;
                continue;
            };
            match grant.deadline() {
                // Final already (denied, cancelled, ...): nothing left to expire.
                None => {}
                // Moved later (an approval whose reschedule was lost): put it where it belongs.
                Some(deadline) if deadline > now => {
                    self.store.schedule_deadline(id, deadline).await?;
                    continue;
                }
                Some(_) => {
                    let transition = Transition::Expire;
                    let event = GrantEvent {
                        at: now,
                        caller: BROKER_CALLER.to_owned(),
                        person: None,
                        kind: EventKind::Expired { was: grant.state },
                    };
                    match self
                        .apply(
                            &grant,
                            Change::Transition {
                                transition,
                                event: &event,
                            },
                        )
                        .await
                    {
                        Ok(_) => {
                            tracing::info!(grant_id = %id, was = grant.state.as_str(), "grant expired");
                            recorded += 1;
                        }
                        // Ended otherwise meanwhile (revoked, cancelled), or gone: nothing to expire.
                        Err(BrokerError::TransitionNotAllowed { .. } | BrokerError::GrantNotFound(_)) => {}
                        Err(error) => return Err(error),
                    }
                }
            }
            self.store.forget_deadline(id).await?;
        }
        Ok(recorded)
    }
}
