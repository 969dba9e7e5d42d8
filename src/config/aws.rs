//! `[aws]`: STS and IAM endpoints, timeouts and retries, role chaining, emulator credentials,
//! and how often a role's deny is verified.

use super::*;

/// How often a role's deny policy may be read back from IAM, in seconds.
pub(super) const DENY_VERIFY_INTERVAL_SECS: std::ops::RangeInclusive<u64> = 5..=3600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAws {
    pub(super) sts_endpoint: Option<String>,
    pub(super) iam_endpoint: Option<String>,
    pub(super) attempt_timeout_ms: u64,
    pub(super) operation_timeout_ms: u64,
    pub(super) max_attempts: u32,
    pub(super) initial_backoff_ms: u64,
    pub(super) role_chaining: bool,
    pub(super) emulator_credentials: Option<RawStaticCredentials>,
    pub(super) deny_verify_interval_secs: u64,
}

impl Default for RawAws {
    fn default() -> Self {
        Self {
            sts_endpoint: None,
            iam_endpoint: None,
            attempt_timeout_ms: 3_000,
            operation_timeout_ms: 10_000,
            max_attempts: 3,
            initial_backoff_ms: 200,
            role_chaining: false,
            emulator_credentials: None,
            deny_verify_interval_secs: 60,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStaticCredentials {
    pub(super) access_key_id: String,
    pub(super) secret_access_key: String,
}

pub(super) fn validate_aws(raw: RawAws, problems: &mut Vec<Problem>) -> (StsSettings, IamSettings, bool) {
    for (key, endpoint) in [
        ("aws.sts_endpoint", &raw.sts_endpoint),
        ("aws.iam_endpoint", &raw.iam_endpoint),
    ] {
        if let Some(endpoint) = endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            problems.push(Problem::new(key, "must be an http:// or https:// URL"));
        }
    }
    if raw.emulator_credentials.is_some() && raw.sts_endpoint.is_none() {
        problems.push(Problem::new(
            "aws.emulator_credentials",
            "only for an emulator: set aws.sts_endpoint too (real AWS credentials come from the provider chain)",
        ));
    }
    if raw.max_attempts == 0 || raw.max_attempts > 10 {
        problems.push(Problem::new("aws.max_attempts", "must be 1-10"));
    }
    if raw.attempt_timeout_ms == 0 || raw.operation_timeout_ms < raw.attempt_timeout_ms {
        problems.push(Problem::new(
            "aws.operation_timeout_ms",
            "must be at least aws.attempt_timeout_ms, which must be positive",
        ));
    }
    let settings = StsSettings {
        endpoint: raw.sts_endpoint,
        attempt_timeout: Duration::from_millis(raw.attempt_timeout_ms),
        operation_timeout: Duration::from_millis(raw.operation_timeout_ms),
        max_attempts: raw.max_attempts,
        initial_backoff: Duration::from_millis(raw.initial_backoff_ms),
        static_credentials: raw
            .emulator_credentials
            .map(|credentials| (credentials.access_key_id, Secret::new(credentials.secret_access_key))),
    };
    // IAM calls share the STS settings: the same credentials, timeouts and retries, and the STS
    // endpoint for assuming a target's IAM role.
    let iam = IamSettings {
        endpoint: raw.iam_endpoint,
        aws: settings.clone(),
    };
    (settings, iam, raw.role_chaining)
}
