//! The calls the command line makes against a running server (`targets`, `request`, `get`,
//! `list`), each returning what to print: a readable summary, JSON (`--json`), `export AWS_...`
//! lines or the JSON that AWS `credential_process` expects.

use std::fmt::Write as _;

use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tonic::{
    Request, Status,
    metadata::AsciiMetadataValue,
    service::interceptor::InterceptedService,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use super::{ClientError, Exit, json::json_line};
use crate::grpc::proto::{self, grant_broker_client::GrantBrokerClient};

type Client = GrantBrokerClient<InterceptedService<Channel, Credentials>>;

/// Adds `authorization: Bearer <token>` and `x-identity-token: <jwt>` to every call (those
/// there are).
#[derive(Clone)]
pub struct Credentials {
    bearer: Option<AsciiMetadataValue>,
    identity: Option<AsciiMetadataValue>,
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.bearer {
            request.metadata_mut().insert("authorization", header.clone());
        }
        if let Some(token) = &self.identity {
            request
                .metadata_mut()
                .insert(crate::grpc::auth::IDENTITY_TOKEN_HEADER, token.clone());
        }
        Ok(request)
    }
}

/// The files a TLS connection uses: the CA bundle that checks the server (the system's roots are
/// not used), and this caller's certificate and key for mTLS.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca: Option<std::path::PathBuf>,
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path)
        .map_err(|error| ClientError::new(Exit::Usage, format!("cannot read {}: {error}", path.display())))
}

/// `token`: the caller's bearer token; `identity`: the OIDC token of the person or job it acts
/// for.
pub async fn connect(
    address: &str,
    token: Option<&str>,
    identity: Option<&str>,
    tls: &TlsFiles,
) -> Result<Client, ClientError> {
    let header = token
        .map(|token| {
            AsciiMetadataValue::try_from(format!("Bearer {token}"))
                .map_err(|_| ClientError::new(Exit::Usage, "the token must be printable ASCII"))
        })
        .transpose()?;
    let identity = identity
        .map(|token| {
            AsciiMetadataValue::try_from(token.trim())
                .map_err(|_| ClientError::new(Exit::Usage, "the identity token must be printable ASCII"))
        })
        .transpose()?;
    let mut endpoint = Endpoint::from_shared(address.to_owned())
        .map_err(|error| ClientError::new(Exit::Usage, format!("bad server address `{address}`: {error}")))?;
    if address.starts_with("https://") {
        let ca = tls.ca.as_deref().ok_or_else(|| {
            ClientError::new(
                Exit::Usage,
                "an https:// server needs --ca (GRANT_BROKER_CA): the CA bundle that signed its certificate",
            )
        })?;
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint = endpoint
            .tls_config(config)
            .map_err(|error| ClientError::new(Exit::Usage, format!("TLS settings: {error}")))?;
    } else if tls.identity.is_some() || tls.ca.is_some() {
        // Never a token in plaintext to a server the caller meant to reach over TLS.
        return Err(ClientError::new(
            Exit::Usage,
            "--ca, --cert and --key need an https:// server (--server)",
        ));
    }
    let channel = endpoint.connect().await.map_err(|error| {
        ClientError::new(
            Exit::Refused,
            format!("cannot connect to {address}: {}", crate::domain::error_chain(&error)),
        )
    })?;
    Ok(GrantBrokerClient::with_interceptor(
        channel,
        Credentials {
            bearer: header,
            identity,
        },
    ))
}

/// How to print issued credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialFormat {
    Summary,
    Json,
    /// `export AWS_ACCESS_KEY_ID=...` lines for a shell's `eval`.
    Export,
    /// The JSON document AWS `credential_process` reads.
    CredentialProcess,
}

impl CredentialFormat {
    /// From the command line's `--json`, `--export` and `--credential-process`.
    pub fn chosen(json: bool, export: bool, credential_process: bool) -> Self {
        match (json, export, credential_process) {
            (_, true, _) => Self::Export,
            (_, _, true) => Self::CredentialProcess,
            (true, _, _) => Self::Json,
            _ => Self::Summary,
        }
    }
}

fn time_text(timestamp: Option<&prost_types::Timestamp>) -> String {
    timestamp
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t.seconds).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn state_text(state: i32) -> &'static str {
    match proto::GrantState::try_from(state).unwrap_or(proto::GrantState::Unspecified) {
        proto::GrantState::Unspecified => "unspecified",
        proto::GrantState::PendingApproval => "pending_approval",
        proto::GrantState::Approved => "approved",
        proto::GrantState::Denied => "denied",
        proto::GrantState::Expired => "expired",
        proto::GrantState::Cancelled => "cancelled",
        proto::GrantState::Revoked => "revoked",
    }
}

/// How a name was known, as the summaries say it: ` (verified by corp-sso, MFA)`,
/// ` (asserted)`, or nothing when the answer does not say.
fn proof_text(identity: Option<&proto::Identity>) -> String {
    let Some(identity) = identity else {
        return String::new();
    };
    match identity.proof() {
        proto::IdentityProof::Verified => format!(
            " (verified by {}{})",
            identity.issuer,
            if identity.mfa { ", MFA" } else { "" }
        ),
        proto::IdentityProof::Asserted => " (asserted)".to_owned(),
        proto::IdentityProof::Unspecified => String::new(),
    }
}

pub fn grant_summary(grant: &proto::Grant) -> String {
    let mut text = format!(
        "grant {}  {}\n  target    {} ({}, {})\n  requester {}{} for {}\n  window    {} .. {}\n",
        grant.id,
        state_text(grant.state),
        grant.target,
        grant.role_arn,
        grant.region,
        grant.requester,
        proof_text(grant.requester_identity.as_ref()),
        grant.grantee,
        time_text(grant.start_time.as_ref()),
        time_text(grant.end_time.as_ref()),
    );
    for scope in &grant.scopes {
        let _ = writeln!(
            text,
            "  scope     {} on {}",
            scope.actions.join(", "),
            scope.resources.join(", ")
        );
    }
    if let Some(decision) = &grant.decision {
        let _ = writeln!(
            text,
            "  decision  {} [{}]",
            decision.reason,
            decision.policy_ids.join(", ")
        );
    }
    for approval in &grant.approvals {
        let _ = writeln!(
            text,
            "  approval  {}{} ({}) at {}{}",
            approval.approver,
            proof_text(approval.approver_identity.as_ref()),
            approval.groups.join(", "),
            time_text(approval.approve_time.as_ref()),
            if approval.comment.is_empty() {
                String::new()
            } else {
                format!(": {}", approval.comment)
            }
        );
    }
    if grant.break_glass {
        match &grant.review {
            Some(review) => {
                let _ = writeln!(
                    text,
                    "  break-glass, reviewed by {} at {}: {}",
                    review.reviewer,
                    time_text(review.review_time.as_ref()),
                    review.comment
                );
            }
            None => {
                let _ = writeln!(text, "  break-glass, not yet reviewed");
            }
        }
    }
    if grant.state == i32::from(proto::GrantState::PendingApproval) {
        let _ = writeln!(
            text,
            "  waiting   for {} until {}",
            grant.approvals_required,
            time_text(grant.pending_expire_time.as_ref())
        );
    }
    for extension in &grant.extensions {
        let seconds = extension.additional_duration.as_ref().map_or(0, |d| d.seconds);
        let outcome = match proto::ExtensionState::try_from(extension.state) {
            Ok(proto::ExtensionState::Approved) => {
                format!("approved, ends {}", time_text(extension.new_end_time.as_ref()))
            }
            Ok(proto::ExtensionState::Pending) => format!(
                "waiting for {} ({} so far)",
                extension.approvals_required,
                extension.approvals.len()
            ),
            Ok(proto::ExtensionState::Denied) if !extension.denied_by.is_empty() => {
                format!("denied by {}: {}", extension.denied_by, extension.deny_reason)
            }
            _ => format!(
                "denied: {}",
                extension
                    .decision
                    .as_ref()
                    .map(|d| d.reason.as_str())
                    .unwrap_or_default()
            ),
        };
        let _ = writeln!(
            text,
            "  extension {} +{}s: {} ({})",
            extension.number, seconds, outcome, extension.justification
        );
    }
    if let Some(revocation) = &grant.revocation {
        let by = if revocation.revoker.is_empty() {
            revocation.caller.clone()
        } else {
            format!(
                "{}{} via {}",
                revocation.revoker,
                proof_text(revocation.revoker_identity.as_ref()),
                revocation.caller
            )
        };
        let _ = writeln!(
            text,
            "  revoked   by {by} at {}: {}",
            time_text(revocation.revoke_time.as_ref()),
            revocation.reason
        );
        let _ = writeln!(
            text,
            "  enforcement {}{}{}",
            enforcement_text(revocation.enforcement),
            if revocation.enforcement_error.is_empty() {
                String::new()
            } else {
                format!(": {}", revocation.enforcement_error)
            },
            if revocation.cutoff_time.is_some() {
                format!(
                    " (by a role-wide cutoff at {})",
                    time_text(revocation.cutoff_time.as_ref())
                )
            } else {
                String::new()
            }
        );
        for session in &revocation.sessions {
            let _ = writeln!(
                text,
                "  session   {} {} until {}: {}",
                session.session_name,
                session.access_key_id,
                time_text(session.expire_time.as_ref()),
                enforcement_text(session.enforcement)
            );
        }
    } else if grant.sessions_denied_before_time.is_some() {
        let _ = writeln!(
            text,
            "  cut off   sessions issued before {} are denied (a role-wide cutoff); issue again for working credentials",
            time_text(grant.sessions_denied_before_time.as_ref())
        );
    }
    for issuance in &grant.issuances {
        let _ = writeln!(
            text,
            "  issued    {} as {} until {}",
            issuance.access_key_id,
            issuance.session_name,
            time_text(issuance.expire_time.as_ref())
        );
    }
    text
}

fn credentials_text(credentials: &proto::Credentials, format: CredentialFormat) -> Result<String, ClientError> {
    let expiration = time_text(credentials.expire_time.as_ref());
    Ok(match format {
        CredentialFormat::Export => format!(
            "export AWS_ACCESS_KEY_ID={}\nexport AWS_SECRET_ACCESS_KEY={}\nexport AWS_SESSION_TOKEN={}\nexport AWS_REGION={}\n",
            credentials.access_key_id, credentials.secret_access_key, credentials.session_token, credentials.region
        ),
        CredentialFormat::CredentialProcess => json!({
            "Version": 1,
            "AccessKeyId": credentials.access_key_id,
            "SecretAccessKey": credentials.secret_access_key,
            "SessionToken": credentials.session_token,
            "Expiration": expiration,
        })
        .to_string(),
        CredentialFormat::Json => json_line(credentials)?,
        CredentialFormat::Summary => format!(
            "credentials for {} until {} (use --export or --credential-process to print them)\n",
            credentials.assumed_role_arn, expiration
        ),
    })
}

pub async fn targets(client: &mut Client, json: bool) -> Result<String, ClientError> {
    let response = client.list_targets(proto::ListTargetsRequest {}).await?.into_inner();
    if json {
        return json_line(&response);
    }
    let mut text = String::new();
    for target in &response.targets {
        let _ = writeln!(
            text,
            "{}  {} {} {}  max {}s{}",
            target.id,
            target.environment,
            target.role_arn,
            target.region,
            target.max_duration.as_ref().map_or(0, |d| d.seconds),
            if target.mfa_required { "  mfa" } else { "" }
        );
        for scope in &target.ceiling {
            let _ = writeln!(
                text,
                "    {} on {}",
                scope.actions.join(", "),
                scope.resources.join(", ")
            );
        }
    }
    if let Some(limits) = &response.limits {
        let _ = writeln!(
            text,
            "limits: {} requests/min, {} per person/min, {} live grants per grantee, {} pending",
            limits.requests_per_minute,
            limits.requests_per_person_per_minute,
            limits.live_grants_per_grantee,
            limits.pending_grants
        );
    }
    Ok(text)
}

/// Sends a request and prints the outcome. A denied grant exits 3; asking for credentials in a
/// machine format when none were issued (pending approval) exits 4.
pub async fn request(
    client: &mut Client,
    message: proto::RequestAccessRequest,
    format: CredentialFormat,
) -> Result<String, ClientError> {
    let response = client.request_access(message).await?.into_inner();
    let grant = response
        .grant
        .clone()
        .ok_or_else(|| ClientError::new(Exit::Refused, "the server returned no grant"))?;
    if grant.state == i32::from(proto::GrantState::Denied) {
        let reason = grant.decision.as_ref().map(|d| d.reason.clone()).unwrap_or_default();
        return Err(ClientError::new(
            Exit::Denied,
            format!("grant {} denied: {reason}", grant.id),
        ));
    }
    match (format, &response.credentials) {
        (CredentialFormat::Summary, credentials) => {
            let mut text = grant_summary(&grant);
            if let Some(credentials) = credentials {
                text.push_str(&credentials_text(credentials, format)?);
            }
            Ok(text)
        }
        (CredentialFormat::Json, _) => json_line(&response),
        (_, Some(credentials)) => credentials_text(credentials, format),
        (_, None) => Err(ClientError::new(
            Exit::NotIssued,
            format!(
                "grant {} is {}: no credentials issued",
                grant.id,
                state_text(grant.state)
            ),
        )),
    }
}

/// Fresh credentials for an approved grant, printed like `request` prints them.
pub async fn issue(
    client: &mut Client,
    message: proto::IssueCredentialsRequest,
    format: CredentialFormat,
) -> Result<String, ClientError> {
    let response = client.issue_credentials(message).await?.into_inner();
    let grant = response
        .grant
        .as_ref()
        .ok_or_else(|| ClientError::new(Exit::Refused, "the server returned no grant"))?;
    let credentials = response
        .credentials
        .as_ref()
        .ok_or_else(|| ClientError::new(Exit::Refused, "the server returned no credentials"))?;
    match format {
        CredentialFormat::Json => json_line(&response),
        CredentialFormat::Summary => Ok(grant_summary(grant) + &credentials_text(credentials, format)?),
        _ => credentials_text(credentials, format),
    }
}

/// What a request would get, without making it.
pub async fn explain(
    client: &mut Client,
    message: proto::RequestAccessRequest,
    json: bool,
) -> Result<String, ClientError> {
    let explained = client.explain_request(message).await?.into_inner();
    if json {
        return json_line(&explained);
    }
    let decision = explained.decision.unwrap_or_default();
    let outcome = proto::DecisionOutcome::try_from(decision.outcome)
        .map(|o| o.as_str_name())
        .unwrap_or("");
    let duration = explained.session_duration.map_or(0, |d| d.seconds);
    let mut text = format!(
        "decision  {outcome}: {} [{}]\n",
        decision.reason,
        decision.policy_ids.join(", ")
    );
    if decision.outcome == i32::from(proto::DecisionOutcome::RequireApproval) {
        let _ = writeln!(
            text,
            "approvals {} from: {}",
            explained.approvals_required,
            if explained.eligible_approvers.is_empty() {
                "nobody configured".to_owned()
            } else {
                explained.eligible_approvers.join(", ")
            }
        );
    }
    let _ = writeln!(text, "session   {duration}s\npolicy    {}", explained.session_policy);
    Ok(text)
}

/// Prints each change as it comes (flushed, so a pipe sees it at once). With `until_approved`,
/// returns once the grant is approved, and fails with `Exit::Denied` if it ends otherwise.
pub async fn watch(
    client: &mut Client,
    message: proto::WatchGrantRequest,
    until_approved: bool,
    json: bool,
) -> Result<String, ClientError> {
    use std::io::Write as _;
    let id = message.id.clone();
    let mut stream = client.watch_grant(message).await?.into_inner();
    let mut last_state = proto::GrantState::Unspecified;
    while let Some(change) = stream.message().await? {
        let state = change.grant.as_ref().map_or(0, |grant| grant.state);
        last_state = proto::GrantState::try_from(state).unwrap_or(proto::GrantState::Unspecified);
        let line = if json {
            json_line(&change)?
        } else {
            format!(
                "{:>4}  {:<18} {}{}",
                change.cursor,
                if change.event.is_empty() {
                    "(now)"
                } else {
                    change.event.as_str()
                },
                state_text(state),
                if change.event_time.is_some() {
                    format!("  at {}", time_text(change.event_time.as_ref()))
                } else {
                    String::new()
                }
            )
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        if until_approved && last_state == proto::GrantState::Approved {
            return Ok(String::new());
        }
    }
    if until_approved {
        return Err(ClientError::new(
            Exit::Denied,
            format!(
                "grant {id} ended {} without being approved",
                state_text(i32::from(last_state))
            ),
        ));
    }
    Ok(String::new())
}

fn grant_text(grant: &proto::Grant, json: bool) -> Result<String, ClientError> {
    if json {
        json_line(grant)
    } else {
        Ok(grant_summary(grant))
    }
}

pub async fn approve(
    client: &mut Client,
    message: proto::ApproveGrantRequest,
    json: bool,
) -> Result<String, ClientError> {
    grant_text(&client.approve_grant(message).await?.into_inner(), json)
}

pub async fn review(
    client: &mut Client,
    message: proto::ReviewGrantRequest,
    json: bool,
) -> Result<String, ClientError> {
    grant_text(&client.review_grant(message).await?.into_inner(), json)
}

pub async fn deny(client: &mut Client, message: proto::DenyGrantRequest, json: bool) -> Result<String, ClientError> {
    grant_text(&client.deny_grant(message).await?.into_inner(), json)
}

/// Asks for more time; an extension the rules refuse exits 3, like a denied request.
pub async fn extend(
    client: &mut Client,
    message: proto::ExtendGrantRequest,
    json: bool,
) -> Result<String, ClientError> {
    let grant = client.extend_grant(message).await?.into_inner();
    if let Some(extension) = grant.extensions.last()
        && extension.state == i32::from(proto::ExtensionState::Denied)
    {
        let reason = extension
            .decision
            .as_ref()
            .map(|d| d.reason.clone())
            .unwrap_or_default();
        return Err(ClientError::new(
            Exit::Denied,
            format!("extension {} of grant {} denied: {reason}", extension.number, grant.id),
        ));
    }
    grant_text(&grant, json)
}

fn enforcement_text(status: i32) -> &'static str {
    match proto::EnforcementStatus::try_from(status).unwrap_or(proto::EnforcementStatus::Unspecified) {
        proto::EnforcementStatus::Unspecified => "unspecified",
        proto::EnforcementStatus::Pending => "pending",
        proto::EnforcementStatus::Enforced => "enforced",
        proto::EnforcementStatus::NotNeeded => "not_needed",
        proto::EnforcementStatus::Failed => "failed",
        proto::EnforcementStatus::NotAvailable => "not_available",
    }
}

/// Revokes a grant; with `wait`, polls it until its deny is written in AWS (or nothing was
/// needed), exiting 5 if that does not happen in time, or at once when it cannot happen (a
/// record-only target).
/// A revocation the broker cannot enforce in AWS (its target is record-only).
fn not_enforceable(grant: &proto::Grant) -> bool {
    grant.revocation.as_ref().is_some_and(|revocation| {
        proto::EnforcementStatus::try_from(revocation.enforcement) == Ok(proto::EnforcementStatus::NotAvailable)
    })
}

pub async fn revoke(
    client: &mut Client,
    message: proto::RevokeGrantRequest,
    wait: Option<std::time::Duration>,
    json: bool,
) -> Result<String, ClientError> {
    let id = message.id.clone();
    let mut grant = client.revoke_grant(message).await?.into_inner();
    if let Some(wait) = wait {
        let deadline = std::time::Instant::now() + wait;
        let settled = |grant: &proto::Grant| {
            grant.revocation.as_ref().is_some_and(|r| {
                !matches!(
                    proto::EnforcementStatus::try_from(r.enforcement),
                    Ok(proto::EnforcementStatus::Pending | proto::EnforcementStatus::Failed)
                )
            })
        };
        while !settled(&grant) || not_enforceable(&grant) {
            if not_enforceable(&grant) {
                return Err(ClientError::new(
                    Exit::NotEnforced,
                    format!(
                        "grant {id} is revoked, but its target is record-only: its live sessions are not denied in AWS, and they last until they expire"
                    ),
                ));
            }
            if std::time::Instant::now() >= deadline {
                let status = grant.revocation.as_ref().map_or(0, |r| r.enforcement);
                let error = grant
                    .revocation
                    .as_ref()
                    .map(|r| r.enforcement_error.clone())
                    .unwrap_or_default();
                return Err(ClientError::new(
                    Exit::NotEnforced,
                    format!(
                        "grant {id} is revoked, but its deny is not written yet ({}{}); the broker keeps retrying",
                        enforcement_text(status),
                        if error.is_empty() {
                            String::new()
                        } else {
                            format!(": {error}")
                        }
                    ),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            grant = client
                .get_grant(proto::GetGrantRequest { id: id.clone() })
                .await?
                .into_inner();
        }
    }
    grant_text(&grant, json)
}

pub async fn revoke_grantee(
    client: &mut Client,
    message: proto::RevokeGranteeRequest,
    json: bool,
) -> Result<String, ClientError> {
    let response = client.revoke_grantee(message).await?.into_inner();
    if json {
        return json_line(&response);
    }
    let mut text = format!(
        "operation {}: {} live grant(s) of {} examined\n",
        response.operation_id,
        response.outcomes.len(),
        response.examined
    );
    for outcome in &response.outcomes {
        match &outcome.grant {
            Some(grant) => {
                let revocation = grant.revocation.as_ref();
                let _ = writeln!(
                    text,
                    "{}  revoked  {}  enforcement {}{}",
                    outcome.grant_id,
                    grant.target,
                    enforcement_text(revocation.map_or(0, |r| r.enforcement)),
                    revocation
                        .map(|r| r.enforcement_error.as_str())
                        .filter(|e| !e.is_empty())
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                );
            }
            None => {
                let (code, message) = outcome.error.as_ref().map_or(("UNKNOWN", ""), |e| {
                    (
                        crate::grpc::status::code_name(tonic::Code::from(e.code)),
                        e.message.as_str(),
                    )
                });
                let _ = writeln!(text, "{}  not revoked: {code} {message}", outcome.grant_id);
            }
        }
    }
    if response.truncated {
        let _ = writeln!(text, "more live grants remain: run it again");
    }
    for miss in &response.near_misses {
        let _ = writeln!(
            text,
            "warning: {} live grant(s) name grantee {:?}, spelled differently: not revoked",
            miss.live_grants, miss.grantee
        );
    }
    Ok(text)
}

pub async fn revoke_target_sessions(
    client: &mut Client,
    message: proto::RevokeTargetSessionsRequest,
    json: bool,
) -> Result<String, ClientError> {
    let response = client.revoke_target_sessions(message).await?.into_inner();
    if json {
        return json_line(&response);
    }
    Ok(format!(
        "target {} ({}): sessions issued before {} are denied until {}; enforcement {}{}\n",
        response.target,
        response.role_arn,
        time_text(response.cutoff_time.as_ref()),
        time_text(response.cutoff_expire_time.as_ref()),
        enforcement_text(response.enforcement),
        if response.enforcement_error.is_empty() {
            String::new()
        } else {
            format!(" ({})", response.enforcement_error)
        }
    ))
}

fn audit_line(event: &proto::AuditEvent, json: bool) -> Result<String, ClientError> {
    if json {
        json_line(event)
    } else if event.grant_id.is_empty() {
        // A service event (rules loaded, an audit query): what it says, after who.
        let details = serde_json::from_str::<Value>(&event.event_json).unwrap_or(Value::Null);
        let said = match event.event.as_str() {
            "audit_queried" => format!(
                "{} {}",
                details["query"].as_str().unwrap_or(""),
                details["filter"].as_str().unwrap_or("")
            ),
            "rules_loaded" => format!(
                "{} policies from {}, sha256 {}",
                details["policies"],
                details["sources"],
                details["digest"].as_str().unwrap_or("")
            ),
            "target_sessions_revoked" => format!(
                "{} ({}): sessions issued before {} denied: {}",
                details["target"].as_str().unwrap_or(""),
                details["role_arn"].as_str().unwrap_or(""),
                details["cutoff"].as_str().unwrap_or(""),
                details["reason"].as_str().unwrap_or("")
            ),
            "grantee_revoked" => format!(
                "{}: {} revoked, {} failed, {} examined{}: {}",
                details["grantee"].as_str().unwrap_or(""),
                details["revoked"],
                details["failed"],
                details["examined"],
                if details["truncated"] == true {
                    ", more remain"
                } else {
                    ""
                },
                details["reason"].as_str().unwrap_or("")
            ),
            "role_cutoff_set" => format!(
                "{} ({}): deny list full ({} characters, {} free): sessions issued before {} denied",
                details["target"].as_str().unwrap_or(""),
                details["role_arn"].as_str().unwrap_or(""),
                details["needed"],
                details["available"],
                details["cutoff"].as_str().unwrap_or("")
            ),
            "role_deny_drifted" => format!(
                "{} ({}): the deny was {}, written again ({} grants)",
                details["target"].as_str().unwrap_or(""),
                details["role_arn"].as_str().unwrap_or(""),
                details["found"].as_str().unwrap_or(""),
                details["grants"]
            ),
            _ => String::new(),
        };
        Ok(format!(
            "{}  {}  {:<20} {}  {}",
            event.cursor,
            time_text(event.event_time.as_ref()),
            event.event,
            event.actor,
            said
        ))
    } else if event.event == "tampered" {
        // An entry the broker cannot vouch for: what failed, never what it claims.
        let details = serde_json::from_str::<Value>(&event.event_json).unwrap_or(Value::Null);
        Ok(format!(
            "{}  {}  {:<20} {}  {}",
            event.cursor,
            time_text(event.event_time.as_ref()),
            event.event,
            event.grant_id,
            details["reason"].as_str().unwrap_or("")
        ))
    } else {
        Ok(format!(
            "{}  {}  {:<20} {}  {} on {} ({})",
            event.cursor,
            time_text(event.event_time.as_ref()),
            event.event,
            event.grant_id,
            event.actor,
            event.target,
            event.account_id
        ))
    }
}

pub async fn audit_events(
    client: &mut Client,
    message: proto::ListAuditEventsRequest,
    json: bool,
) -> Result<String, ClientError> {
    let response = client.list_audit_events(message).await?.into_inner();
    let mut text = String::new();
    for event in &response.events {
        let _ = writeln!(text, "{}", audit_line(event, json)?);
    }
    if !response.next_page_token.is_empty() {
        if json {
            // Not in the JSON Lines: a script reading them still learns there is more.
            eprintln!("more: --page-token {}", response.next_page_token);
        } else {
            let _ = writeln!(text, "more: --page-token {}", response.next_page_token);
        }
    }
    Ok(text)
}

/// Prints each event as it comes (JSON Lines with `--json`), until the server ends the stream.
pub async fn audit_tail(
    client: &mut Client,
    message: proto::WatchAuditEventsRequest,
    json: bool,
) -> Result<String, ClientError> {
    use std::io::Write as _;
    let mut stream = client.watch_audit_events(message).await?.into_inner();
    while let Some(event) = stream.message().await? {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", audit_line(&event, json)?);
        let _ = out.flush();
    }
    Ok(String::new())
}

/// What `audit export` does.
pub struct Export {
    pub since: Option<prost_types::Timestamp>,
    pub output: Option<std::path::PathBuf>,
    pub cursor_file: Option<std::path::PathBuf>,
    pub follow: bool,
}

/// Events per page of an export.
const EXPORT_PAGE: i32 = 500;

/// Writes the cursor file whole or not at all (a temporary file renamed over it).
fn save_cursor(path: &std::path::Path, cursor: &str) -> Result<(), ClientError> {
    // Beside it, named after the whole file name (`with_extension` would make `a.cursor` and
    // an output `a.tmp` collide).
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = std::path::PathBuf::from(temporary);
    std::fs::write(&temporary, format!("{cursor}\n"))
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|error| ClientError::new(Exit::Usage, format!("cannot write {}: {error}", path.display())))
}

/// Audit events as JSON Lines. The output is flushed before the cursor file moves past it, so a
/// run that dies writes its last page again when resumed, never skips one (every line carries
/// its cursor, for a reader that must drop the repeat). On a terminal, progress goes to stderr.
pub async fn audit_export(client: &mut Client, export: Export) -> Result<String, ClientError> {
    use std::io::{IsTerminal as _, Write as _};
    let io_error = |what: &str, error: std::io::Error| ClientError::new(Exit::Usage, format!("{what}: {error}"));
    let mut cursor = match &export.cursor_file {
        Some(path) if path.exists() => std::fs::read_to_string(path)
            .map_err(|error| io_error(&format!("cannot read {}", path.display()), error))?
            .trim()
            .to_owned(),
        _ => String::new(),
    };
    let mut out: Box<dyn std::io::Write> = match &export.output {
        Some(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|error| io_error(&format!("cannot open {}", path.display()), error))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let progress = std::io::stderr().is_terminal();
    let mut written = 0u64;
    // Where following starts when nothing was exported: before the first page was asked for (or
    // at --since), so nothing recorded meanwhile is skipped.
    let start = export.since.map_or_else(
        || {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            format!("{}-0", now.as_millis().saturating_sub(1_000))
        },
        |since| format!("{}-0", since.seconds.max(0).saturating_mul(1_000)),
    );
    let mut emit = |events: &[proto::AuditEvent], cursor: &mut String| -> Result<(), ClientError> {
        for event in events {
            writeln!(out, "{}", audit_line(event, true)?).map_err(|error| io_error("cannot write", error))?;
            written += 1;
        }
        out.flush().map_err(|error| io_error("cannot write", error))?;
        if let Some(last) = events.last() {
            cursor.clone_from(&last.cursor);
            if let Some(path) = &export.cursor_file {
                save_cursor(path, cursor)?;
            }
            if progress {
                eprint!(
                    "\rexported {written} events, the last at {}   ",
                    time_text(last.event_time.as_ref())
                );
            }
        }
        Ok(())
    };
    loop {
        let page = client
            .list_audit_events(proto::ListAuditEventsRequest {
                from_time: if cursor.is_empty() { export.since } else { None },
                page_size: EXPORT_PAGE,
                page_token: cursor.clone(),
                ..proto::ListAuditEventsRequest::default()
            })
            .await?
            .into_inner();
        emit(&page.events, &mut cursor)?;
        if page.next_page_token.is_empty() {
            break;
        }
    }
    if export.follow {
        let mut stream = client
            .watch_audit_events(proto::WatchAuditEventsRequest {
                after_cursor: if cursor.is_empty() {
                    start.clone()
                } else {
                    cursor.clone()
                },
            })
            .await?
            .into_inner();
        while let Some(event) = stream.message().await? {
            emit(std::slice::from_ref(&event), &mut cursor)?;
        }
    }
    if progress {
        eprintln!();
    }
    Ok(String::new())
}

pub async fn find_key(
    client: &mut Client,
    message: proto::FindGrantByAccessKeyRequest,
    json: bool,
) -> Result<String, ClientError> {
    let found = client.find_grant_by_access_key(message).await?.into_inner();
    if json {
        return json_line(&found);
    }
    let mut text = String::new();
    if let Some(issuance) = &found.issuance {
        let _ = writeln!(
            text,
            "{} was issued at {} as {} (source identity {}), valid until {}",
            issuance.access_key_id,
            time_text(issuance.issue_time.as_ref()),
            issuance.assumed_role_arn,
            issuance.source_identity,
            time_text(issuance.expire_time.as_ref())
        );
    }
    text.push_str(&found.grant.as_ref().map(grant_summary).unwrap_or_default());
    Ok(text)
}

pub async fn cancel(client: &mut Client, id: String, reason: String, json: bool) -> Result<String, ClientError> {
    let grant = client
        .cancel_grant(proto::CancelGrantRequest { id, reason })
        .await?
        .into_inner();
    grant_text(&grant, json)
}

pub async fn get(client: &mut Client, id: String, json: bool) -> Result<String, ClientError> {
    let grant = client.get_grant(proto::GetGrantRequest { id }).await?.into_inner();
    grant_text(&grant, json)
}

/// A grant, then one line per event of its trail, oldest first (`--json`: the whole response).
pub async fn history(client: &mut Client, id: String, json: bool) -> Result<String, ClientError> {
    let response = client
        .get_grant_history(proto::GetGrantHistoryRequest { id })
        .await?
        .into_inner();
    if json {
        return json_line(&response);
    }
    let mut text = response.grant.as_ref().map(grant_summary).unwrap_or_default();
    for event in &response.events {
        let _ = writeln!(
            text,
            "{:>4}  {}  {:<20} {}{} via {}",
            event.cursor,
            time_text(event.event_time.as_ref()),
            event.event,
            // The person the event names, and how the broker knew them; else the caller.
            event
                .person
                .as_ref()
                .map_or(event.actor.as_str(), |person| person.name.as_str()),
            proof_text(event.person.as_ref()),
            event.caller
        );
    }
    Ok(text)
}

/// This caller's grants, or with `waiting_for_approver` an approver's queue.
pub async fn list(client: &mut Client, message: proto::ListGrantsRequest, json: bool) -> Result<String, ClientError> {
    let response = client.list_grants(message).await?.into_inner();
    if json {
        return json_line(&response);
    }
    let mut text = String::new();
    for grant in &response.grants {
        let _ = writeln!(
            text,
            "{}  {:<16}  {}  {} for {}  ends {}",
            grant.id,
            state_text(grant.state),
            grant.target,
            grant.requester,
            grant.grantee,
            time_text(grant.end_time.as_ref())
        );
    }
    if !response.next_page_token.is_empty() {
        let _ = writeln!(text, "more: --page-token {}", response.next_page_token);
    }
    Ok(text)
}
