//! The role enforcer on AWS IAM: reads a target role's id and inline policies, and writes or
//! deletes the one inline policy the broker owns on it
//! ([`crate::domain::revocation::DENY_POLICY_NAME`]). It never reads or
//! changes any other policy, and never changes a role whose target is `record-only`.
//!
//! IAM is global within a partition: every client talks to its partition's one endpoint (signed
//! for `us-east-1` in the `aws` partition). A target reaches IAM either with the broker's own
//! credentials or by assuming an administrative role in the target's account (`iam_role_arn`,
//! optional ExternalId) through STS, with the same endpoint, credentials, timeouts and retries as
//! the issuer. One client per distinct way in, built at start and reused; assumed credentials are
//! cached by the client and renewed before they expire.

use std::{collections::HashMap, time::Duration};

use aws_config::{SdkConfig, sts::AssumeRoleProvider};
use aws_sdk_iam::{
    Client,
    config::{Region, SharedCredentialsProvider},
    error::{ProvideErrorMetadata, SdkError},
};
use aws_sdk_sts::operation::assume_role::AssumeRoleError;

use crate::{
    adapters::StsSettings,
    domain::{IamAccess, RevocationMode, Target, revocation::DENY_POLICY_NAME},
    ports::{EnforceError, EnforceErrorKind, RoleEnforcer, RoleFacts},
};

/// How to reach IAM.
#[derive(Debug, Clone)]
pub struct IamSettings {
    /// Override of the IAM endpoint (the local emulator); `None`: the partition's IAM endpoint.
    pub endpoint: Option<String>,
    /// The broker's AWS settings, shared with the issuer: credentials, timeouts, retries, and
    /// the STS endpoint used to assume a target's `iam_role_arn`.
    pub aws: StsSettings,
}

/// The session name of the broker's sessions of `iam_role_arn` roles, as CloudTrail shows them.
const SESSION_NAME: &str = "grant-broker-revocation";

/// How long the broker's sessions of `iam_role_arn` roles last: STS's minimum, since the client
/// renews them before they expire and credentials that can rewrite role policies should be short
/// lived. Any role allows it, role chaining included.
const ADMIN_SESSION: Duration = Duration::from_secs(900);

/// The IAM default when GetRole does not say (IAM always does).
const DEFAULT_MAX_SESSION_SECS: u64 = 3_600;

/// One client per (signing region, way in).
type ClientKey = (&'static str, IamAccess);

pub struct IamEnforcer {
    clients: HashMap<ClientKey, Client>,
}

/// The region IAM requests are signed for in a partition (IAM has one endpoint per partition).
fn iam_region(role_arn: &str) -> &'static str {
    match role_arn.split(':').nth(1) {
        Some("aws-cn") => "cn-north-1",
        Some("aws-us-gov") => "us-gov-west-1",
        Some("aws-iso") => "us-iso-east-1",
        Some("aws-iso-b") => "us-isob-east-1",
        _ => "us-east-1",
    }
}

fn client_key(target: &Target) -> ClientKey {
    (iam_region(&target.role_arn), target.iam.clone())
}

impl IamEnforcer {
    /// Builds one IAM client for each distinct way `targets` reach IAM. Nothing is called yet:
    /// an admin role is first assumed by the first IAM call that needs it.
    pub async fn new(settings: &IamSettings, targets: &[Target]) -> Self {
        let aws = &settings.aws;
        let shared = aws.base_config().await;
        let timeouts = aws.timeouts();
        let retries = aws.retries();
        // What AssumeRoleProvider builds its STS client from: the issuer's endpoint and bounds.
        // Kept apart from `shared`, so the STS endpoint never becomes the IAM clients' endpoint.
        let mut sts = shared
            .to_builder()
            .timeout_config(timeouts.clone())
            .retry_config(retries.clone());
        if let Some(endpoint) = &aws.endpoint {
            sts = sts.endpoint_url(endpoint);
        }
        let sts = sts.build();

        let mut clients = HashMap::new();
        for target in targets {
            let key = client_key(target);
            if clients.contains_key(&key) {
                continue;
            }
            let (region, access) = &key;
            let mut config = aws_sdk_iam::config::Builder::from(&shared)
                .region(Region::new(*region))
                .timeout_config(timeouts.clone())
                .retry_config(retries.clone())
                .interceptor(super::aws_call::CountAttempts);
            if let Some(endpoint) = &settings.endpoint {
                config = config.endpoint_url(endpoint);
            }
            if let Some(role_arn) = &access.assume_role_arn {
                config = config.credentials_provider(SharedCredentialsProvider::new(
                    assume_role(&sts, region, role_arn, access.external_id.as_deref()).await,
                ));
            }
            clients.insert(key, Client::from_conf(config.build()));
        }
        Self { clients }
    }

    fn client(&self, target: &Target) -> Result<&Client, EnforceError> {
        self.clients.get(&client_key(target)).ok_or_else(|| {
            failed(
                EnforceErrorKind::Failed,
                "NoIamClient",
                format!("no IAM client for target {}", target.id),
            )
        })
    }
}

/// Credentials of `role_arn`, assumed with the broker's own through STS (`sts` carries the
/// endpoint, bounds and base credentials), renewed by the client's identity cache.
async fn assume_role(sts: &SdkConfig, region: &str, role_arn: &str, external_id: Option<&str>) -> AssumeRoleProvider {
    let mut provider = AssumeRoleProvider::builder(role_arn)
        .configure(sts)
        .region(Region::new(region.to_owned()))
        .session_name(SESSION_NAME)
        .session_length(ADMIN_SESSION);
    if let Some(external_id) = external_id {
        provider = provider.external_id(external_id);
    }
    provider.build().await
}

/// Refuses to change the role of a target the operator marked `record-only`.
// INVARIANT: the broker never writes to a role it was told is not its to modify, whatever the
// caller of the port decided.
fn may_modify(target: &Target) -> Result<(), EnforceError> {
    match target.revocation {
        RevocationMode::Enforce => Ok(()),
        RevocationMode::RecordOnly => Err(failed(
            EnforceErrorKind::AccessDenied,
            "RecordOnlyTarget",
            format!(
                "target {} is record-only: the broker does not change its role {}",
                target.id, target.role_arn
            ),
        )),
    }
}

fn failed(kind: EnforceErrorKind, code: &str, message: impl Into<String>) -> EnforceError {
    EnforceError {
        kind,
        code: code.to_owned(),
        message: message.into(),
    }
}

/// What an error code of IAM (or of STS, assuming the admin role) means to the caller.
fn kind_of(code: &str) -> EnforceErrorKind {
    match code {
        "NoSuchEntity" => EnforceErrorKind::RoleNotFound,
        "AccessDenied" | "AccessDeniedException" => EnforceErrorKind::AccessDenied,
        "LimitExceeded" | "MalformedPolicyDocument" | "PackedPolicyTooLarge" => EnforceErrorKind::Rejected,
        "Throttling" | "ThrottlingException" | "RequestLimitExceeded" => EnforceErrorKind::Throttled,
        "ServiceFailure" | "ServiceUnavailable" | "InternalFailure" => EnforceErrorKind::Unavailable,
        // The broker's own credentials expired: an operator problem, retryable once fixed.
        "ExpiredToken" | "ExpiredTokenException" => EnforceErrorKind::Unavailable,
        _ => EnforceErrorKind::Failed,
    }
}

/// Sorts what IAM or the SDK said into what the caller can do about it. `action` names the call
/// in messages.
fn classify<E>(action: &str, error: SdkError<E>) -> EnforceError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    // Credentials are resolved before the request is sent: a failure to assume the target's
    // admin role is a dispatch failure, with STS's answer among the error's sources.
    if matches!(error, SdkError::DispatchFailure(_))
        && let Some(assume) = assume_role_failure(&error)
    {
        return assume;
    }
    match error {
        SdkError::ServiceError(context) => {
            let error = context.err();
            let code = error.code().unwrap_or("Unknown");
            let message = format!("{action}: {}", error.message().unwrap_or("no message"));
            failed(kind_of(code), code, message)
        }
        SdkError::TimeoutError(_) => failed(
            EnforceErrorKind::Unavailable,
            "Timeout",
            format!("{action}: IAM did not answer in time"),
        ),
        SdkError::DispatchFailure(failure) => failed(
            EnforceErrorKind::Unavailable,
            "Unreachable",
            format!(
                "{action}: IAM could not be reached: {}",
                failure
                    .as_connector_error()
                    .map_or_else(|| "dispatch failed".to_owned(), ToString::to_string)
            ),
        ),
        SdkError::ResponseError(_) => failed(
            EnforceErrorKind::Unavailable,
            "UnreadableResponse",
            format!("{action}: IAM sent a response that could not be read"),
        ),
        SdkError::ConstructionFailure(_) => failed(
            EnforceErrorKind::Failed,
            "RequestNotBuilt",
            format!("{action}: the IAM request could not be built"),
        ),
        _ => failed(
            EnforceErrorKind::Failed,
            "Unknown",
            format!("{action}: IAM call failed"),
        ),
    }
}

/// STS's refusal to let the broker assume a target's `iam_role_arn`, if that is what failed.
fn assume_role_failure(failure: &(dyn std::error::Error + 'static)) -> Option<EnforceError> {
    let mut source = Some(failure);
    while let Some(error) = source {
        if let Some(sts) = error.downcast_ref::<SdkError<AssumeRoleError>>() {
            let (kind, code, message) = match sts {
                SdkError::ServiceError(context) => {
                    let error = context.err();
                    let code = error.code().unwrap_or("Unknown");
                    let kind = match error {
                        AssumeRoleError::RegionDisabledException(_) => EnforceErrorKind::Failed,
                        _ => kind_of(code),
                    };
                    (kind, code, error.message().unwrap_or("no message").to_owned())
                }
                SdkError::TimeoutError(_) => (
                    EnforceErrorKind::Unavailable,
                    "Timeout",
                    "STS did not answer in time".to_owned(),
                ),
                SdkError::DispatchFailure(_) => (
                    EnforceErrorKind::Unavailable,
                    "Unreachable",
                    "STS could not be reached".to_owned(),
                ),
                _ => (EnforceErrorKind::Failed, "Unknown", sts.to_string()),
            };
            return Some(failed(
                kind,
                code,
                format!("assuming the target's IAM role (iam_role_arn): {message}"),
            ));
        }
        source = error.source();
    }
    None
}

/// An inline policy document as IAM returns it: URL-encoded (RFC 3986, which real IAM and the
/// emulator both do and the Rust SDK does not undo), or plain JSON, which starts with `{`.
fn decode_policy_document(text: &str) -> String {
    if text.trim_start().starts_with('{') {
        return text.to_owned();
    }
    percent_decode(text)
}

/// Decodes `%XX` escapes (and nothing else: `+` stays `+`, as RFC 3986 says); a `%` not followed
/// by two hex digits is kept as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            // Two hex digits exactly: `from_str_radix` alone would also take `+F`.
            .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// An IAM call on `target`'s role, observed ([`super::aws_call`]), in the region its partition's
/// IAM is signed for (IAM is global).
fn observed<T, E>(
    operation: &'static str,
    target: &Target,
    call: impl std::future::Future<Output = Result<T, SdkError<E>>>,
) -> impl std::future::Future<Output = Result<T, SdkError<E>>>
where
    T: aws_sdk_iam::operation::RequestId,
    E: aws_sdk_iam::error::ProvideErrorMetadata,
{
    super::aws_call::observed("IAM", operation, iam_region(&target.role_arn), call)
}

/// The names a paginated ListRolePolicies collected (no one response's request id to name).
struct Listed(Vec<String>);

impl aws_sdk_iam::operation::RequestId for Listed {
    fn request_id(&self) -> Option<&str> {
        None
    }
}

/// A policy's size as IAM counts it against the role's cap: characters, whitespace not counted.
fn policy_chars(document: &str) -> usize {
    document.chars().filter(|c| !c.is_whitespace()).count()
}

impl RoleEnforcer for IamEnforcer {
    async fn role_facts(&self, target: &Target) -> Result<RoleFacts, EnforceError> {
        let call = self.client(target)?.get_role().role_name(target.role_name()).send();
        let output = observed("GetRole", target, call)
            .await
            .map_err(|error| classify("GetRole", error))?;
        let role = output
            .role()
            .ok_or_else(|| failed(EnforceErrorKind::Failed, "NoRole", "GetRole answered without a role"))?;
        let max_session_secs = role
            .max_session_duration()
            .and_then(|secs| u64::try_from(secs).ok())
            .unwrap_or(DEFAULT_MAX_SESSION_SECS);
        Ok(RoleFacts {
            role_id: role.role_id().to_owned(),
            max_session_secs,
        })
    }

    async fn other_inline_policy_chars(&self, target: &Target) -> Result<usize, EnforceError> {
        let client = self.client(target)?;
        let role_name = target.role_name();
        let listing = client
            .list_role_policies()
            .role_name(role_name)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<String>, _>>();
        let Listed(names) = observed("ListRolePolicies", target, async { listing.await.map(Listed) })
            .await
            .map_err(|error| classify("ListRolePolicies", error))?;
        let mut total = 0;
        for name in names.iter().filter(|name| name.as_str() != DENY_POLICY_NAME) {
            let call = client.get_role_policy().role_name(role_name).policy_name(name).send();
            match observed("GetRolePolicy", target, call).await {
                Ok(output) => total += policy_chars(&decode_policy_document(output.policy_document())),
                // Deleted since it was listed: it no longer counts.
                Err(SdkError::ServiceError(context)) if context.err().code() == Some("NoSuchEntity") => {}
                Err(error) => return Err(classify("GetRolePolicy", error)),
            }
        }
        Ok(total)
    }

    async fn deny_policy(&self, target: &Target) -> Result<Option<String>, EnforceError> {
        let call = self
            .client(target)?
            .get_role_policy()
            .role_name(target.role_name())
            .policy_name(DENY_POLICY_NAME)
            .send();
        match observed("GetRolePolicy", target, call).await {
            Ok(output) => Ok(Some(decode_policy_document(output.policy_document()))),
            Err(SdkError::ServiceError(context)) if context.err().code() == Some("NoSuchEntity") => Ok(None),
            Err(error) => Err(classify("GetRolePolicy", error)),
        }
    }

    async fn put_deny_policy(&self, target: &Target, document: &str) -> Result<(), EnforceError> {
        may_modify(target)?;
        let call = self
            .client(target)?
            .put_role_policy()
            .role_name(target.role_name())
            .policy_name(DENY_POLICY_NAME)
            .policy_document(document)
            .send();
        observed("PutRolePolicy", target, call)
            .await
            .map_err(|error| classify("PutRolePolicy", error))?;
        Ok(())
    }

    fn serves(&self, target: &Target) -> Result<(), String> {
        if target.revocation == RevocationMode::RecordOnly || self.clients.contains_key(&client_key(target)) {
            Ok(())
        } else {
            Err(format!(
                "target `{}` reaches IAM another way than the targets the broker started with (its partition, iam_role_arn or iam_external_id): IAM clients are made at start, so restart to add it",
                target.id
            ))
        }
    }

    async fn delete_deny_policy(&self, target: &Target) -> Result<(), EnforceError> {
        may_modify(target)?;
        let call = self
            .client(target)?
            .delete_role_policy()
            .role_name(target.role_name())
            .policy_name(DENY_POLICY_NAME)
            .send();
        match observed("DeleteRolePolicy", target, call).await {
            Ok(_) => Ok(()),
            // The policy (or the role itself) is gone: nothing of the broker's is left on it.
            Err(SdkError::ServiceError(context)) if context.err().code() == Some("NoSuchEntity") => Ok(()),
            Err(error) => Err(classify("DeleteRolePolicy", error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_come_back_decoded_whether_or_not_iam_encoded_them() {
        let json = r#"{"Statement":[{"Resource":"arn:aws:s3:::b/a b+c%"}]}"#;
        let encoded =
            "%7B%22Statement%22%3A%5B%7B%22Resource%22%3A%22arn%3Aaws%3As3%3A%3A%3Ab/a%20b%2Bc%25%22%7D%5D%7D";
        assert_eq!(decode_policy_document(encoded), json);
        assert_eq!(decode_policy_document(json), json, "plain JSON is left alone");
        assert_eq!(
            percent_decode("a+b%2"),
            "a+b%2",
            "no form decoding, a broken escape kept"
        );
        assert_eq!(percent_decode("%C3%A9"), "é");
        assert_eq!(percent_decode("%+F%-1%zz"), "%+F%-1%zz", "only two hex digits escape");
    }

    #[test]
    fn whitespace_does_not_count() {
        assert_eq!(policy_chars("{\n  \"a\": \"b c\"\t}\r\n"), 10);
    }

    #[test]
    fn iam_is_signed_for_the_partition_of_the_role() {
        assert_eq!(iam_region("arn:aws:iam::123456789012:role/x"), "us-east-1");
        assert_eq!(iam_region("arn:aws-cn:iam::123456789012:role/x"), "cn-north-1");
        assert_eq!(iam_region("arn:aws-us-gov:iam::123456789012:role/x"), "us-gov-west-1");
    }

    #[test]
    fn error_codes_say_what_the_caller_can_do() {
        assert_eq!(kind_of("NoSuchEntity"), EnforceErrorKind::RoleNotFound);
        assert_eq!(kind_of("AccessDenied"), EnforceErrorKind::AccessDenied);
        assert_eq!(kind_of("AccessDeniedException"), EnforceErrorKind::AccessDenied);
        assert_eq!(kind_of("LimitExceeded"), EnforceErrorKind::Rejected);
        assert_eq!(kind_of("MalformedPolicyDocument"), EnforceErrorKind::Rejected);
        assert_eq!(kind_of("Throttling"), EnforceErrorKind::Throttled);
        assert_eq!(kind_of("ServiceFailure"), EnforceErrorKind::Unavailable);
        assert_eq!(kind_of("EntityTemporarilyUnmodifiable"), EnforceErrorKind::Failed);
    }
}
