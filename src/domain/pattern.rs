//! IAM wildcard patterns and the containment check that proves a requested scope never exceeds a
//! target's ceiling.
//!
//! Matching follows IAM's own rule for ARNs, which are split into segments by `:`: `?` matches one
//! character other than `:`; a `*` matches any run of characters other than `:`, except a `*` that
//! ends its segment (followed by `:` or by the end of the pattern), which IAM lets run across `:`
//! as well; every other character matches itself. So `log-group:app-*-prod` cannot reach
//! `log-group:app-x:log-stream:y-prod`, while `log-group:app-*` can. Action patterns
//! (`service:Action`) use the same rule: real action names have exactly one `:`, so the segmented
//! and the plain reading agree on every action that exists.
//!
//! Containment is a language question (is every string the inner pattern matches also matched by
//! the outer one?), not string comparison: `s3:Get*` is inside `s3:*`, `*` is inside nothing but
//! `*`, and `*a?` is inside `?*` although no character-by-character alignment shows it. The check
//! explores the product of the inner pattern's automaton with the determinised outer one over a
//! finite alphabet (`:`, the literals of both patterns, and one symbol standing for every other
//! character, which all behave alike), looking for a string the inner accepts and the outer
//! rejects.

use std::collections::{HashSet, VecDeque};

/// Separates the segments of an ARN; wildcards treat it specially.
const SEPARATOR: char = ':';

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `?`: one character other than `:`.
    AnyOne,
    /// A `*` inside a segment: any run of characters other than `:`.
    RunInSegment,
    /// A `*` ending a segment: any run of characters, `:` included.
    RunAcrossSegments,
}

/// A symbol of the finite alphabet: `:`, one of the patterns' literals, or `None` for "any
/// character that is not `:` and appears literally in neither pattern".
type Symbol = Option<char>;

fn tokens(pattern: &str) -> Vec<Token> {
    let mut chars = pattern.chars().peekable();
    let mut tokens = Vec::new();
    while let Some(c) = chars.next() {
        tokens.push(match c {
            '*' if matches!(chars.peek(), None | Some(&SEPARATOR)) => Token::RunAcrossSegments,
            '*' => Token::RunInSegment,
            '?' => Token::AnyOne,
            other => Token::Literal(other),
        });
    }
    tokens
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
                Some(Token::RunInSegment | Token::RunAcrossSegments) => position += 1,
                _ => break,
            }
        }
    }
    set.sort_unstable();
    set
}

fn step(pattern: &[Token], set: &[usize], symbol: Symbol) -> Vec<usize> {
    let within_segment = symbol != Some(SEPARATOR);
    let next = set.iter().filter_map(|&position| match pattern.get(position)? {
        Token::RunAcrossSegments => Some(position),
        Token::RunInSegment if within_segment => Some(position),
        Token::AnyOne if within_segment => Some(position + 1),
        Token::Literal(c) if symbol == Some(*c) => Some(position + 1),
        Token::RunInSegment | Token::AnyOne | Token::Literal(_) => None,
    });
    closure(pattern, next.collect::<Vec<_>>())
}

fn accepts(pattern: &[Token], set: &[usize]) -> bool {
    set.contains(&pattern.len())
}

/// Whether `text` matches `pattern` under IAM's segment rule (case-sensitive).
pub fn matches(pattern: &str, text: &str) -> bool {
    if !text.contains(SEPARATOR) && pattern.is_ascii() && text.is_ascii() {
        return matches_without_segments(pattern.as_bytes(), text.as_bytes());
    }
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

/// Matching for text without `:`, where IAM's segment rule reduces to plain glob matching (no
/// wildcard can meet a separator, and a literal `:` simply never matches). The classic two-pointer
/// walk, backtracking only to the most recent `*` (an earlier `*` could only match less), is
/// linear for most inputs and allocates nothing: expanding a pattern against the whole IAM
/// catalog matches it against 20,000 action names. ASCII only, so bytes are characters.
fn matches_without_segments(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // The most recent `*`, and where in the text its match currently ends.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_at, matched_to)) => {
                    // Let that `*` take one more character and try again after it.
                    star = Some((star_at, matched_to + 1));
                    p = star_at + 1;
                    t = matched_to + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
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
    // `:` is always a symbol of its own, even when neither pattern names it: wildcards treat it
    // unlike every other character, so the "any other character" symbol cannot stand for it.
    let mut alphabet: Vec<Symbol> = inner
        .iter()
        .chain(outer.iter())
        .filter_map(|token| match token {
            Token::Literal(c) => Some(Some(*c)),
            _ => None,
        })
        .chain([Some(SEPARATOR)])
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
    use std::sync::OnceLock;

    use super::*;
    use proptest::prelude::*;

    /// Independent oracle: IAM's segment rule as textbook recursive backtracking over characters,
    /// trying every length for the run a `*` takes.
    fn oracle_matches(pattern: &[char], text: &[char]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some(('*', rest)) => {
                let ends_segment = matches!(rest.first(), None | Some(':'));
                (0..=text.len())
                    .take_while(|&run| run == 0 || ends_segment || text[run - 1] != ':')
                    .any(|run| oracle_matches(rest, &text[run..]))
            }
            Some(('?', rest)) => {
                matches!(text.split_first(), Some((c, tail)) if *c != ':' && oracle_matches(rest, tail))
            }
            Some((p, rest)) => matches!(text.split_first(), Some((c, tail)) if c == p && oracle_matches(rest, tail)),
        }
    }

    /// Every string over `alphabet` of at most `max_len` characters.
    fn all_strings(alphabet: &[char], max_len: usize) -> Vec<Vec<char>> {
        let mut all = vec![Vec::new()];
        let mut frontier = vec![Vec::new()];
        for _ in 0..max_len {
            let mut next = Vec::new();
            for s in &frontier {
                for &c in alphabet {
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

    // Enumeration bounds, checked once by exhaustive search over every pair of patterns with the
    // oracle alone (a scratch program, not kept): for patterns of at most 5 symbols over
    // {a, :, *, ?}, the shortest string the inner matches and the outer does not never has more
    // than 8 characters (one pair of 1,863,225 needs 8: inner `*aaaa`, outer `???a*`, string
    // `aaacaaaa`), and enumerating up to 10 or 12 characters decides every pair as 8 does. For at
    // most 4 symbols over {a, b, :, *, ?} the longest such shortest string has 6 characters, and
    // enumerating up to 9 decides every pair as 6 does. In both, `c` appears in no pattern, so it
    // stands for every character neither pattern names.

    fn strings_over_a() -> &'static [Vec<char>] {
        static STRINGS: OnceLock<Vec<Vec<char>>> = OnceLock::new();
        STRINGS.get_or_init(|| all_strings(&['a', ':', 'c'], 8))
    }

    fn strings_over_ab() -> &'static [Vec<char>] {
        static STRINGS: OnceLock<Vec<Vec<char>>> = OnceLock::new();
        STRINGS.get_or_init(|| all_strings(&['a', 'b', ':', 'c'], 6))
    }

    fn brute_force_contained(inner: &str, outer: &str, strings: &[Vec<char>]) -> bool {
        let inner: Vec<char> = inner.chars().collect();
        let outer: Vec<char> = outer.chars().collect();
        strings
            .iter()
            .all(|s| !oracle_matches(&inner, s) || oracle_matches(&outer, s))
    }

    fn pattern_over(symbols: &[char], max_len: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(symbols.to_vec()), 0..=max_len)
            .prop_map(|chars| chars.into_iter().collect())
    }

    /// Same language, different tokens: a doubled `*` reads as one in-segment `*` followed by the
    /// original one, which is what the original `*` alone matched.
    fn double_stars(pattern: &str) -> String {
        pattern.replace('*', "**")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn containment_agrees_with_enumeration(
            inner in pattern_over(&['a', ':', '*', '?'], 5),
            outer in pattern_over(&['a', ':', '*', '?'], 5),
        ) {
            prop_assert_eq!(
                is_contained(&inner, &outer),
                brute_force_contained(&inner, &outer, strings_over_a()),
                "inner={:?} outer={:?}", inner, outer
            );
        }

        #[test]
        fn containment_agrees_with_enumeration_for_two_literals(
            inner in pattern_over(&['a', 'b', ':', '*', '?'], 4),
            outer in pattern_over(&['a', 'b', ':', '*', '?'], 4),
        ) {
            prop_assert_eq!(
                is_contained(&inner, &outer),
                brute_force_contained(&inner, &outer, strings_over_ab()),
                "inner={:?} outer={:?}", inner, outer
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn matching_agrees_with_oracle(pattern in pattern_over(&['a', 'b', ':', '*', '?'], 8), text in "[ab:c]{0,10}") {
            let p: Vec<char> = pattern.chars().collect();
            let t: Vec<char> = text.chars().collect();
            prop_assert_eq!(matches(&pattern, &text), oracle_matches(&p, &t), "pattern={:?} text={:?}", pattern, text);
        }

        // Text without `:` takes the two-pointer path: longer patterns and texts, against the oracle.
        #[test]
        fn matching_text_without_separators_agrees_with_oracle(pattern in pattern_over(&['a', 'b', ':', '*', '?'], 10), text in "[abc]{0,14}") {
            let p: Vec<char> = pattern.chars().collect();
            let t: Vec<char> = text.chars().collect();
            prop_assert_eq!(matches(&pattern, &text), oracle_matches(&p, &t), "pattern={:?} text={:?}", pattern, text);
        }

        #[test]
        fn every_pattern_contains_itself_and_is_inside_star(pattern in pattern_over(&['a', 'b', ':', '*', '?'], 8)) {
            prop_assert!(is_contained(&pattern, &pattern));
            prop_assert!(is_contained(&pattern, "*"));
            // The texts differ, so this goes through the automaton rather than the equality
            // shortcut.
            let doubled = double_stars(&pattern);
            prop_assert!(is_contained(&pattern, &doubled), "{:?} in {:?}", pattern, doubled);
            prop_assert!(is_contained(&doubled, &pattern), "{:?} in {:?}", doubled, pattern);
        }
    }

    #[test]
    fn wildcards_respect_segments() {
        assert!(matches("*", ""));
        assert!(matches("*", "a:b:c"));
        assert!(matches("a*", "ab:c"));
        assert!(matches("a*:c", "ab:x:c"));
        assert!(!matches("a*c", "ab:c"));
        assert!(!matches("a?c", "a:c"));
        assert!(matches("a?c", "abc"));
        assert!(matches("a:?:c", "a:b:c"));
        assert!(!matches("A*", "a"));
    }

    #[test]
    fn iam_examples() {
        assert!(is_contained("s3:getobject", "s3:*"));
        assert!(is_contained("s3:get*", "s3:*"));
        assert!(!is_contained("s3:*", "s3:get*"));
        assert!(!is_contained("*", "s3:*"));
        assert!(is_contained("*", "*"));
        assert!(is_contained("*:getobject", "*"));
        assert!(is_contained(
            "arn:aws:s3:::acme-logs/vendor-x/*",
            "arn:aws:s3:::acme-logs/*"
        ));
        assert!(!is_contained("arn:aws:s3:::acme-logs*", "arn:aws:s3:::acme-logs/*"));
        assert!(!is_contained("arn:aws:s3:::acme-logs", "arn:aws:s3:::acme-logs/*"));
    }

    #[test]
    fn a_mid_segment_star_stays_in_its_segment() {
        let prod_groups = "arn:aws:logs:us-east-1:123456789012:log-group:app-*-prod";
        let app_groups = "arn:aws:logs:us-east-1:123456789012:log-group:app-*";
        let stream = "arn:aws:logs:us-east-1:123456789012:log-group:app-x:log-stream:y-prod";
        assert!(!matches(prod_groups, stream));
        assert!(!is_contained(stream, prod_groups));
        assert!(is_contained(stream, app_groups));
        assert!(!is_contained(
            "arn:aws:logs:us-east-1:123456789012:log-group:app-*:log-stream:*-prod",
            prod_groups
        ));
        assert!(is_contained(
            "arn:aws:logs:us-east-1:123456789012:log-group:app-x?-prod",
            prod_groups
        ));
    }

    #[test]
    fn all_regions_fit_a_ceiling_of_the_same_text_or_wider() {
        let instances = "arn:aws:ec2:*:123456789012:instance/*";
        assert!(is_contained(instances, instances));
        assert!(is_contained(instances, "arn:aws:ec2:*:123456789012:*"));
        assert!(!is_contained(instances, "arn:aws:ec2:us-east-1:123456789012:*"));
        assert!(!is_contained(instances, "arn:aws:ec2:*:123456789012:volume/*"));
    }

    #[test]
    fn patterns_built_to_blow_up_a_subset_construction_are_decided() {
        let hostile = format!("arn:aws:s3:::acme-logs/*a{}", "?".repeat(17));
        assert!(is_contained(&hostile, "arn:aws:s3:::acme-logs/*"));
        assert!(!is_contained(&hostile, "arn:aws:s3:::acme-logs/*b*"));
        // The same shape with the runs split by `:`, so both kinds of `*` are in play.
        let hostile = format!("arn:aws:logs:*:*:log-group:*a{}:*", "?".repeat(15));
        assert!(is_contained(&hostile, "arn:aws:logs:*:*:log-group:*"));
        assert!(!is_contained(&hostile, "arn:aws:logs:*:*:log-group:*b*:*"));
        // How long this takes is measured in benches/request_access.rs (microseconds); a subset
        // construction of the inner pattern would take minutes, and nextest's slow-timeout
        // (.config/nextest.toml) fails the test rather than wait for it.
    }

    #[test]
    fn containment_that_needs_more_than_alignment() {
        // Ends in "a" plus one character: at least two characters, so inside "?*" and "*?".
        assert!(is_contained("*a?", "?*"));
        assert!(is_contained("???", "?*?"));
        assert!(!is_contained("?*", "??*"));
        // Was contained before matching respected segments: the inner's final `*` may run across
        // `:` (`aa:`), the outer's `*` is inside its segment and may not.
        assert!(!is_contained("??*", "?*?"));
        assert!(is_contained("??*", "?*"));
    }
}
