//! Human approval: who approves (a [`Person`]), what a grant needs (an [`ApprovalRequirement`]:
//! how many distinct people, from which groups), what it has (its [`Approval`]s), and whether
//! that is enough ([`ApprovalRequirement::is_met`]).
//!
//! A requirement such as `security:1, team-leads:1` means: one approver from `security` AND one
//! from `team-leads`, two distinct people. A person counts once, however many of their groups a
//! requirement names, so whether the approvals meet it is a matching of people to slots, not a
//! tally per group.

use std::collections::BTreeSet;

use time::OffsetDateTime;

use super::{FieldViolation, echo, identity::Verified};

/// A person (or a job), as a call names them (an approver, a requester) or a verified token's
/// subject claim does: a type of its own rather than a `String` that could be confused with
/// another. How it was established travels beside it ([`super::identity::Attribution`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Person(String);

/// Longest person id.
pub const MAX_PERSON_CHARS: usize = 256;

impl Person {
    pub fn parse(field: &str, text: &str) -> Result<Self, FieldViolation> {
        let len = text.chars().count();
        if len == 0 || len > MAX_PERSON_CHARS {
            return Err(FieldViolation::new(
                field,
                format!("must be 1-{MAX_PERSON_CHARS} characters, got {len}"),
            ));
        }
        if let Some(bad) = text.chars().find(|c| c.is_control() || c.is_whitespace() && *c != ' ') {
            return Err(FieldViolation::new(
                field,
                format!(
                    "{} contains U+{:04X}, which a person id may not",
                    echo(text),
                    u32::from(bad)
                ),
            ));
        }
        if super::request::has_invisible_format(text) {
            return Err(FieldViolation::new(
                field,
                "must not contain invisible formatting characters: they could make the audit trail read differently from what was sent",
            ));
        }
        Ok(Self(text.to_owned()))
    }

    /// For names the configuration or a stored record holds (checked where they were written).
    pub fn from_trusted(text: String) -> Self {
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Person {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One approval a grant received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub approver: Person,
    /// The approver's groups when they approved (groups change; the record does not).
    pub groups: BTreeSet<String>,
    pub at: OffsetDateTime,
    pub comment: String,
    /// The calling system that relayed it.
    pub caller: String,
    /// What the approver's verified token proved; `None`: asserted by the caller.
    pub verified: Option<Verified>,
}

/// A reviewer's look at a break-glass grant after the fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    pub reviewer: Person,
    pub at: OffsetDateTime,
    pub comment: String,
    /// The calling system that relayed it.
    pub caller: String,
    /// What the reviewer's verified token proved; `None`: asserted by the caller.
    pub verified: Option<Verified>,
}

/// How many approvals of which groups a grant needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalRequirement {
    /// Approvals from this many distinct eligible people, whatever their groups.
    Anyone(u32),
    /// For each group, this many distinct people from it; a person fills one slot at most.
    Groups(Vec<(String, u32)>),
}

impl Default for ApprovalRequirement {
    /// One eligible approver.
    fn default() -> Self {
        Self::Anyone(1)
    }
}

/// Most approvals a requirement may ask for in all (a bound on the matching's work).
pub const MAX_APPROVALS: u32 = 10;

impl ApprovalRequirement {
    /// Parses a rule's `@approvals("...")` annotation: `2` (two people, any group), or
    /// `security:1, team-leads:1` (groups and counts, all required).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(count) = text.parse::<u32>() {
            return Self::checked(Self::Anyone(count));
        }
        let mut groups: Vec<(String, u32)> = Vec::new();
        for part in text.split(',') {
            let Some((group, count)) = part.trim().split_once(':') else {
                return Err(format!(
                    "`{}` is not `group:count` (for example `security:1, team-leads:1`) or a number",
                    part.trim()
                ));
            };
            let group = group.trim();
            let count: u32 = count
                .trim()
                .parse()
                .map_err(|_| format!("`{}` is not a count of approvals", count.trim()))?;
            if group.is_empty() || groups.iter().any(|(seen, _)| seen == group) {
                return Err(format!("group `{group}` is empty or named twice"));
            }
            groups.push((group.to_owned(), count));
        }
        Self::checked(Self::Groups(groups))
    }

    fn checked(self) -> Result<Self, String> {
        let total = self.total();
        if total == 0 || total > MAX_APPROVALS {
            return Err(format!("must ask for 1-{MAX_APPROVALS} approvals in all, not {total}"));
        }
        if let Self::Groups(groups) = &self
            && groups.iter().any(|(_, count)| *count == 0)
        {
            return Err("a group's count must be at least 1".to_owned());
        }
        Ok(self)
    }

    /// Distinct approvers needed in all.
    pub fn total(&self) -> u32 {
        match self {
            Self::Anyone(count) => *count,
            Self::Groups(groups) => groups.iter().map(|(_, count)| count).sum(),
        }
    }

    /// Whether these approvals (one per person; later ones by the same person are ignored)
    /// meet the requirement.
    pub fn is_met(&self, approvals: &[Approval]) -> bool {
        let mut people: Vec<&Approval> = Vec::new();
        for approval in approvals {
            if !people.iter().any(|seen| seen.approver == approval.approver) {
                people.push(approval);
            }
        }
        match self {
            Self::Anyone(count) => people.len() >= usize::try_from(*count).unwrap_or(usize::MAX),
            Self::Groups(groups) => {
                // One slot per approval a group needs; fill them with distinct people.
                let slots: Vec<&str> = groups
                    .iter()
                    .flat_map(|(group, count)| {
                        std::iter::repeat_n(group.as_str(), usize::try_from(*count).unwrap_or(0))
                    })
                    .collect();
                let mut filled_by: Vec<Option<usize>> = vec![None; slots.len()];
                let matched = (0..people.len())
                    .filter(|&person| {
                        let mut visited = vec![false; slots.len()];
                        assign(person, &people, &slots, &mut filled_by, &mut visited)
                    })
                    .count();
                matched >= slots.len()
            }
        }
    }

    /// Text for people: `2 approvals` or `1 from security and 1 from team-leads`.
    pub fn describe(&self) -> String {
        match self {
            Self::Anyone(1) => "1 approval".to_owned(),
            Self::Anyone(count) => format!("{count} approvals from distinct people"),
            Self::Groups(groups) => groups
                .iter()
                .map(|(group, count)| format!("{count} from {group}"))
                .collect::<Vec<_>>()
                .join(" and "),
        }
    }

    /// The annotation form, for storage: `2` or `security:1, team-leads:1`.
    pub fn to_annotation(&self) -> String {
        match self {
            Self::Anyone(count) => count.to_string(),
            Self::Groups(groups) => groups
                .iter()
                .map(|(group, count)| format!("{group}:{count}"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// Tries to give `person` a slot of one of their groups, moving earlier people to other slots
/// where that frees one (an augmenting path). Sizes are bounded by [`MAX_APPROVALS`].
fn assign(
    person: usize,
    people: &[&Approval],
    slots: &[&str],
    filled_by: &mut [Option<usize>],
    visited: &mut [bool],
) -> bool {
    for slot in 0..slots.len() {
        if visited[slot] || !people[person].groups.contains(slots[slot]) {
            continue;
        }
        visited[slot] = true;
        let free = match filled_by[slot] {
            None => true,
            Some(other) => assign(other, people, slots, filled_by, visited),
        };
        if free {
            filled_by[slot] = Some(person);
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn approval(person: &str, groups: &[&str]) -> Approval {
        Approval {
            approver: Person::from_trusted(person.to_owned()),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            at: datetime!(2026-11-29 10:00 UTC),
            comment: String::new(),
            caller: "portal".into(),
            verified: None,
        }
    }

    #[test]
    fn requirements_parse_from_annotations_and_refuse_nonsense() {
        assert_eq!(ApprovalRequirement::parse("2"), Ok(ApprovalRequirement::Anyone(2)));
        assert_eq!(
            ApprovalRequirement::parse(" security:1, team-leads:2 "),
            Ok(ApprovalRequirement::Groups(vec![
                ("security".into(), 1),
                ("team-leads".into(), 2)
            ]))
        );
        for bad in [
            "0",
            "11",
            "security",
            "security:x",
            "security:0",
            "a:1, a:1",
            ":1",
            "a:6, b:5",
        ] {
            assert!(ApprovalRequirement::parse(bad).is_err(), "{bad}");
        }
        let requirement = ApprovalRequirement::parse("security:1, team-leads:1").unwrap();
        assert_eq!(
            ApprovalRequirement::parse(&requirement.to_annotation()),
            Ok(requirement)
        );
    }

    #[test]
    fn a_person_counts_once() {
        let two = ApprovalRequirement::Anyone(2);
        assert!(!two.is_met(&[approval("bob", &[]), approval("bob", &[])]));
        assert!(two.is_met(&[approval("bob", &[]), approval("carol", &[])]));
        assert!(!two.is_met(&[]));
    }

    #[test]
    fn every_group_must_be_satisfied_by_distinct_people() {
        let both = ApprovalRequirement::parse("security:1, team-leads:1").unwrap();
        // One person in both groups fills one slot only.
        assert!(!both.is_met(&[approval("bob", &["security", "team-leads"])]));
        assert!(!both.is_met(&[approval("bob", &["security"]), approval("carol", &["security"])]));
        assert!(both.is_met(&[approval("bob", &["security"]), approval("carol", &["team-leads"])]));
        // Needs the matching: bob could fill either slot, carol only security.
        assert!(both.is_met(&[
            approval("bob", &["security", "team-leads"]),
            approval("carol", &["security"])
        ]));
        assert!(!both.is_met(&[approval("dave", &["auditors"]), approval("erin", &["auditors"])]));
    }

    #[test]
    fn person_ids_refuse_what_would_disguise_them() {
        assert!(Person::parse("approver", "bob@example.com").is_ok());
        for bad in ["", "bob\u{202E}moc", "bob\u{200B}", "bob\nalice"] {
            assert!(Person::parse("approver", bad).is_err(), "{bad:?}");
        }
        assert!(Person::parse("approver", &"x".repeat(257)).is_err());
    }
}
