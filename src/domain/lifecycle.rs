//! The grant's life cycle as one state machine (shared/design/LIFECYCLE.md): which transition is
//! allowed from which state, and where it leads. Every use case that changes a grant's state asks
//! [`Transition::from`] first, and the store then writes the change with one compare-and-set on
//! exactly the states this table allows, so a transition that lost a race to another one is
//! refused there too, whichever broker replica ran it.
//!
//! Final states (DENIED, CANCELLED, EXPIRED, REVOKED) never change again.

use super::GrantState;

/// A change of a grant's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// An approval that does not yet meet the quorum: the grant stays pending.
    RecordApproval,
    /// The approval that meets the quorum.
    Approve,
    /// An eligible approver refuses.
    Deny,
    /// The requesting caller withdraws the grant.
    Cancel,
    /// A pending request timed out, or an approved window ended.
    Expire,
    /// Taken back by the caller, an approver or an admin.
    Revoke,
    /// The caller asks for more time (decided by the rules at once, or left waiting).
    RequestExtension,
    /// An approval of the waiting extension that does not yet meet its quorum.
    RecordExtensionApproval,
    /// The extension is approved (at once, or by the approval that meets its quorum): the
    /// window's end moves.
    Extend,
    /// An eligible approver refuses the waiting extension; the grant stays approved.
    DenyExtension,
}

/// A transition the grant's state does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAllowed {
    pub transition: Transition,
    pub state: GrantState,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RecordApproval => "record an approval on",
            Self::Approve => "approve",
            Self::Deny => "deny",
            Self::Cancel => "cancel",
            Self::Expire => "expire",
            Self::Revoke => "revoke",
            Self::RequestExtension => "extend",
            Self::RecordExtensionApproval => "record an extension approval on",
            Self::Extend => "approve an extension of",
            Self::DenyExtension => "deny an extension of",
        }
    }

    /// The stored states this transition may start from.
    pub fn allowed_from(self) -> &'static [GrantState] {
        use GrantState::*;
        match self {
            Self::RecordApproval | Self::Approve | Self::Deny => &[PendingApproval],
            Self::Cancel | Self::Expire | Self::Revoke => &[PendingApproval, Approved],
            Self::RequestExtension | Self::RecordExtensionApproval | Self::Extend | Self::DenyExtension => &[Approved],
        }
    }

    /// Where it leads: `None` keeps the state (an approval short of the quorum).
    pub fn to(self) -> Option<GrantState> {
        match self {
            Self::RecordApproval
            | Self::RequestExtension
            | Self::RecordExtensionApproval
            | Self::Extend
            | Self::DenyExtension => None,
            Self::Approve => Some(GrantState::Approved),
            Self::Deny => Some(GrantState::Denied),
            Self::Cancel => Some(GrantState::Cancelled),
            Self::Expire => Some(GrantState::Expired),
            Self::Revoke => Some(GrantState::Revoked),
        }
    }

    /// Checks the transition against the grant's state as callers see it now (a grant whose
    /// window has ended reads as expired, and can only expire).
    pub fn from(self, state_now: GrantState) -> Result<Option<GrantState>, NotAllowed> {
        let allowed = self.allowed_from().contains(&state_now)
            // An approved or pending grant past its end reads as expired: recording that is the
            // one transition still open to it.
            || (self == Self::Expire && state_now == GrantState::Expired);
        if allowed {
            Ok(self.to())
        } else {
            Err(NotAllowed {
                transition: self,
                state: state_now,
            })
        }
    }
}

impl std::fmt::Display for NotAllowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let from: Vec<&str> = self.transition.allowed_from().iter().map(|s| s.as_str()).collect();
        write!(
            f,
            "cannot {} a grant that is {}: only one that is {}",
            self.transition.as_str(),
            self.state.as_str(),
            from.join(" or ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Transition; 10] = [
        Transition::RecordApproval,
        Transition::Approve,
        Transition::Deny,
        Transition::Cancel,
        Transition::Expire,
        Transition::Revoke,
        Transition::RequestExtension,
        Transition::RecordExtensionApproval,
        Transition::Extend,
        Transition::DenyExtension,
    ];

    #[test]
    fn final_states_never_change() {
        for state in [GrantState::Denied, GrantState::Cancelled, GrantState::Revoked] {
            for transition in ALL {
                assert!(transition.from(state).is_err(), "{transition:?} from {state:?}");
            }
        }
        for transition in ALL {
            assert_eq!(
                transition.from(GrantState::Expired).is_ok(),
                transition == Transition::Expire,
                "{transition:?}"
            );
        }
    }

    #[test]
    fn the_table_is_the_design() {
        let allowed: Vec<(Transition, GrantState, Option<GrantState>)> = ALL
            .iter()
            .flat_map(|&t| {
                GrantState::ALL
                    .iter()
                    .filter(|&&s| s != GrantState::Expired)
                    .filter_map(move |&s| t.from(s).ok().map(|to| (t, s, to)))
            })
            .collect();
        use GrantState::*;
        assert_eq!(
            allowed,
            [
                (Transition::RecordApproval, PendingApproval, None),
                (Transition::Approve, PendingApproval, Some(Approved)),
                (Transition::Deny, PendingApproval, Some(Denied)),
                (Transition::Cancel, PendingApproval, Some(Cancelled)),
                (Transition::Cancel, Approved, Some(Cancelled)),
                (Transition::Expire, PendingApproval, Some(Expired)),
                (Transition::Expire, Approved, Some(Expired)),
                (Transition::Revoke, PendingApproval, Some(Revoked)),
                (Transition::Revoke, Approved, Some(Revoked)),
                (Transition::RequestExtension, Approved, None),
                (Transition::RecordExtensionApproval, Approved, None),
                (Transition::Extend, Approved, None),
                (Transition::DenyExtension, Approved, None),
            ]
        );
    }

    #[test]
    fn a_refusal_names_the_state_and_what_was_needed() {
        let refused = Transition::Cancel.from(GrantState::Denied).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "cannot cancel a grant that is denied: only one that is pending_approval or approved"
        );
    }
}
