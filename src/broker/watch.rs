//! Watching one grant: its current state, then every change, until a final state or the watcher
//! leaves. Changes are read from the grant's audit trail in Redis and announced through the
//! store's change feed, so a change made through any broker replica reaches every watcher; a
//! cursor (how many events the watcher has seen) lets a watcher that reconnects resume without
//! missing or repeating one.

use std::{sync::Arc, time::Duration as StdDuration};

use tokio::sync::mpsc;

use super::{Broker, BrokerError};
use crate::{
    domain::{Caller, Grant, GrantEvent, GrantId, GrantState},
    ports::{ChangeFeed, Clock, GrantRecords, Ports},
};

/// One message of a watch.
#[derive(Debug, Clone)]
pub struct GrantChange {
    /// The grant as it is after this change (its state as of now).
    pub grant: Grant,
    /// The event; `None` for the first message (the grant as it is) and for a grant whose
    /// window ended without any replica recording its `expired` event in time.
    pub event: Option<GrantEvent>,
    /// Events given so far, this one included: pass it back to resume after it. The first
    /// message of a resumed watch carries the cursor it resumed from.
    pub cursor: u64,
}

/// Even without a notice, the grant is read again this often (a lost notice costs this much).
const RECHECK: StdDuration = StdDuration::from_secs(15);
/// How long after a grant's deadline a watch waits for a sweep to record its `expired` event
/// (every replica sweeps every 5 s) before it reports the expiry itself.
const EXPIRY_GRACE: time::Duration = time::Duration::seconds(12);
/// Messages a slow watcher may fall behind before the watch waits for it.
const BUFFER: usize = 32;

fn is_final(state: GrantState) -> bool {
    matches!(
        state,
        GrantState::Denied | GrantState::Cancelled | GrantState::Expired | GrantState::Revoked
    )
}

impl<P: Ports> Broker<P> {
    /// Starts watching one of the caller's grants. Errors about the request (unknown grant,
    /// store down) come back at once; the stream then ends after a final state, when the
    /// watcher leaves, or with an error if the store stays unreachable.
    pub async fn watch_grant(
        self: Arc<Self>,
        caller: &Caller,
        id: GrantId,
        after: Option<u64>,
    ) -> Result<mpsc::Receiver<Result<GrantChange, BrokerError>>, BrokerError> {
        // Subscribed before the first read, so nothing between the two is missed.
        let feed = self.store.subscribe(id).await?;
        self.visible_grant(caller, id).await?;
        let (sender, receiver) = mpsc::channel(BUFFER);
        tokio::spawn(async move {
            if let Err(error) = self.watch(id, after, feed, &sender).await {
                let _ = sender.send(Err(error)).await;
            }
        });
        Ok(receiver)
    }

    async fn watch(
        &self,
        id: GrantId,
        after: Option<u64>,
        mut feed: <P::Store as GrantRecords>::Feed,
        sender: &mpsc::Sender<Result<GrantChange, BrokerError>>,
    ) -> Result<(), BrokerError> {
        let send = |change: GrantChange| async move { sender.send(Ok(change)).await.is_ok() };
        // The grant as recorded (its state an event set), and as the watcher is shown it.
        let recorded = |grant: Option<Grant>| grant.ok_or(BrokerError::GrantNotFound(id));
        let shown = |grant: &Grant| self.as_of_now(grant.clone());

        let events = self.store.events_from(id, 0).await?;
        let total = u64::try_from(events.len()).unwrap_or(u64::MAX);
        let mut grant = recorded(self.store.get(id).await?)?;
        // INVARIANT: every message carries a cursor no further than what the watcher has been
        // given, so "reconnect after the last cursor you saw" never skips an event. A resumed
        // watch opens at the cursor it resumed from; the events it missed follow.
        let mut cursor = after.unwrap_or(total).min(total);
        if !send(GrantChange {
            grant: shown(&grant),
            event: None,
            cursor,
        })
        .await
        {
            return Ok(());
        }
        for event in events.into_iter().skip(usize::try_from(cursor).unwrap_or(usize::MAX)) {
            cursor += 1;
            if !send(GrantChange {
                grant: shown(&grant),
                event: Some(event),
                cursor,
            })
            .await
            {
                return Ok(());
            }
        }

        // Ends on a final state some event recorded. A window that ended is recorded as an
        // `expired` event by whichever replica's sweep gets there first; only when none has
        // within EXPIRY_GRACE does the watch say so itself, once, without an event.
        while !is_final(grant.state) {
            let now = self.clock.now();
            let deadline = grant_deadline(&grant);
            if now >= deadline + EXPIRY_GRACE {
                let _ = send(GrantChange {
                    grant: shown(&grant),
                    event: None,
                    cursor,
                })
                .await;
                return Ok(());
            }
            let next = if now < deadline {
                deadline
            } else {
                deadline + EXPIRY_GRACE
            };
            let wait = (next - now).try_into().unwrap_or(StdDuration::ZERO).min(RECHECK);
            tokio::select! {
                alive = feed.changed() => {
                    if !alive {
                        feed = self.store.subscribe(id).await?;
                    }
                }
                () = tokio::time::sleep(wait) => {}
                () = sender.closed() => return Ok(()),
            }
            let new = self.store.events_from(id, cursor).await?;
            grant = recorded(self.store.get(id).await?)?;
            for event in new {
                cursor += 1;
                if !send(GrantChange {
                    grant: shown(&grant),
                    event: Some(event),
                    cursor,
                })
                .await
                {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// When the grant next changes by itself: a pending one expires, an approved window ends.
fn grant_deadline(grant: &Grant) -> time::OffsetDateTime {
    match grant.state {
        GrantState::PendingApproval => grant.pending_until,
        _ => grant.end,
    }
}
