//! Reading grants: one grant as of now (by id, with its whole trail, or by an access key), the
//! caller's searches, an approver's queue and the break-glass grants to review, all under one
//! visibility rule.

use super::*;

impl<P: Ports> Broker<P> {
    /// A grant as stored, if `caller` may see it ([`access::standing`]): its own; any, for an
    /// auditor or admin caller; one its approvers decide, for a caller relaying the grant's
    /// target. One it may not see is not found, exactly as an id that does not exist, so ids
    /// cannot be probed.
    pub(super) async fn visible_grant(&self, caller: &Caller, id: GrantId) -> Result<Grant, BrokerError> {
        let grant = self.store.get(id).await?.ok_or(BrokerError::GrantNotFound(id))?;
        permit_on(caller, GrantAct::Read, &grant)?;
        Ok(grant)
    }

    /// One of the caller's own grants, for what only the caller that requested it may do (`rule`
    /// says what): a grant it sees but does not own is PERMISSION_DENIED, one it does not see
    /// NOT_FOUND.
    pub(super) async fn own_grant(
        &self,
        caller: &Caller,
        id: GrantId,
        rule: &'static str,
    ) -> Result<Grant, BrokerError> {
        let grant = self.store.get(id).await?.ok_or(BrokerError::GrantNotFound(id))?;
        match access::check_grant(caller, GrantAct::ActAsOwner, &grant) {
            Ok(()) => {
                Self::same_requester(caller, &grant)?;
                Ok(grant)
            }
            // The use case says what only the owner may do.
            Err(Refusal::NotOwner { .. }) => Err(BrokerError::NotGrantOwner {
                grant_id: id,
                owner: grant.caller.to_string(),
                rule,
            }),
            Err(refused) => Err(refusal(caller, refused, Some(&grant))),
        }
    }

    /// A call that carries a verified token acts on its own caller's grant only as the person or
    /// job that requested it, when a token proved who that was: one job (or person) of a caller
    /// does not issue, extend or cancel another's grant.
    pub(super) fn same_requester(caller: &Caller, grant: &Grant) -> Result<(), BrokerError> {
        let (Some(token), Some(recorded)) = (&caller.call_token, &grant.requester_verified) else {
            return Ok(());
        };
        if token.verified.issuer == recorded.issuer && token.subject.as_str() == grant.requester {
            return Ok(());
        }
        Err(BrokerError::NotProven(NotProven::Mismatch {
            named: grant.requester.clone(),
            subject: token.subject.to_string(),
        }))
    }

    /// The grant as a caller sees it now: its state as of now (an ended window reads EXPIRED
    /// before the sweep records it) and the role-wide cutoff that denies its earlier sessions.
    pub(super) fn as_of_now(&self, mut grant: Grant) -> Grant {
        grant.state = grant.state_at(self.clock.now());
        self.with_role_cutoff(&mut grant);
        grant
    }

    /// One of the caller's grants (any grant, for an admin caller), with its state as of now.
    pub async fn get_grant(&self, caller: &Caller, id: GrantId) -> Result<Grant, BrokerError> {
        // A read of one grant by id is not recorded as an audit query: its id came from a search
        // or the log, which are (and `revoke --wait` polls it).
        let grant = self.visible_grant(caller, id).await?;
        Ok(self.as_of_now(grant))
    }

    /// A grant as of now and its whole trail, oldest first, from its own record: the caller's
    /// own, or any for an auditor or admin caller. Not recorded as an audit query, as GetGrant.
    pub async fn grant_history(&self, caller: &Caller, id: GrantId) -> Result<(Grant, Vec<GrantEvent>), BrokerError> {
        let grant = self.visible_grant(caller, id).await?;
        let events = self.store.events_from(id, 0).await?;
        Ok((self.as_of_now(grant), events))
    }

    /// From a CloudTrail event back to the grant and the issuance an access key id belongs to:
    /// any grant for an auditor or admin caller, otherwise only the caller's own (another's is
    /// not found, as if it did not exist).
    pub async fn find_grant_by_access_key(
        &self,
        caller: &Caller,
        access_key_id: &str,
    ) -> Result<(Grant, Option<Issuance>), BrokerError> {
        let not_found = || BrokerError::AccessKeyNotFound {
            access_key_id: access_key_id.to_owned(),
        };
        let asked = serde_json::json!({ "access_key_id": access_key_id }).to_string();
        let lookup = async { Ok(self.store.grant_for_access_key(access_key_id).await?) };
        let id = self
            .audited(caller, "FindGrantByAccessKey", asked, lookup)
            .await?
            .ok_or_else(not_found)?;
        let grant = self
            .store
            .get(id)
            .await?
            .filter(|grant| access::check_grant(caller, GrantAct::Read, grant).is_ok())
            .ok_or_else(not_found)?;
        let issuance = match grant
            .issuances
            .iter()
            .find(|issuance| issuance.access_key_id == access_key_id)
        {
            Some(recent) => Some(recent.clone()),
            None => self.store.issuance_with_key(id, access_key_id).await?,
        };
        // The key's entry is not sealed, the grant is: a grant that never issued the key is not
        // the key's grant, whatever the entry says.
        let Some(issuance) = issuance else {
            tracing::warn!(grant_id = %id, access_key_id, "an access key entry names a grant that never issued the key");
            return Err(not_found());
        };
        Ok((self.as_of_now(grant), Some(issuance)))
    }

    /// A page of the grants `filter` matches, newest first, and the index position to continue
    /// before: the caller's own, or any caller's for an auditor or admin caller. Walks the most
    /// selective index the filter names and checks the rest on each grant, reading a bounded
    /// number of index pages per call, so a page may hold fewer than `page_size` and still have a
    /// next token. Tokens stay correct while grants are added (new grants land after every token).
    pub async fn search_grants(
        &self,
        caller: &Caller,
        mut filter: GrantFilter,
        before: Option<IndexPosition>,
        page_size: usize,
    ) -> Result<(Vec<Grant>, Option<IndexPosition>), BrokerError> {
        permit(caller, Rpc::ListGrants)?;
        if filter.caller.as_ref() != Some(&caller.id) {
            match permit(caller, Rpc::ListEveryonesGrants) {
                Ok(()) => {}
                // Without one named, a requester caller's search is of its own grants.
                Err(_) if filter.caller.is_none() => filter.caller = Some(caller.id.clone()),
                Err(refused) => return Err(refused),
            }
        }
        let page_size = page_size.clamp(1, MAX_PAGE_SIZE);
        let index = if let Some(requester) = &filter.requester {
            GrantIndex::Requester(requester.clone())
        } else if let Some(grantee) = &filter.grantee {
            GrantIndex::Grantee(grantee.clone())
        } else if let Some(caller) = &filter.caller {
            GrantIndex::Caller(caller.clone())
        } else if filter.live_only() {
            // Far fewer than any target's or account's history.
            GrantIndex::Live
        } else if let Some(target) = &filter.target {
            GrantIndex::Target(target.clone())
        } else if let Some(account) = &filter.account_id {
            GrantIndex::Account(account.clone())
        } else {
            GrantIndex::All
        };
        // Index positions follow creation times, never earlier and at most INDEX_SKEW later: the
        // search starts that much after the range's end, and `matches` decides on the creation
        // time itself.
        let until = filter
            .created_to
            .map(|to| IndexPosition::at(to + INDEX_SKEW + time::Duration::seconds(1)));
        let cursor = match (&before, until) {
            (Some(before), Some(until)) => Some(before.clone().min(until)),
            (before, until) => before.clone().or(until),
        };
        if before.is_none() {
            // The first page records the query; continuations page it.
            let asked = filter.describe();
            let search = self.search_from(&filter, index, cursor, page_size);
            return self.audited(caller, "ListGrants", asked, search).await;
        }
        self.search_from(&filter, index, cursor, page_size).await
    }

    /// Walks `index` from `cursor` for up to a page of grants `filter` matches.
    pub(super) async fn search_from(
        &self,
        filter: &GrantFilter,
        index: GrantIndex,
        mut cursor: Option<IndexPosition>,
        page_size: usize,
    ) -> Result<(Vec<Grant>, Option<IndexPosition>), BrokerError> {
        let now = self.clock.now();
        let mut found = Vec::new();
        for _ in 0..SEARCH_SCANS {
            let page = self
                .store
                .list_index(&index, cursor.as_ref(), filter.created_from, page_size)
                .await?;
            for (position, grant) in page.grants {
                cursor = Some(position);
                if filter.matches(&grant, now) {
                    found.push(self.as_of_now(grant));
                    if found.len() == page_size {
                        return Ok((found, cursor));
                    }
                }
            }
            match page.next {
                None => return Ok((found, None)),
                Some(next) => cursor = Some(next),
            }
        }
        Ok((found, cursor))
    }

    /// A page of the grants waiting for `approver`: pending (any caller's), not requested by
    /// them, not yet approved by them, and which the rules let them decide on; newest first,
    /// with the id to continue before. Scans a bounded number of queued grants per call, so a
    /// page may hold fewer than `page_size` and still have a next token.
    pub async fn approval_queue(
        &self,
        caller: &Caller,
        approver: impl Into<Claimed>,
        before: Option<GrantId>,
        page_size: usize,
    ) -> Result<(Vec<Grant>, Option<GrantId>), BrokerError> {
        permit(caller, Rpc::ListApprovalQueue)?;
        let page_size = page_size.clamp(1, MAX_PAGE_SIZE);
        let decider = self.reader(caller, &approver.into(), "approver")?;
        let approver = &decider.person;
        let now = self.clock.now();
        let decidable = |grant: &Grant| {
            // What waits: the request, or an approved grant's extension.
            let (approvals, asking) = match (grant.state_at(now), grant.pending_extension()) {
                (GrantState::PendingApproval, _) => (&grant.approvals, Asking::Request),
                (GrantState::Approved, Some(extension)) => {
                    (&extension.approvals, Asking::Extension(extension.additional_secs))
                }
                _ => return false,
            };
            caller.powers.relay.covers(&grant.target)
                && grant.requester != approver.as_str()
                && !approvals.iter().any(|approval| &approval.approver == approver)
                && self
                    .targets
                    .get(&grant.target)
                    .is_some_and(|target| self.check_eligible(grant, target, &decider, now, asking).is_ok())
        };
        let mut waiting = Vec::new();
        // Where the scan is: the next call continues strictly before it.
        let mut cursor = before;
        for _ in 0..QUEUE_SCANS {
            let (grants, more) = self.store.list_queue(Queue::Pending, cursor, page_size).await?;
            for grant in grants {
                cursor = Some(grant.id);
                if decidable(&grant) {
                    waiting.push(self.as_of_now(grant));
                    if waiting.len() == page_size {
                        return Ok((waiting, cursor));
                    }
                }
            }
            match more {
                None => return Ok((waiting, None)),
                Some(next) => cursor = Some(next),
            }
        }
        Ok((waiting, cursor))
    }

    /// Break-glass grants of every caller not yet reviewed, newest first (for callers that relay
    /// approvers).
    pub async fn unreviewed_break_glass(
        &self,
        caller: &Caller,
        before: Option<GrantId>,
        page_size: usize,
    ) -> Result<(Vec<Grant>, Option<GrantId>), BrokerError> {
        permit(caller, Rpc::ListUnreviewedBreakGlass)?;
        let (grants, next) = self
            .store
            .list_queue(Queue::BreakGlassUnreviewed, before, page_size.clamp(1, MAX_PAGE_SIZE))
            .await?;
        let relayed = grants
            .into_iter()
            .filter(|grant| caller.powers.relay.covers(&grant.target))
            .map(|grant| self.as_of_now(grant))
            .collect();
        Ok((relayed, next))
    }
}
