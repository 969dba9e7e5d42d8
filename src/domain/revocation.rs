//! Revocation: taking back access that is already out. STS credentials cannot be invalidated,
//! but IAM evaluates the role's policies on every call, so the broker keeps one inline Deny
//! policy of its own on each target role, listing the revoked sessions (`aws:userid` =
//! `<RoleId>:<session name>`) and, when the list would not fit or an operator cuts off every
//! session of a role, denying sessions issued before a time (`aws:TokenIssueTime`).
//!
//! This module builds that document from what Redis holds (never from what AWS holds), and says
//! when it does not fit.

/// The name of the inline policy the broker manages on a target role; it touches no other.
pub const DENY_POLICY_NAME: &str = "grant-broker-revocations";

/// IAM's cap on the aggregate size of a role's inline policies, whitespace not counted.
pub const MAX_ROLE_INLINE_POLICY_CHARS: usize = 10_240;
