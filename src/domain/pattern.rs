//! IAM wildcard patterns: `*` matches any run of characters (including none), `?` exactly one;
//! every other character matches itself. This module decides whether one pattern is contained in
//! another, which is how the broker proves a requested scope never exceeds a target's ceiling.
//!
//! Containment is a language question (is every string the inner pattern matches also matched by
//! the outer one?), not string comparison: `s3:Get*` is inside `s3:*`, `*` is inside nothing but
//! `*`, and `*a?` is inside `?*` although no character-by-character alignment shows it. The check
//! explores the product of the inner pattern's automaton with the determinised outer one over a
//! finite alphabet (the literals of both patterns plus one symbol standing for every other
//! character, which all behave alike), looking for a string the inner accepts and the outer
//! rejects.

use std::collections::{HashSet, VecDeque};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Literal(char),
    AnyOne,
    AnyRun,
}

/// A symbol of the finite alphabet: one of the patterns' literals, or `None` for "any character
/// that appears literally in neither pattern".
type Symbol = Option<char>;

fn tokens(pattern: &str) -> Vec<Token> {
    pattern
        .chars()
        .map(|c| match c {
            '*' => Token::AnyRun,
            '?' => Token::AnyOne,
            other => Token::Literal(other),
        })
        .collect()
}

/// Above this many explored states the answer is "not contained": the broker refuses rather than
/// spend unbounded time on a hostile pattern. Real IAM patterns need a few dozen.
const STATE_LIMIT: usize = 20_000;

/// Positions of a pattern an automaton can be in, closed under skipping `*` (which may match
/// nothing). Kept sorted so equal sets compare equal.
fn closure(pattern: &[Token], positions: impl IntoIterator<Item = usize>) -> Vec<usize> {
    let mut set: Vec<usize> = Vec::new();
    for mut position in positions {
        loop {
            if !set.contains(&position) {
                set.push(position);
            }
            match pattern.get(position) {
                Some(Token::AnyRun) => position += 1,
                _ => break,
            }
        }
    }
    set.sort_unstable();
    set
}

fn step(pattern: &[Token], set: &[usize], symbol: Symbol) -> Vec<usize> {
    let next = set.iter().filter_map(|&position| match pattern.get(position)? {
        Token::AnyRun => Some(position),
        Token::AnyOne => Some(position + 1),
        Token::Literal(c) if symbol == Some(*c) => Some(position + 1),
        Token::Literal(_) => None,
    });
    closure(pattern, next.collect::<Vec<_>>())
}

fn accepts(pattern: &[Token], set: &[usize]) -> bool {
    set.contains(&pattern.len())
}

/// Whether `text` matches `pattern` (exact, case-sensitive).
pub fn matches(pattern: &str, text: &str) -> bool {
    let pattern = tokens(pattern);
    let mut set = closure(&pattern, [0]);
    for c in text.chars() {
        set = step(&pattern, &set, Some(c));
        if set.is_empty() {
            return false;
        }
    }
    accepts(&pattern, &set)
}

/// Whether every string matched by `inner` is also matched by `outer` (case-sensitive; callers
/// fold case first where IAM is case-insensitive). Returns `false` when undecided within the
/// state limit, so an answer of `true` is always a proof.
pub fn is_contained(inner: &str, outer: &str) -> bool {
    if outer == "*" || inner == outer {
        return true;
    }
    if !inner.contains(['*', '?']) {
        // A plain string: contained exactly when the outer pattern matches it.
        return matches(outer, inner);
    }
    let inner = tokens(inner);
    let outer = tokens(outer);
    let mut alphabet: Vec<Symbol> = inner
        .iter()
        .chain(outer.iter())
        .filter_map(|token| match token {
            Token::Literal(c) => Some(Some(*c)),
            _ => None,
        })
        .collect();
    alphabet.sort_unstable();
    alphabet.dedup();
    alphabet.push(None);

    // States pair one position of the inner pattern (explored as a nondeterministic automaton,
    // so caller-supplied patterns such as `*a???????` cannot blow up a subset construction) with
    // the set of positions of the outer pattern (the operator's ceiling, determinised).
    let outer_start = closure(&outer, [0]);
    let mut queue: VecDeque<(usize, Vec<usize>)> = closure(&inner, [0])
        .into_iter()
        .map(|position| (position, outer_start.clone()))
        .collect();
    let mut seen: HashSet<(usize, Vec<usize>)> = queue.iter().cloned().collect();
    while let Some((position, outer_set)) = queue.pop_front() {
        if position == inner.len() && !accepts(&outer, &outer_set) {
            return false;
        }
        for &symbol in &alphabet {
            let next_inner = step(&inner, &[position], symbol);
            if next_inner.is_empty() {
                continue;
            }
            let next_outer = step(&outer, &outer_set, symbol);
            for next_position in next_inner {
                let next = (next_position, next_outer.clone());
                if seen.contains(&next) {
                    continue;
                }
                if seen.len() >= STATE_LIMIT {
                    return false;
                }
                seen.insert(next.clone());
                queue.push_back(next);
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Independent oracle: textbook recursive glob matching.
    fn oracle_matches(pattern: &[char], text: &[char]) -> bool {
        match (pattern.first(), text.first()) {
            (None, None) => true,
            (None, Some(_)) => false,
            (Some('*'), _) => {
                oracle_matches(&pattern[1..], text) || (!text.is_empty() && oracle_matches(pattern, &text[1..]))
            }
            (Some(_), None) => false,
            (Some('?'), Some(_)) => oracle_matches(&pattern[1..], &text[1..]),
            (Some(p), Some(t)) => p == t && oracle_matches(&pattern[1..], &text[1..]),
        }
    }

    /// Every string over {a, b, c} up to `max_len` characters.
    fn all_strings(max_len: usize) -> Vec<Vec<char>> {
        let mut all = vec![Vec::new()];
        let mut frontier = vec![Vec::new()];
        for _ in 0..max_len {
            let mut next = Vec::new();
            for s in &frontier {
                for c in ['a', 'b', 'c'] {
                    let mut longer = s.clone();
                    longer.push(c);
                    next.push(longer);
                }
            }
            all.extend(next.iter().cloned());
            frontier = next;
        }
        all
    }

    fn brute_force_contained(inner: &str, outer: &str, strings: &[Vec<char>]) -> bool {
        let inner: Vec<char> = inner.chars().collect();
        let outer: Vec<char> = outer.chars().collect();
        strings
            .iter()
            .all(|s| !oracle_matches(&inner, s) || oracle_matches(&outer, s))
    }

    fn small_pattern() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!['a', 'b', '*', '?']), 0..=5)
            .prop_map(|chars| chars.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        // Patterns of at most 5 symbols over {a, b}: a string in inner\outer, if any, exists with
        // at most 8 characters, and 'c' stands for every character neither pattern names.
        #[test]
        fn containment_agrees_with_enumeration(inner in small_pattern(), outer in small_pattern()) {
            let strings = all_strings(8);
            prop_assert_eq!(
                is_contained(&inner, &outer),
                brute_force_contained(&inner, &outer, &strings),
                "inner={:?} outer={:?}", inner, outer
            );
        }

        #[test]
        fn matching_agrees_with_oracle(pattern in small_pattern(), text in "[abc]{0,7}") {
            let p: Vec<char> = pattern.chars().collect();
            let t: Vec<char> = text.chars().collect();
            prop_assert_eq!(matches(&pattern, &text), oracle_matches(&p, &t));
        }

        #[test]
        fn every_pattern_contains_itself_and_is_inside_star(pattern in small_pattern()) {
            prop_assert!(is_contained(&pattern, &pattern));
            prop_assert!(is_contained(&pattern, "*"));
        }
    }

    #[test]
    fn iam_examples() {
        assert!(is_contained("s3:getobject", "s3:*"));
        assert!(is_contained("s3:get*", "s3:*"));
        assert!(!is_contained("s3:*", "s3:get*"));
        assert!(!is_contained("*", "s3:*"));
        assert!(is_contained("*", "*"));
        assert!(is_contained(
            "arn:aws:s3:::acme-logs/vendor-x/*",
            "arn:aws:s3:::acme-logs/*"
        ));
        assert!(!is_contained("arn:aws:s3:::acme-logs*", "arn:aws:s3:::acme-logs/*"));
        assert!(!is_contained("arn:aws:s3:::acme-logs", "arn:aws:s3:::acme-logs/*"));
    }

    #[test]
    fn patterns_built_to_blow_up_a_subset_construction_are_decided() {
        let hostile = format!("arn:aws:s3:::acme-logs/*a{}", "?".repeat(17));
        assert!(is_contained(&hostile, "arn:aws:s3:::acme-logs/*"));
        assert!(!is_contained(&hostile, "arn:aws:s3:::acme-logs/*b*"));
    }

    #[test]
    fn containment_that_needs_more_than_alignment() {
        // Ends in "a" plus one character: at least two characters, so inside "?*" and "*?".
        assert!(is_contained("*a?", "?*"));
        assert!(is_contained("??*", "?*?"));
        assert!(!is_contained("?*", "??*"));
    }
}
