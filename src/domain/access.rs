//! Who may do what: the one authorization table. Every use case asks it first, with the call it
//! serves ([`Rpc`]) and, for calls that name a grant, the grant and what the call does to it
//! ([`GrantAct`]). A caller's powers come from the configuration ([`Powers`]): which targets it
//! may request, for which targets it relays approvers, whether it audits, which grants it may
//! revoke, whether it is an admin.
//!
//! The refusal rule, the same for every call: a grant a caller does not see is NOT_FOUND, word
//! for word as an id that does not exist (ids cannot be probed); one it sees but may not act on
//! is PERMISSION_DENIED with the reason.

use std::collections::BTreeSet;

use super::{Caller, Grant, Outcome};

/// For which targets a caller relays the decisions of the people it names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Relay {
    #[default]
    Never,
    /// Every target.
    Every,
    /// These targets' grants only.
    Targets(BTreeSet<String>),
}

impl Relay {
    pub fn covers(&self, target: &str) -> bool {
        match self {
            Self::Never => false,
            Self::Every => true,
            Self::Targets(targets) => targets.contains(target),
        }
    }

    pub fn relays(&self) -> bool {
        !matches!(self, Self::Never)
    }
}

/// Which grants a caller may revoke without naming an approver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Revoke {
    /// The grants it requested.
    #[default]
    Own,
    /// Any caller's (an incident tool).
    Any,
}

/// What the configuration lets a caller do, beyond requesting its targets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Powers {
    pub relay: Relay,
    /// Reads every grant and the audit log.
    pub audit: bool,
    pub revoke: Revoke,
    /// Revokes any grant, every live grant of a grantee, every session of a target; reads
    /// every grant and the audit log.
    pub admin: bool,
}

/// Every call of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rpc {
    ListTargets,
    RequestAccess,
    ExplainRequest,
    WatchGrant,
    FindGrantByAccessKey,
    ListAuditEvents,
    WatchAuditEvents,
    GetGrant,
    GetGrantHistory,
    /// This caller's own grants.
    ListGrants,
    /// Another caller's grants (a search naming another caller, or none, for everyone's).
    ListEveryonesGrants,
    /// The grants waiting for an approver (`waiting_for_approver`).
    ListApprovalQueue,
    /// The break-glass grants not yet reviewed.
    ListUnreviewedBreakGlass,
    IssueCredentials,
    CancelGrant,
    ApproveGrant,
    DenyGrant,
    ExtendGrant,
    RevokeGrant,
    RevokeGrantee,
    RevokeTargetSessions,
    ReviewGrant,
}

/// What a call does to the grant it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantAct {
    /// GetGrant, GetGrantHistory, WatchGrant, FindGrantByAccessKey.
    Read,
    /// IssueCredentials, CancelGrant, ExtendGrant: what only the requesting caller does.
    ActAsOwner,
    /// ApproveGrant, DenyGrant, ReviewGrant: a person's decision, relayed.
    Decide,
    /// RevokeGrant; `naming_a_person`: the call names the revoker (an approver it relays).
    Revoke { naming_a_person: bool },
}

/// How a caller stands toward a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// It requested the grant.
    Owner,
    /// It reads every grant (auditor, admin).
    Reader,
    /// It relays the approvers of the grant's target, and the grant is (or was) for people to
    /// decide: it waited for approvals, was break-glass, or had an extension that waited.
    Relay,
    /// None of these: the grant does not exist for it.
    Stranger,
}

/// Why a call is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The grant does not exist for this caller (NOT_FOUND, as an unknown id).
    NotFound,
    /// It sees the grant, but only the requesting caller may do this (PERMISSION_DENIED).
    NotOwner { rule: &'static str },
    /// It does not relay approvers (for this target).
    MayNotRelay,
    /// It neither audits nor administers.
    NotAuditor,
    /// It is not an admin caller.
    NotAdmin,
}

/// Whether a grant was ever for people to decide (so an approval portal may show it to them,
/// before and after they act).
fn for_people(grant: &Grant) -> bool {
    grant.decision.outcome == Outcome::RequireApproval
        || grant.decision.break_glass
        || grant
            .extensions
            .iter()
            .any(|extension| extension.decision.outcome == Outcome::RequireApproval)
}

pub fn standing(caller: &Caller, grant: &Grant) -> Standing {
    if grant.caller == caller.id {
        Standing::Owner
    } else if caller.powers.audit || caller.powers.admin {
        Standing::Reader
    } else if caller.powers.relay.covers(&grant.target) && for_people(grant) {
        Standing::Relay
    } else {
        Standing::Stranger
    }
}

/// Whether `caller` may make `rpc` at all (before any grant or target is looked at). Calls
/// that name a grant are decided on the grant too ([`check_grant`]); requests on their target.
pub fn check_call(caller: &Caller, rpc: Rpc) -> Result<(), Refusal> {
    let powers = &caller.powers;
    let allowed = match rpc {
        Rpc::ListTargets
        | Rpc::RequestAccess
        | Rpc::ExplainRequest
        | Rpc::GetGrant
        | Rpc::GetGrantHistory
        | Rpc::WatchGrant
        | Rpc::FindGrantByAccessKey
        | Rpc::ListGrants
        | Rpc::IssueCredentials
        | Rpc::CancelGrant
        | Rpc::ExtendGrant
        | Rpc::RevokeGrant => true,
        Rpc::ApproveGrant
        | Rpc::DenyGrant
        | Rpc::ReviewGrant
        | Rpc::ListApprovalQueue
        | Rpc::ListUnreviewedBreakGlass => powers.relay.relays(),
        Rpc::ListAuditEvents | Rpc::WatchAuditEvents | Rpc::ListEveryonesGrants => powers.audit || powers.admin,
        Rpc::RevokeGrantee | Rpc::RevokeTargetSessions => powers.admin,
    };
    if allowed {
        return Ok(());
    }
    Err(match rpc {
        Rpc::ApproveGrant
        | Rpc::DenyGrant
        | Rpc::ReviewGrant
        | Rpc::ListApprovalQueue
        | Rpc::ListUnreviewedBreakGlass => Refusal::MayNotRelay,
        Rpc::RevokeGrantee | Rpc::RevokeTargetSessions => Refusal::NotAdmin,
        _ => Refusal::NotAuditor,
    })
}

/// Whether `caller` may do `act` to `grant`. A decision is also the rules' (is the person
/// eligible?), a revocation naming a person too: this says only whether the caller may relay it.
pub fn check_grant(caller: &Caller, act: GrantAct, grant: &Grant) -> Result<(), Refusal> {
    let powers = &caller.powers;
    let standing = standing(caller, grant);
    // A relaying caller decides (and revokes through a person) what it sees: the grants of its
    // targets that are for people, or any it reads anyway. Others do not exist for it.
    let relays_target = powers.relay.covers(&grant.target) && (for_people(grant) || standing != Standing::Stranger);
    match act {
        GrantAct::Read => match standing {
            Standing::Stranger => Err(Refusal::NotFound),
            _ => Ok(()),
        },
        GrantAct::ActAsOwner => match standing {
            Standing::Owner => Ok(()),
            Standing::Reader | Standing::Relay => Err(Refusal::NotOwner {
                rule: "only the caller that requested it may do this",
            }),
            Standing::Stranger => Err(Refusal::NotFound),
        },
        GrantAct::Decide if relays_target => Ok(()),
        GrantAct::Decide => match standing {
            Standing::Stranger => Err(Refusal::NotFound),
            _ => Err(Refusal::MayNotRelay),
        },
        GrantAct::Revoke { .. } if standing == Standing::Owner || powers.admin || powers.revoke == Revoke::Any => {
            Ok(())
        }
        GrantAct::Revoke { naming_a_person: true } if relays_target => Ok(()),
        GrantAct::Revoke { .. } => match standing {
            Standing::Stranger => Err(Refusal::NotFound),
            _ => Err(Refusal::NotOwner {
                rule: "only the caller that requested it, an admin caller, or an approver it may be approved by may revoke it",
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::domain::{CallerId, GrantState, samples::grant};

    fn caller(id: &str, powers: Powers) -> Caller {
        Caller {
            id: CallerId::parse(id).unwrap(),
            targets: BTreeSet::new(),
            powers,
            identity: Default::default(),
            assert_people: false,
            limits: Default::default(),
            call_token: None,
        }
    }

    /// A grant of `portal` on target `t`, approved at once or waiting for people.
    fn grant_of_portal(for_people: bool) -> Grant {
        let mut grant = grant(GrantState::Approved, datetime!(2026-12-01 10:00 UTC), 3600);
        if for_people {
            grant.decision.outcome = Outcome::RequireApproval;
        }
        grant
    }

    fn relay(targets: &[&str]) -> Powers {
        Powers {
            relay: Relay::Targets(targets.iter().map(|t| (*t).to_owned()).collect()),
            ..Powers::default()
        }
    }

    #[test]
    fn the_table_for_a_grant() {
        use GrantAct::*;
        let not_owner = |r: Result<(), Refusal>| matches!(r, Err(Refusal::NotOwner { .. }));
        let owner = caller("portal", Powers::default());
        let stranger = caller("pipeline", Powers::default());
        let auditor = caller(
            "audit",
            Powers {
                audit: true,
                ..Powers::default()
            },
        );
        let admin = caller(
            "console",
            Powers {
                admin: true,
                ..Powers::default()
            },
        );
        let revoker = caller(
            "incident",
            Powers {
                revoke: super::Revoke::Any,
                ..Powers::default()
            },
        );
        let relay_t = caller("approvals", relay(&["t"]));
        let relay_other = caller("approvals", relay(&["other"]));
        for for_people in [false, true] {
            let grant = grant_of_portal(for_people);
            let check = |caller: &Caller, act| check_grant(caller, act, &grant);
            // Reading.
            assert_eq!(check(&owner, Read), Ok(()));
            assert_eq!(check(&auditor, Read), Ok(()));
            assert_eq!(check(&admin, Read), Ok(()));
            assert_eq!(check(&stranger, Read), Err(Refusal::NotFound));
            assert_eq!(check(&revoker, Read), Err(Refusal::NotFound), "revoking is not reading");
            assert_eq!(check(&relay_other, Read), Err(Refusal::NotFound));
            assert_eq!(
                check(&relay_t, Read).is_ok(),
                for_people,
                "a relay sees what its approvers decide, only that"
            );
            // Acting as the owner: those who see it are told why, the rest do not see it.
            assert_eq!(check(&owner, ActAsOwner), Ok(()));
            assert!(not_owner(check(&auditor, ActAsOwner)) && not_owner(check(&admin, ActAsOwner)));
            assert_eq!(check(&stranger, ActAsOwner), Err(Refusal::NotFound));
            assert_eq!(not_owner(check(&relay_t, ActAsOwner)), for_people);
            // Deciding: relays of the target, on what they see.
            assert_eq!(
                check(&relay_t, Decide),
                if for_people { Ok(()) } else { Err(Refusal::NotFound) }
            );
            assert_eq!(check(&relay_other, Decide), Err(Refusal::NotFound));
            assert_eq!(check(&auditor, Decide), Err(Refusal::MayNotRelay));
            assert_eq!(check(&owner, Decide), Err(Refusal::MayNotRelay));
            assert_eq!(check(&stranger, Decide), Err(Refusal::NotFound));
            // Revoking: the owner, admins, `revoke = any`, and relays through a person.
            for who in [&owner, &admin, &revoker] {
                assert_eq!(check(who, Revoke { naming_a_person: false }), Ok(()));
            }
            assert!(not_owner(check(&auditor, Revoke { naming_a_person: false })));
            assert_eq!(
                check(&relay_t, Revoke { naming_a_person: true }),
                if for_people { Ok(()) } else { Err(Refusal::NotFound) }
            );
            assert_eq!(
                not_owner(check(&relay_t, Revoke { naming_a_person: false })),
                for_people
            );
            assert_eq!(
                check(&relay_other, Revoke { naming_a_person: true }),
                Err(Refusal::NotFound)
            );
            assert_eq!(
                check(&stranger, Revoke { naming_a_person: true }),
                Err(Refusal::NotFound)
            );
        }
    }

    #[test]
    fn the_table_for_calls() {
        let plain = caller("portal", Powers::default());
        let relay = caller("approvals", relay(&["t"]));
        let auditor = caller(
            "audit",
            Powers {
                audit: true,
                ..Powers::default()
            },
        );
        let admin = caller(
            "console",
            Powers {
                admin: true,
                ..Powers::default()
            },
        );
        for rpc in [
            Rpc::ApproveGrant,
            Rpc::DenyGrant,
            Rpc::ReviewGrant,
            Rpc::ListApprovalQueue,
        ] {
            assert_eq!(check_call(&plain, rpc), Err(Refusal::MayNotRelay));
            assert_eq!(check_call(&relay, rpc), Ok(()));
            assert_eq!(
                check_call(&admin, rpc),
                Err(Refusal::MayNotRelay),
                "admins do not decide"
            );
        }
        for rpc in [Rpc::ListAuditEvents, Rpc::WatchAuditEvents, Rpc::ListEveryonesGrants] {
            assert_eq!(check_call(&plain, rpc), Err(Refusal::NotAuditor));
            assert_eq!(check_call(&relay, rpc), Err(Refusal::NotAuditor));
            assert_eq!((check_call(&auditor, rpc), check_call(&admin, rpc)), (Ok(()), Ok(())));
        }
        for rpc in [Rpc::RevokeGrantee, Rpc::RevokeTargetSessions] {
            assert_eq!(check_call(&auditor, rpc), Err(Refusal::NotAdmin));
            assert_eq!(check_call(&admin, rpc), Ok(()));
        }
        for rpc in [Rpc::ListTargets, Rpc::RequestAccess, Rpc::GetGrant, Rpc::RevokeGrant] {
            assert_eq!(check_call(&plain, rpc), Ok(()), "decided on the grant or target");
        }
    }
}
