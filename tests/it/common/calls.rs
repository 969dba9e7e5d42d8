//! Requests, statuses and the CLI, as tests make and read them.

use grant_broker::grpc::proto;
use tonic::Request;

use super::*;

/// Wraps a message with the caller's bearer token.
pub fn authed<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// A request that the example rules auto-approve on `dev-logs-read`.
pub fn read_logs_request(request_id: &str) -> proto::RequestAccessRequest {
    proto::RequestAccessRequest {
        request_id: request_id.to_owned(),
        target: "dev-logs-read".to_owned(),
        scopes: vec![proto::Scope {
            actions: vec!["s3:GetObject".to_owned()],
            resources: vec!["arn:aws:s3:::acme-logs/vendor-x/*".to_owned()],
        }],
        duration: Some(prost_types::Duration {
            seconds: 1800,
            nanos: 0,
        }),
        justification: "investigate ingestion lag".to_owned(),
        ticket: "INC-4711".to_owned(),
        requester: "alice@example.com".to_owned(),
        grantee: "vendor-x".to_owned(),
        mfa_serial: String::new(),
        mfa_code: String::new(),
        start_time: None,
        break_glass: false,
    }
}

/// A request the example rules send to people: production, with a ticket (one approval from
/// security and one from a team lead).
pub fn production_request() -> proto::RequestAccessRequest {
    proto::RequestAccessRequest {
        target: "prod-logs-read".to_owned(),
        scopes: vec![proto::Scope {
            actions: vec!["s3:GetObject".to_owned()],
            resources: vec!["arn:aws:s3:::acme-prod-logs/vendor-x/*".to_owned()],
        }],
        ticket: "CHG-7".to_owned(),
        ..read_logs_request("")
    }
}

/// The field paths of a status's BadRequest violations.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|bad| bad.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// The ErrorInfo reason of a status.
pub fn error_reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

/// A value of a status's ErrorInfo metadata.
pub fn error_metadata(status: &tonic::Status, key: &str) -> Option<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .and_then(|info| info.metadata.get(key).cloned())
}

/// The descriptions of a status's PreconditionFailure violations.
pub fn precondition_descriptions(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .precondition_failure()
        .map(|failure| failure.violations.iter().map(|v| v.description.clone()).collect())
        .unwrap_or_default()
}

/// Asserts a status's code, its ErrorInfo reason, and that its message says `says`.
#[track_caller]
pub fn assert_status(status: &tonic::Status, code: tonic::Code, reason: &str, says: &str) {
    assert_eq!(
        (status.code(), error_reason(status).as_str()),
        (code, reason),
        "{status:?}"
    );
    assert!(
        status.message().contains(says),
        "`{}` does not say `{says}`",
        status.message()
    );
}

/// The portal caller's most recent grant.
pub async fn newest_grant(client: &mut Client) -> proto::Grant {
    let page = proto::ListGrantsRequest {
        page_size: 1,
        ..Default::default()
    };
    let mut grants = client
        .list_grants(authed(PORTAL_TOKEN, page))
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert_eq!(grants.len(), 1, "the caller has a grant");
    grants.remove(0)
}

/// An approver's approval, with a comment naming them.
pub fn approve(id: &str, approver: &str) -> proto::ApproveGrantRequest {
    proto::ApproveGrantRequest {
        id: id.to_owned(),
        approver: approver.to_owned(),
        comment: format!("ok from {approver}"),
    }
}

/// Runs the grant-broker command with `args`, off the async runtime's threads.
pub async fn run_cli(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_grant-broker"))
            .args(args)
            // What the shipped configurations name their integrity key by.
            .env("GRANT_BROKER_INTEGRITY_KEY", crate::common::TEST_INTEGRITY_KEY)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// IssueCredentials for a grant, without MFA.
pub fn issue_for(grant_id: &str) -> proto::IssueCredentialsRequest {
    proto::IssueCredentialsRequest {
        id: grant_id.to_owned(),
        ..Default::default()
    }
}

/// Every audit-log event of type `event`, oldest first, as an auditor reads them, each with its
/// `event_json` parsed.
pub async fn logged(client: &mut Client, event: &str) -> Vec<(proto::AuditEvent, serde_json::Value)> {
    let mut found = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_audit_events(authed(
                AUDITOR_TOKEN,
                proto::ListAuditEventsRequest {
                    events: vec![event.to_owned()],
                    page_size: 500,
                    page_token,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        for entry in page.events {
            let json = serde_json::from_str(&entry.event_json).unwrap();
            found.push((entry, json));
        }
        if page.next_page_token.is_empty() {
            return found;
        }
        page_token = page.next_page_token;
    }
}
