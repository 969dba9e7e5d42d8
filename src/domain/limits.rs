//! The AssumeRole input limits from the STS API (see shared/design/AWS-FACTS.md). STS rejects some
//! violations and the local emulator none, so the broker checks every one itself before calling
//! AWS, and sanitises the free-text values it passes on (requester, tags).

/// Shortest session STS issues.
pub const MIN_DURATION_SECS: u64 = 900;
/// Longest session STS issues for any role.
pub const MAX_DURATION_SECS: u64 = 43_200;
/// Longest session when the broker's own credentials are a role session (role chaining).
pub const ROLE_CHAINING_MAX_DURATION_SECS: u64 = 3_600;
/// Plaintext size limit of the inline session policy.
pub const MAX_SESSION_POLICY_CHARS: usize = 2_048;
pub const MAX_TAG_VALUE_CHARS: usize = 256;

/// `\w` in the AWS documentation's patterns: ASCII letters, digits and underscore.
fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn check_len(value: &str, min: usize, max: usize) -> Result<(), String> {
    let len = value.chars().count();
    if len < min || len > max {
        return Err(format!("must be {min}-{max} characters, got {len}"));
    }
    Ok(())
}

fn check_charset(value: &str, allowed: impl Fn(char) -> bool, described: &str) -> Result<(), String> {
    match value.chars().find(|c| !allowed(*c)) {
        Some(bad) => Err(format!("contains {bad:?}; allowed: {described}")),
        None => Ok(()),
    }
}

/// RoleSessionName: 2-64 characters of `[\w+=,.@-]`.
pub fn check_session_name(value: &str) -> Result<(), String> {
    check_len(value, 2, 64)?;
    check_charset(
        value,
        |c| is_word(c) || "+=,.@-".contains(c),
        "letters, digits and _+=,.@-",
    )
}

/// SourceIdentity: 2-256 characters of `[\w+=,.@-]`, not starting with `aws:`.
pub fn check_source_identity(value: &str) -> Result<(), String> {
    check_len(value, 2, 256)?;
    check_charset(
        value,
        |c| is_word(c) || "+=,.@-".contains(c),
        "letters, digits and _+=,.@-",
    )?;
    if value.to_ascii_lowercase().starts_with("aws:") {
        return Err("must not start with `aws:`".to_owned());
    }
    Ok(())
}

/// ExternalId: 2-1224 characters of `[\w+=,.@:/-]`.
pub fn check_external_id(value: &str) -> Result<(), String> {
    check_len(value, 2, 1224)?;
    check_charset(
        value,
        |c| is_word(c) || "+=,.@:/-".contains(c),
        "letters, digits and _+=,.@:/-",
    )
}

/// MFA device serial number or ARN: 9-256 characters of `[\w+=/:,.@-]`.
pub fn check_mfa_serial(value: &str) -> Result<(), String> {
    check_len(value, 9, 256)?;
    check_charset(
        value,
        |c| is_word(c) || "+=/:,.@-".contains(c),
        "letters, digits and _+=/:,.@-",
    )
}

/// MFA token code: exactly six digits.
pub fn check_mfa_code(value: &str) -> Result<(), String> {
    if value.len() != 6 || !value.chars().all(|c| c.is_ascii_digit()) {
        return Err("must be exactly 6 digits".to_owned());
    }
    Ok(())
}

/// Session tag key or value characters: `[\p{L}\p{Z}\p{N}_.:/=+\-@]`. The broker keeps to the
/// ASCII subset so the packed size stays predictable.
fn is_tag_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == ' ' || "_.:/=+-@".contains(c)
}

/// Checks a session tag value (0-256 characters of the tag charset).
pub fn check_tag_value(value: &str) -> Result<(), String> {
    check_len(value, 0, MAX_TAG_VALUE_CHARS)?;
    check_charset(value, is_tag_char, "letters, digits, spaces and _.:/=+-@")
}

/// Turns free text into a valid tag value: disallowed characters become `_`, and the value is
/// cut to 256 characters.
pub fn sanitize_tag_value(value: &str) -> String {
    value
        .chars()
        .map(|c| if is_tag_char(c) { c } else { '_' })
        .take(MAX_TAG_VALUE_CHARS)
        .collect()
}

/// Turns a requester id into a SourceIdentity: disallowed characters become `_` (so `aws:`
/// can never survive), cut to 256 characters. `None` when fewer than two characters remain.
pub fn source_identity_for(requester: &str) -> Option<String> {
    let sanitized: String = requester
        .chars()
        .map(|c| if is_word(c) || "+=,.@-".contains(c) { c } else { '_' })
        .take(256)
        .collect();
    check_source_identity(&sanitized).ok().map(|()| sanitized)
}

/// Whether a session policy's plaintext fits STS's size and character limits.
pub fn check_session_policy(policy: &str) -> Result<(), String> {
    let len = policy.chars().count();
    if len > MAX_SESSION_POLICY_CHARS {
        return Err(format!(
            "the session policy built from these scopes is {len} characters; STS allows at most {MAX_SESSION_POLICY_CHARS}: request fewer or broader scopes"
        ));
    }
    check_charset(
        policy,
        |c| matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{ff}'),
        "tab, newline and U+0020-U+00FF",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn limits_name_what_is_wrong() {
        assert_eq!(check_session_name("a").unwrap_err(), "must be 2-64 characters, got 1");
        assert!(check_session_name("gb-0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b").is_ok());
        assert!(check_session_name("has space").unwrap_err().contains("' '"));
        assert_eq!(
            check_source_identity("aws:me").unwrap_err(),
            "contains ':'; allowed: letters, digits and _+=,.@-"
        );
        assert_eq!(check_source_identity("AWS-ok").map_err(|e| e.to_string()), Ok(()));
        assert_eq!(check_external_id("x").unwrap_err(), "must be 2-1224 characters, got 1");
        assert_eq!(
            check_external_id("acme vendor").unwrap_err(),
            "contains ' '; allowed: letters, digits and _+=,.@:/-"
        );
        assert!(check_external_id("acme:vendor/42").is_ok());
        assert!(check_mfa_serial("arn:aws:iam::123456789012:mfa/alice").is_ok());
        assert_eq!(
            check_mfa_serial("short").unwrap_err(),
            "must be 9-256 characters, got 5"
        );
        assert_eq!(check_mfa_code("12345").unwrap_err(), "must be exactly 6 digits");
        assert_eq!(check_mfa_code("12a456").unwrap_err(), "must be exactly 6 digits");
        assert!(check_mfa_code("123456").is_ok());
    }

    #[test]
    fn policy_limits() {
        assert!(check_session_policy(&"x".repeat(2048)).is_ok());
        assert!(
            check_session_policy(&"x".repeat(2049))
                .unwrap_err()
                .contains("2049 characters")
        );
        assert!(check_session_policy("caf\u{e9}").is_ok());
        assert!(check_session_policy("\u{263a}").unwrap_err().contains("U+0020-U+00FF"));
    }

    proptest! {
        #[test]
        fn sanitized_values_are_always_valid(text in "\\PC{0,300}") {
            prop_assert!(check_tag_value(&sanitize_tag_value(&text)).is_ok());
            if let Some(identity) = source_identity_for(&text) {
                prop_assert!(check_source_identity(&identity).is_ok());
            } else {
                prop_assert!(text.chars().count() < 2);
            }
        }
    }
}
