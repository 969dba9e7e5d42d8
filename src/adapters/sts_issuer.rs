//! The credential issuer on AWS STS: one SDK client per region, built once and reused, each
//! bounded by attempt and operation timeouts and the SDK's standard retry strategy (which retries
//! throttling with backoff).

use std::{collections::HashMap, time::Duration};

use aws_sdk_sts::{
    Client,
    config::{
        BehaviorVersion, Credentials, Region, SharedCredentialsProvider, retry::RetryConfig, timeout::TimeoutConfig,
    },
    error::{ProvideErrorMetadata, SdkError},
    operation::assume_role::AssumeRoleError,
    types::Tag,
};
use time::OffsetDateTime;

use crate::{
    domain::{IssuedCredentials, Secret, SessionSpec, Target},
    ports::{CredentialIssuer, IssueError, IssueErrorKind},
};

/// How to reach STS.
#[derive(Debug, Clone)]
pub struct StsSettings {
    /// Override of the STS endpoint: the local emulator, or a VPC endpoint.
    pub endpoint: Option<String>,
    pub attempt_timeout: Duration,
    pub operation_timeout: Duration,
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    /// Fixed credentials for an emulator; `None` uses the standard provider chain (environment,
    /// profile, web identity, container and instance roles).
    pub static_credentials: Option<(String, Secret)>,
}

impl StsSettings {
    /// What every AWS client of the broker starts from: the emulator's credentials or the
    /// standard provider chain, and a region named here so the loader never asks IMDS (every
    /// client then sets its own).
    pub(crate) async fn base_config(&self) -> aws_config::SdkConfig {
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(Region::new("us-east-1"));
        if let Some((access_key_id, secret)) = &self.static_credentials {
            loader = loader.credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                access_key_id,
                secret.expose(),
                None,
                None,
                "grant-broker-static",
            )));
        }
        loader.load().await
    }

    /// Each call's bounds: per attempt and in all.
    pub(crate) fn timeouts(&self) -> TimeoutConfig {
        TimeoutConfig::builder()
            .operation_attempt_timeout(self.attempt_timeout)
            .operation_timeout(self.operation_timeout)
            .build()
    }

    /// The SDK's standard retries (throttling included), bounded.
    pub(crate) fn retries(&self) -> RetryConfig {
        RetryConfig::standard()
            .with_max_attempts(self.max_attempts)
            .with_initial_backoff(self.initial_backoff)
    }
}

pub struct StsIssuer {
    clients: HashMap<String, Client>,
}

impl StsIssuer {
    /// Builds one client per region in `regions`.
    pub async fn new(settings: &StsSettings, regions: impl IntoIterator<Item = String>) -> Self {
        let shared = settings.base_config().await;
        let clients = regions
            .into_iter()
            .map(|region| {
                let mut config = aws_sdk_sts::config::Builder::from(&shared)
                    .region(Region::new(region.clone()))
                    .timeout_config(settings.timeouts())
                    .retry_config(settings.retries())
                    .interceptor(super::aws_call::CountAttempts);
                if let Some(endpoint) = &settings.endpoint {
                    config = config.endpoint_url(endpoint);
                }
                (region, Client::from_conf(config.build()))
            })
            .collect();
        Self { clients }
    }
}

fn to_time(at: &aws_sdk_sts::primitives::DateTime) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(at.secs()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The RoleId in an `AssumedRoleId` (`<RoleId>:<session name>`), when it is for this session.
fn role_id_of(assumed_role_id: &str, session_name: &str) -> Option<String> {
    assumed_role_id
        .strip_suffix(session_name)
        .and_then(|rest| rest.strip_suffix(':'))
        .filter(|role_id| !role_id.is_empty() && !role_id.contains(':'))
        .map(str::to_owned)
}

fn failed(kind: IssueErrorKind, code: &str, message: impl Into<String>) -> IssueError {
    IssueError {
        kind,
        code: code.to_owned(),
        message: message.into(),
    }
}

/// Sorts what STS or the SDK said into what the caller can do about it.
fn classify(error: SdkError<AssumeRoleError>) -> IssueError {
    match error {
        SdkError::ServiceError(context) => {
            let error = context.err();
            let code = error.code().unwrap_or("Unknown");
            let message = error.message().unwrap_or("no message").to_owned();
            let kind = match error {
                AssumeRoleError::MalformedPolicyDocumentException(_)
                | AssumeRoleError::PackedPolicyTooLargeException(_) => IssueErrorKind::Rejected,
                // Retrying cannot help: STS must be activated in the region for the account.
                AssumeRoleError::RegionDisabledException(_) => IssueErrorKind::Misconfigured,
                // The broker's own credentials expired: an operator problem, retryable once fixed.
                AssumeRoleError::ExpiredTokenException(_) => IssueErrorKind::Unavailable,
                _ => match code {
                    "AccessDenied" if message.contains("MultiFactorAuthentication") => IssueErrorKind::MfaRejected,
                    "AccessDenied" => IssueErrorKind::NotTrusted,
                    "ValidationError" => IssueErrorKind::Misconfigured,
                    "Throttling" | "ThrottlingException" | "RequestLimitExceeded" => IssueErrorKind::Throttled,
                    "ServiceUnavailable" | "InternalFailure" => IssueErrorKind::Unavailable,
                    _ => IssueErrorKind::Failed,
                },
            };
            failed(kind, code, message)
        }
        SdkError::TimeoutError(_) => failed(IssueErrorKind::Unavailable, "Timeout", "STS did not answer in time"),
        SdkError::DispatchFailure(failure) => failed(
            IssueErrorKind::Unavailable,
            "Unreachable",
            format!(
                "STS could not be reached: {}",
                failure
                    .as_connector_error()
                    .map_or_else(|| "dispatch failed".to_owned(), ToString::to_string)
            ),
        ),
        SdkError::ResponseError(_) => failed(
            IssueErrorKind::Unavailable,
            "UnreadableResponse",
            "STS sent a response that could not be read",
        ),
        SdkError::ConstructionFailure(_) => failed(
            IssueErrorKind::Failed,
            "RequestNotBuilt",
            "the STS request could not be built",
        ),
        _ => failed(IssueErrorKind::Failed, "Unknown", "STS call failed"),
    }
}

/// How much of the packed policy-and-tags budget the session used. STS renamed the field in
/// 2026; older endpoints (and the emulator) still send only the old one.
#[allow(deprecated)]
fn packed_policy_percent(output: &aws_sdk_sts::operation::assume_role::AssumeRoleOutput) -> Option<i32> {
    output.session_token_utilization().or(output.packed_policy_size())
}

impl CredentialIssuer for StsIssuer {
    fn serves(&self, target: &Target) -> Result<(), String> {
        if self.clients.contains_key(&target.region) {
            Ok(())
        } else {
            Err(format!(
                "target `{}` is in region {}, where the broker made no STS client at start: restart to add it",
                target.id, target.region
            ))
        }
    }

    async fn assume_role(&self, spec: &SessionSpec) -> Result<IssuedCredentials, IssueError> {
        let client = self.clients.get(spec.region()).ok_or_else(|| {
            failed(
                IssueErrorKind::Failed,
                "NoRegionClient",
                format!("no STS client for region {}", spec.region()),
            )
        })?;
        let tags = spec
            .tags()
            .iter()
            .map(|tag| Tag::builder().key(tag.key).value(&tag.value).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| failed(IssueErrorKind::Failed, "InvalidTag", format!("session tag: {error}")))?;
        let mut call = client
            .assume_role()
            .role_arn(spec.role_arn())
            .role_session_name(spec.session_name())
            .policy(spec.policy())
            .duration_seconds(i32::try_from(spec.duration_secs()).unwrap_or(i32::MAX))
            .source_identity(spec.source_identity())
            .set_tags((!tags.is_empty()).then_some(tags))
            .set_external_id(spec.external_id().map(str::to_owned));
        if let Some(mfa) = spec.mfa() {
            call = call.serial_number(&mfa.serial).token_code(mfa.code.expose());
        }
        let output = super::aws_call::observed("STS", "AssumeRole", spec.region(), call.send())
            .await
            .map_err(classify)?;
        let credentials = output.credentials().ok_or_else(|| {
            failed(
                IssueErrorKind::Unavailable,
                "NoCredentials",
                "STS answered without credentials",
            )
        })?;
        Ok(IssuedCredentials {
            access_key_id: credentials.access_key_id().to_owned(),
            secret_access_key: Secret::new(credentials.secret_access_key()),
            session_token: Secret::new(credentials.session_token()),
            expiration: to_time(credentials.expiration()),
            assumed_role_arn: output
                .assumed_role_user()
                .map(|user| user.arn().to_owned())
                .unwrap_or_default(),
            role_id: output
                .assumed_role_user()
                .and_then(|user| role_id_of(user.assumed_role_id(), spec.session_name())),
            packed_policy_percent: packed_policy_percent(&output),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::role_id_of;

    #[test]
    fn the_role_id_is_what_precedes_this_sessions_name() {
        assert_eq!(role_id_of("AROA123:gb-x", "gb-x").as_deref(), Some("AROA123"));
        for other in ["AROA123:gb-y", "gb-x", ":gb-x", "A:B:gb-x", ""] {
            assert_eq!(role_id_of(other, "gb-x"), None, "{other}");
        }
    }
}
