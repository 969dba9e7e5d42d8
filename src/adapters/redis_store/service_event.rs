//! Service events as the audit log stream holds them: the `ServiceEvent` message of
//! `proto/grantbroker/storage/v1/service_event.proto`, never the domain types' JSON (which is
//! what the audit surfaces show, and may change with them).

use prost::Message as _;
use time::OffsetDateTime;

use super::stored::{self, service_event::Kind};
use crate::domain::{
    audit::{ServiceEvent, ServiceEventKind},
    revocation::DenyDrift,
};

fn nanos(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

fn time(nanos: i64) -> Result<OffsetDateTime, String> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos)).map_err(|_| format!("time {nanos} out of range"))
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn size(n: u64) -> Result<usize, String> {
    usize::try_from(n).map_err(|_| format!("count {n} out of range"))
}

fn role(target: &str, account_id: &str, role_arn: &str) -> Option<stored::TargetRole> {
    Some(stored::TargetRole {
        target: target.to_owned(),
        account_id: account_id.to_owned(),
        role_arn: role_arn.to_owned(),
    })
}

pub(super) fn encode(event: &ServiceEvent) -> Vec<u8> {
    let kind = match &event.kind {
        ServiceEventKind::RulesLoaded {
            digest,
            policies,
            sources,
        } => Kind::RulesLoaded(stored::RulesLoaded {
            digest: digest.clone(),
            policies: count(*policies),
            sources: sources.clone(),
        }),
        ServiceEventKind::AuditQueried { query, filter } => Kind::AuditQueried(stored::AuditQueried {
            query: query.clone(),
            filter: filter.clone(),
        }),
        ServiceEventKind::TargetSessionsRevoked {
            target,
            account_id,
            role_arn,
            cutoff,
            until,
            revoker,
            reason,
        } => Kind::TargetSessionsRevoked(stored::TargetSessionsRevoked {
            role: role(target, account_id, role_arn),
            cutoff: nanos(*cutoff),
            until: nanos(*until),
            revoker: revoker.clone(),
            reason: reason.clone(),
        }),
        ServiceEventKind::GranteeRevoked {
            operation,
            grantee,
            revoker,
            reason,
            examined,
            revoked,
            failed,
            truncated,
        } => Kind::GranteeRevoked(stored::GranteeRevoked {
            operation: operation.clone(),
            grantee: grantee.clone(),
            revoker: revoker.clone(),
            reason: reason.clone(),
            examined: count(*examined),
            revoked: count(*revoked),
            failed: count(*failed),
            truncated: *truncated,
        }),
        ServiceEventKind::RoleCutoffSet {
            target,
            account_id,
            role_arn,
            cutoff,
            until,
            grants,
            needed,
            available,
        } => Kind::RoleCutoffSet(stored::RoleCutoffSet {
            role: role(target, account_id, role_arn),
            cutoff: nanos(*cutoff),
            until: nanos(*until),
            grants: count(*grants),
            needed: count(*needed),
            available: count(*available),
        }),
        ServiceEventKind::RoleDenyDrifted {
            target,
            account_id,
            role_arn,
            found,
            grants,
        } => Kind::RoleDenyDrifted(stored::RoleDenyDrifted {
            role: role(target, account_id, role_arn),
            found: found.as_str().to_owned(),
            grants: count(*grants),
        }),
    };
    stored::ServiceEvent {
        at: nanos(event.at),
        caller: event.caller.clone(),
        person: event.person.as_ref().map(super::record::attribution_v3),
        kind: Some(kind),
    }
    .encode_to_vec()
}

pub(super) fn decode(bytes: &[u8]) -> Result<ServiceEvent, String> {
    let event = stored::ServiceEvent::decode(bytes).map_err(|error| format!("service event: {error}"))?;
    let role = |role: Option<stored::TargetRole>| {
        role.ok_or("a service event without its target")
            .map(|r| (r.target, r.account_id, r.role_arn))
    };
    let kind = match event.kind.ok_or("a service event of no known kind")? {
        Kind::RulesLoaded(loaded) => ServiceEventKind::RulesLoaded {
            digest: loaded.digest,
            policies: size(loaded.policies)?,
            sources: loaded.sources,
        },
        Kind::AuditQueried(queried) => ServiceEventKind::AuditQueried {
            query: queried.query,
            filter: queried.filter,
        },
        Kind::TargetSessionsRevoked(revoked) => {
            let (target, account_id, role_arn) = role(revoked.role)?;
            ServiceEventKind::TargetSessionsRevoked {
                target,
                account_id,
                role_arn,
                cutoff: time(revoked.cutoff)?,
                until: time(revoked.until)?,
                revoker: revoked.revoker,
                reason: revoked.reason,
            }
        }
        Kind::GranteeRevoked(revoked) => ServiceEventKind::GranteeRevoked {
            operation: revoked.operation,
            grantee: revoked.grantee,
            revoker: revoked.revoker,
            reason: revoked.reason,
            examined: size(revoked.examined)?,
            revoked: size(revoked.revoked)?,
            failed: size(revoked.failed)?,
            truncated: revoked.truncated,
        },
        Kind::RoleCutoffSet(set) => {
            let (target, account_id, role_arn) = role(set.role)?;
            ServiceEventKind::RoleCutoffSet {
                target,
                account_id,
                role_arn,
                cutoff: time(set.cutoff)?,
                until: time(set.until)?,
                grants: size(set.grants)?,
                needed: size(set.needed)?,
                available: size(set.available)?,
            }
        }
        Kind::RoleDenyDrifted(drifted) => {
            let (target, account_id, role_arn) = role(drifted.role)?;
            ServiceEventKind::RoleDenyDrifted {
                target,
                account_id,
                role_arn,
                found: DenyDrift::parse(&drifted.found)
                    .ok_or_else(|| format!("a drift of no known kind: {:?}", drifted.found))?,
                grants: size(drifted.grants)?,
            }
        }
    };
    Ok(ServiceEvent {
        at: time(event.at)?,
        caller: event.caller,
        person: event.person.map(super::record::attribution_from).transpose()?,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn every_kind() -> Vec<ServiceEventKind> {
        let at = datetime!(2026-12-02 10:00:01.5 UTC);
        vec![
            ServiceEventKind::RulesLoaded {
                digest: "ab".into(),
                policies: 7,
                sources: vec!["deploy/rules.cedar".into()],
            },
            ServiceEventKind::AuditQueried {
                query: "ListAuditEvents".into(),
                filter: r#"{"actor":"bob"}"#.into(),
            },
            ServiceEventKind::TargetSessionsRevoked {
                target: "prod".into(),
                account_id: "111122223333".into(),
                role_arn: "arn:aws:iam::111122223333:role/r".into(),
                cutoff: at,
                until: at + time::Duration::hours(12),
                revoker: Some("oncall".into()),
                reason: "leak".into(),
            },
            ServiceEventKind::GranteeRevoked {
                operation: "op".into(),
                grantee: "vendor-x".into(),
                revoker: None,
                reason: "compromised".into(),
                examined: 20_000,
                revoked: 999,
                failed: 1,
                truncated: true,
            },
            ServiceEventKind::RoleCutoffSet {
                target: "prod".into(),
                account_id: "111122223333".into(),
                role_arn: "arn:aws:iam::111122223333:role/r".into(),
                cutoff: at,
                until: at,
                grants: 40,
                needed: 11_000,
                available: 9_000,
            },
            ServiceEventKind::RoleDenyDrifted {
                target: "prod".into(),
                account_id: "111122223333".into(),
                role_arn: "arn:aws:iam::111122223333:role/r".into(),
                found: DenyDrift::Changed,
                grants: 3,
            },
        ]
    }

    #[test]
    fn every_service_event_reads_back_as_written() {
        for kind in every_kind() {
            let event = ServiceEvent {
                at: datetime!(2026-12-02 10:00:00.123456789 UTC),
                caller: "security-console".into(),
                kind,
                person: None,
            };
            assert_eq!(decode(&encode(&event)).unwrap(), event);
        }
    }

    /// The stored bytes are the format: this one is pinned.
    #[test]
    fn a_stored_service_event_is_frozen() {
        let event = ServiceEvent {
            at: datetime!(2026-12-02 10:00:00 UTC),
            caller: "grant-broker".into(),
            kind: ServiceEventKind::AuditQueried {
                query: "Q".into(),
                filter: "{}".into(),
            },
            person: None,
        };
        assert_eq!(
            hex::encode(encode(&event)),
            // at (field 1, varint), caller (2), audit_queried (11) { query (1), filter (2) }
            "088080c5dc9fefd9f618120c6772616e742d62726f6b65725a070a015112027b7d"
        );
        assert_eq!(
            decode(&hex::decode("0801").unwrap()).unwrap_err(),
            "a service event of no known kind"
        );
    }
}
