//! `[[webhooks]]`: where events are POSTed, with which secret, which events, and how hard to try.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    pub(super) name: String,
    pub(super) url: String,
    /// The name of the environment variable holding the HMAC secret, never the secret.
    pub(super) secret_env: String,
    /// `None`: [`webhooks::DEFAULT_EVENTS`].
    pub(super) events: Option<Vec<String>>,
    #[serde(default = "default_webhook_timeout_ms")]
    pub(super) timeout_ms: u64,
    #[serde(default = "default_webhook_max_attempts")]
    pub(super) max_attempts: u32,
    #[serde(default)]
    pub(super) insecure_http: bool,
}

pub(super) fn default_webhook_timeout_ms() -> u64 {
    5_000
}

/// With the default backoff (1 s doubling), eight attempts span about two minutes.
pub(super) fn default_webhook_max_attempts() -> u32 {
    8
}

pub(super) const WEBHOOK_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=60_000;

pub(super) const WEBHOOK_MAX_ATTEMPTS: std::ops::RangeInclusive<u32> = 1..=50;

/// Webhooks: a unique name, an https URL (http only to loopback, or when the operator says so),
/// a secret from the environment long enough for HMAC-SHA256, and known event names.
pub(super) fn validate_webhooks(
    raw: Vec<RawWebhook>,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) -> Vec<Webhook> {
    let mut names = BTreeMap::new();
    let mut valid = Vec::with_capacity(raw.len());
    for (index, webhook) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("webhooks[{index}].{field}");
        let before = problems.len();
        let name_ok = !webhook.name.is_empty()
            && webhook.name.len() <= 64
            && webhook
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
        if !name_ok {
            problems.push(Problem::new(key("name"), "must be 1-64 characters of a-z, 0-9 and -_."));
        }
        if let Some(first) = names.insert(webhook.name.clone(), index) {
            problems.push(Problem::new(
                key("name"),
                format!("`{}` is also the name of webhooks[{first}]", webhook.name),
            ));
        }
        let url = match validate_webhook_url(&webhook.url, webhook.insecure_http) {
            Ok((url, plaintext)) => {
                if plaintext {
                    warnings.push(Problem::new(
                        key("insecure_http"),
                        format!(
                            "notifications to {} cross the network unencrypted (signed, but readable)",
                            webhooks::redacted_url(&url)
                        ),
                    ));
                }
                Some(url)
            }
            Err(why) => {
                problems.push(Problem::new(key("url"), why));
                None
            }
        };
        // The secret's value never appears in a problem: only its variable's name and length.
        let secret = match env(&webhook.secret_env) {
            _ if webhook.secret_env.is_empty() => {
                problems.push(Problem::new(
                    key("secret_env"),
                    "name the environment variable that holds the HMAC secret",
                ));
                None
            }
            None => {
                problems.push(Problem::new(
                    key("secret_env"),
                    format!("the environment variable `{}` is not set", webhook.secret_env),
                ));
                None
            }
            Some(value) if value.len() < webhooks::MIN_SECRET_BYTES => {
                problems.push(Problem::new(
                    key("secret_env"),
                    format!(
                        "`{}` holds {} bytes; an HMAC-SHA256 secret needs at least {}",
                        webhook.secret_env,
                        value.len(),
                        webhooks::MIN_SECRET_BYTES
                    ),
                ));
                None
            }
            Some(value) => Some(Secret::new(value)),
        };
        let events: BTreeSet<String> = match webhook.events {
            None => webhooks::DEFAULT_EVENTS.iter().map(|&name| name.to_owned()).collect(),
            Some(events) => {
                if events.is_empty() {
                    problems.push(Problem::new(
                        key("events"),
                        "name at least one event, or leave it out for the defaults",
                    ));
                }
                for (i, event) in events.iter().enumerate() {
                    if !webhooks::is_known_event(event) {
                        problems.push(Problem::new(
                            format!("{}[{i}]", key("events")),
                            format!(
                                "`{event}` is not an event; known: {}",
                                webhooks::known_events().collect::<Vec<_>>().join(", ")
                            ),
                        ));
                    }
                }
                events.into_iter().collect()
            }
        };
        if !WEBHOOK_TIMEOUT_MS.contains(&webhook.timeout_ms) {
            problems.push(Problem::new(
                key("timeout_ms"),
                format!("must be {}-{}", WEBHOOK_TIMEOUT_MS.start(), WEBHOOK_TIMEOUT_MS.end()),
            ));
        }
        if !WEBHOOK_MAX_ATTEMPTS.contains(&webhook.max_attempts) {
            problems.push(Problem::new(
                key("max_attempts"),
                format!(
                    "must be {}-{}",
                    WEBHOOK_MAX_ATTEMPTS.start(),
                    WEBHOOK_MAX_ATTEMPTS.end()
                ),
            ));
        }
        if let (Some(url), Some(secret), true) = (url, secret, problems.len() == before) {
            valid.push(Webhook {
                name: webhook.name,
                url,
                secret,
                events,
                timeout: Duration::from_millis(webhook.timeout_ms),
                max_attempts: webhook.max_attempts,
            });
        }
    }
    valid
}

/// An absolute http(s) URL without credentials in it; plain http only to a loopback host unless
/// `insecure_http`. Returns the URL and whether it is plaintext beyond loopback (a warning).
pub(super) fn validate_webhook_url(text: &str, insecure_http: bool) -> Result<(hyper::Uri, bool), String> {
    let url: hyper::Uri = text
        .parse()
        .map_err(|_| format!("`{}` is not a URL", crate::domain::clip(text, 128)))?;
    let Some(authority) = url.authority() else {
        return Err("must be an absolute https:// URL".to_owned());
    };
    if authority.as_str().contains('@') {
        return Err("must not hold credentials (user:password@): sign with secret_env instead".to_owned());
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("must name a host".to_owned());
    }
    let loopback = host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match url.scheme_str() {
        Some("https") => Ok((url, false)),
        Some("http") if loopback => Ok((url, false)),
        Some("http") if insecure_http => Ok((url, true)),
        Some("http") => Err(format!(
            "plain http to {host} would send notifications unencrypted: use https://, or set insecure_http = true to accept it"
        )),
        _ => Err("must start with https:// (or http:// to a loopback host)".to_owned()),
    }
}
