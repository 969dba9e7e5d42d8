//! The `grantbroker.v1.GrantBroker` service: take the authenticated caller, convert, call the
//! broker, convert back. No decisions are made here. Authentication happened before the message
//! was decoded ([`super::auth::RequireAuthentication`]).

use std::{pin::Pin, sync::Arc};

use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt as _, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use super::{auth::called, inbound, outbound, proto};
use crate::{
    domain::{AccessRequest, approval::Person, identity::Claimed},
    ports::Ports,
};

pub struct GrantBrokerService<P: Ports> {
    /// Each call runs on the broker its authentication found in use ([`called`]).
    ports: std::marker::PhantomData<fn() -> P>,
    /// Turns true when the server shuts down: every stream then ends.
    draining: watch::Receiver<bool>,
}

impl<P: Ports> GrantBrokerService<P> {
    pub fn new(draining: watch::Receiver<bool>) -> Self {
        Self {
            ports: std::marker::PhantomData,
            draining,
        }
    }
}

/// What a stream's client is told when the broker shuts down under it.
const SHUTTING_DOWN: &str =
    "this grant-broker is shutting down: reconnect (to any replica) and resume after the last cursor you received";

/// `stream`, ended with UNAVAILABLE as soon as the server starts shutting down (a stream that
/// never ends would otherwise hold the shutdown until it is killed).
fn ending_on_shutdown<T: Send + 'static>(
    stream: impl Stream<Item = Result<T, Status>> + Send + 'static,
    draining: watch::Receiver<bool>,
) -> Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>> {
    enum Next<T> {
        Item(Option<Result<T, Status>>),
        ShuttingDown,
    }
    let state = Some((Box::pin(stream), draining));
    Box::pin(futures_util::stream::unfold(state, |state| async move {
        let (mut stream, mut draining) = state?;
        let next = tokio::select! {
            biased;
            // An error means the server is gone: the same.
            _ = draining.wait_for(|draining| *draining) => Next::ShuttingDown,
            item = stream.next() => Next::Item(item),
        };
        match next {
            Next::ShuttingDown => Some((Err(Status::unavailable(SHUTTING_DOWN)), None)),
            Next::Item(item) => item.map(|item| (item, Some((stream, draining)))),
        }
    }))
}

/// The person a message names (if any), with the verified identity token the call carried.
fn claimed(named: Option<Person>, token: Option<Arc<crate::domain::identity::VerifiedIdentity>>) -> Claimed {
    Claimed { named, token }
}

#[tonic::async_trait]
impl<P: Ports> proto::grant_broker_server::GrantBroker for GrantBrokerService<P> {
    async fn list_targets(
        &self,
        request: Request<proto::ListTargetsRequest>,
    ) -> Result<Response<proto::ListTargetsResponse>, Status> {
        let (caller, broker) = called::<P, _>(&request)?;
        let proto::ListTargetsRequest {} = request.into_inner();
        let targets = broker
            .list_targets(&caller)
            .into_iter()
            .map(|target| outbound::target(target, broker.max_duration_secs(target)))
            .collect();
        let limits = caller.limits;
        Ok(Response::new(proto::ListTargetsResponse {
            targets,
            limits: Some(proto::Limits {
                requests_per_minute: limits.requests_per_minute,
                requests_per_person_per_minute: limits.requests_per_person_per_minute,
                live_grants_per_grantee: limits.live_grants_per_grantee,
                pending_grants: limits.pending_grants,
            }),
        }))
    }

    async fn request_access(
        &self,
        request: Request<proto::RequestAccessRequest>,
    ) -> Result<Response<proto::RequestAccessResponse>, Status> {
        let (caller, broker) = called::<P, _>(&request)?;
        let access_request = AccessRequest::try_from(request.into_inner())?;
        let outcome = broker.request_access(&caller, access_request).await?;
        let credentials = outcome
            .credentials
            .map(|credentials| outbound::credentials(credentials, &outcome.grant.region));
        Ok(Response::new(proto::RequestAccessResponse {
            grant: Some(outbound::grant(outcome.grant)),
            credentials,
        }))
    }

    type WatchGrantStream = Pin<Box<dyn Stream<Item = Result<proto::GrantChange, Status>> + Send>>;

    async fn watch_grant(
        &self,
        request: Request<proto::WatchGrantRequest>,
    ) -> Result<Response<Self::WatchGrantStream>, Status> {
        let (caller, broker) = called::<P, _>(&request)?;
        let inbound::WatchCommand { id, after } = request.into_inner().try_into()?;
        let changes = broker.watch_grant(&caller, id, after).await?;
        let stream =
            ReceiverStream::new(changes).map(|change| change.map(outbound::grant_change).map_err(Status::from));
        Ok(Response::new(ending_on_shutdown(stream, self.draining.clone())))
    }

    async fn explain_request(
        &self,
        request: Request<proto::RequestAccessRequest>,
    ) -> Result<Response<proto::ExplainResponse>, Status> {
        let (caller, broker) = called::<P, _>(&request)?;
        let access_request = AccessRequest::try_from(request.into_inner())?;
        let explanation = broker.explain(&caller, &access_request)?;
        Ok(Response::new(outbound::explanation(&explanation)))
    }

    async fn get_grant(&self, request: Request<proto::GetGrantRequest>) -> Result<Response<proto::Grant>, Status> {
        let (caller, broker) = called::<P, _>(&request)?;
        let inbound::GrantRef { id } = request.into_inner().try_into()?;
        let grant = broker.get_grant(&caller, id).await?;
        Ok(Response::new(outbound::grant(grant)))
    }

    async fn get_grant_history(
        &self,
        request: Request<proto::GetGrantHistoryRequest>,
    ) -> Result<Response<proto::GetGrantHistoryResponse>, Status> {
        let (caller, broker) = called::<P, _>(&request)?;
        let inbound::GrantRef { id } = request.into_inner().try_into()?;
        let (grant, events) = broker.grant_history(&caller, id).await?;
        Ok(Response::new(outbound::history(grant, &events)))
    }

    async fn issue_credentials(
        &self,
        request: Request<proto::IssueCredentialsRequest>,
    ) -> Result<Response<proto::IssueCredentialsResponse>, Status> {
        let (caller, broker) = called::<P, _>(&request)?;
        let inbound::IssueCommand { id, mfa } = request.into_inner().try_into()?;
        let outcome = broker.issue_credentials(&caller, id, mfa).await?;
        let credentials = outcome
            .credentials
            .map(|credentials| outbound::credentials(credentials, &outcome.grant.region));
        Ok(Response::new(proto::IssueCredentialsResponse {
            grant: Some(outbound::grant(outcome.grant)),
            credentials,
        }))
    }

    async fn cancel_grant(
        &self,
        request: Request<proto::CancelGrantRequest>,
    ) -> Result<Response<proto::Grant>, Status> {
        let (caller, broker) = called::<P, _>(&request)?;
        let inbound::CancelCommand { id, reason } = request.into_inner().try_into()?;
        let grant = broker.cancel_grant(&caller, id, reason).await?;
        Ok(Response::new(outbound::grant(grant)))
    }

    async fn extend_grant(
        &self,
        request: Request<proto::ExtendGrantRequest>,
    ) -> Result<Response<proto::Grant>, Status> {
        let (caller, broker) = called::<P, _>(&request)?;
        let inbound::ExtendCommand { id, extension } = request.into_inner().try_into()?;
        let grant = broker.extend_grant(&caller, id, extension).await?;
        Ok(Response::new(outbound::grant(grant)))
    }

    async fn list_audit_events(
        &self,
        request: Request<proto::ListAuditEventsRequest>,
    ) -> Result<Response<proto::ListAuditEventsResponse>, Status> {
        let (caller, broker) = called::<P, _>(&request)?;
        let listing = inbound::list_audit(request.into_inner())?;
        let (entries, next) = broker
            .list_audit_events(
                &caller,
                &listing.filter,
                listing.cursor,
                listing.newest_first,
                listing.page_size,
            )
            .await?;
        Ok(Response::new(proto::ListAuditEventsResponse {
            events: entries.iter().map(outbound::audit_event).collect(),
            next_page_token: next.map(|cursor| cursor.to_string()).unwrap_or_default(),
        }))
    }

    type WatchAuditEventsStream = Pin<Box<dyn Stream<Item = Result<proto::AuditEvent, Status>> + Send>>;

    async fn watch_audit_events(
        &self,
        request: Request<proto::WatchAuditEventsRequest>,
    ) -> Result<Response<Self::WatchAuditEventsStream>, Status> {
        let (caller, broker) = called::<P, _>(&request)?;
        let after = inbound::watch_audit(request.into_inner())?;
        // The caller and the cursor are checked here, so a refusal is the call's own error; the
        // stream then starts at once, before any event arrives.
        let mut after = broker.start_following(&caller, after).await?;
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            while !sender.is_closed() {
                let (batch, read_to) = match broker.follow_audit_events(&after).await {
                    Ok(read) => read,
                    Err(error) => {
                        let _ = sender.send(Err(Status::from(error))).await;
                        return;
                    }
                };
                for entry in &batch {
                    if sender.send(Ok(outbound::audit_event(entry))).await.is_err() {
                        return; // the client left
                    }
                }
                after = read_to;
            }
        });
        Ok(Response::new(ending_on_shutdown(
            ReceiverStream::new(receiver),
            self.draining.clone(),
        )))
    }

    async fn find_grant_by_access_key(
        &self,
        request: Request<proto::FindGrantByAccessKeyRequest>,
    ) -> Result<Response<proto::FindGrantByAccessKeyResponse>, Status> {
        let (caller, broker) = called::<P, _>(&request)?;
        let access_key_id = inbound::access_key_id(request.into_inner())?;
        let (grant, issuance) = broker.find_grant_by_access_key(&caller, &access_key_id).await?;
        Ok(Response::new(outbound::found_by_access_key(grant, issuance)))
    }

    async fn revoke_grant(
        &self,
        request: Request<proto::RevokeGrantRequest>,
    ) -> Result<Response<proto::Grant>, Status> {
        let (caller, broker) = called::<P, _>(&request)?;
        let token = caller.call_token.clone();
        let inbound::RevokeCommand { id, reason, revoker } = request.into_inner().try_into()?;
        let grant = broker
            .revoke_grant(&caller, id, claimed(revoker, token), reason)
            .await?;
        Ok(Response::new(outbound::grant(grant)))
    }

    async fn revoke_grantee(
        &self,
        request: Request<proto::RevokeGranteeRequest>,
    ) -> Result<Response<proto::RevokeGranteeResponse>, Status> {
        let (caller, broker) = called::<P, _>(&request)?;
        let token = caller.call_token.clone();
        let inbound::RevokeGranteeCommand {
            grantee,
            reason,
            revoker,
        } = request.into_inner().try_into()?;
        let outcome = broker
            .revoke_grantee(&caller, &grantee, claimed(revoker, token), reason)
            .await?;
        Ok(Response::new(outbound::grantee_revocation(outcome)))
    }

    async fn revoke_target_sessions(
        &self,
        request: Request<proto::RevokeTargetSessionsRequest>,
    ) -> Result<Response<proto::RevokeTargetSessionsResponse>, Status> {
        let (caller, broker) = called::<P, _>(&request)?;
        let token = caller.call_token.clone();
        let inbound::RevokeTargetSessionsCommand {
            target,
            reason,
            revoker,
        } = request.into_inner().try_into()?;
        let cut = broker
            .revoke_target_sessions(&caller, &target, claimed(revoker, token), reason)
            .await?;
        Ok(Response::new(outbound::target_cutoff(&cut)))
    }

    async fn approve_grant(
        &self,
        request: Request<proto::ApproveGrantRequest>,
    ) -> Result<Response<proto::Grant>, Status> {
        let (caller, broker) = called::<P, _>(&request)?;
        let token = caller.call_token.clone();
        let inbound::ApproveCommand { id, approver, comment } = request.into_inner().try_into()?;
        let grant = broker
            .approve_grant(&caller, id, claimed(approver, token), comment)
            .await?;
        Ok(Response::new(outbound::grant(grant)))
    }

    async fn review_grant(
        &self,
        request: Request<proto::ReviewGrantRequest>,
    ) -> Result<Response<proto::Grant>, Status> {
        let (caller, broker) = called::<P, _>(&request)?;
        let token = caller.call_token.clone();
        let inbound::ReviewCommand { id, reviewer, comment } = request.into_inner().try_into()?;
        let grant = broker
            .review_grant(&caller, id, claimed(reviewer, token), comment)
            .await?;
        Ok(Response::new(outbound::grant(grant)))
    }

    async fn deny_grant(&self, request: Request<proto::DenyGrantRequest>) -> Result<Response<proto::Grant>, Status> {
        let (caller, broker) = called::<P, _>(&request)?;
        let token = caller.call_token.clone();
        let inbound::DenyCommand { id, approver, reason } = request.into_inner().try_into()?;
        let grant = broker.deny_grant(&caller, id, claimed(approver, token), reason).await?;
        Ok(Response::new(outbound::grant(grant)))
    }

    async fn list_grants(
        &self,
        request: Request<proto::ListGrantsRequest>,
    ) -> Result<Response<proto::ListGrantsResponse>, Status> {
        let (caller, broker) = called::<P, _>(&request)?;
        let token = caller.call_token.clone();
        let listing = inbound::list_grants(request.into_inner())?;
        let (grants, next) = match (&listing.waiting_for, listing.break_glass_unreviewed) {
            (Some(approver), _) => {
                let (grants, next) = broker
                    .approval_queue(
                        &caller,
                        claimed(Some(approver.clone()), token),
                        listing.before,
                        listing.page_size,
                    )
                    .await?;
                (grants, next.map(|id| id.to_string()))
            }
            (None, true) => {
                let (grants, next) = broker
                    .unreviewed_break_glass(&caller, listing.before, listing.page_size)
                    .await?;
                (grants, next.map(|id| id.to_string()))
            }
            (None, false) => {
                let (grants, next) = broker
                    .search_grants(&caller, listing.filter, listing.search_before, listing.page_size)
                    .await?;
                (grants, next.map(|position| position.to_string()))
            }
        };
        Ok(Response::new(proto::ListGrantsResponse {
            grants: grants.into_iter().map(outbound::grant).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }
}
