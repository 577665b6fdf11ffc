//! Owners as STS's SourceIdentity and as session tag values, without two owners ever becoming
//! one.
//!
//! Both have restricted character sets and lengths. Replacing what does not fit with `_` made
//! `a"b`, `a}b` and `a b` all `a_b` (one person in CloudTrail, and one ABAC principal), and an
//! owner shorter than SourceIdentity's two characters was dropped. Here every character
//! outside the set, and the escape character `=` itself, is written `=XX` per UTF-8 byte, so
//! the encoding can be read back and two different owners never share one. A value too short
//! gets `==`, and one too long is cut and ends in `==` and a SHA-256 prefix of the whole
//! value: `==` never occurs in an escaped value (`=` is always followed by two hex digits).

use aws_lc_rs::digest::{SHA256, digest};

/// SourceIdentity: 2–64 of `[\w+=,.@-]`.
pub(crate) fn source_identity(owner: &str) -> String {
    encode(owner, 2, 64, |c| {
        c.is_ascii_alphanumeric() || "_+,.@-".contains(c)
    })
}

/// A session tag value: up to 256 letters, digits, spaces and `_.:/=+-@`.
pub(crate) fn tag_value(value: &str) -> String {
    encode(value, 0, 256, |c| {
        (c.is_alphanumeric() || c == ' ' || "_.:/+-@".contains(c)) && c != '='
    })
}

fn encode(value: &str, min: usize, max: usize, keep: fn(char) -> bool) -> String {
    let mut out = String::with_capacity(value.len());
    let mut buf = [0u8; 4];
    for c in value.chars() {
        if keep(c) {
            out.push(c);
        } else {
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("={b:02X}"));
            }
        }
    }
    if out.chars().count() > max {
        let hash = digest(&SHA256, value.as_bytes());
        let hex = hex::encode(&hash.as_ref()[..9]);
        let room = max - 2 - hex.len();
        let mut cut: String = out.chars().take(room).collect();
        // Never end inside an escape: drop a partial `=X`.
        while let Some(i) = cut.rfind('=') {
            if cut.len() - i < 3 {
                cut.truncate(i);
            } else {
                break;
            }
        }
        out = format!("{cut}=={hex}");
    } else if out.chars().count() < min {
        out.push_str("==");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The review's collisions: after cleaning, distinct owners were one.
    #[test]
    fn distinct_owners_stay_distinct() {
        let owners = [
            "a\"b", "a}b", "a b", "a_b", "a=b", "a=22b", "a", "ab", "é", "e",
        ];
        let ids: Vec<String> = owners.iter().map(|o| source_identity(o)).collect();
        let tags: Vec<String> = owners.iter().map(|o| tag_value(o)).collect();
        for set in [&ids, &tags] {
            let unique: std::collections::BTreeSet<&String> = set.iter().collect();
            assert_eq!(unique.len(), owners.len(), "{set:?}");
        }
        assert_eq!(source_identity("alice@example.com"), "alice@example.com");
        assert_eq!(source_identity("a b"), "a=20b");
        assert_eq!(source_identity("a"), "a==");
        assert_eq!(tag_value("a b"), "a b");
        assert_eq!(tag_value("a=b"), "a=3Db");
    }

    #[test]
    fn every_encoding_fits_sts() {
        let long = "x\"".repeat(100);
        for o in ["", "a", &long, &"é".repeat(300), "alice@example.com"] {
            let s = source_identity(o);
            assert!((2..=64).contains(&s.len()), "{s:?}");
            assert!(
                s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)),
                "{s:?}"
            );
            let t = tag_value(o);
            assert!(t.chars().count() <= 256, "{t:?}");
        }
        // Two long owners that share their first 64 characters are still two.
        let a = format!("{}a", "y".repeat(80));
        let b = format!("{}b", "y".repeat(80));
        assert_ne!(source_identity(&a), source_identity(&b));
    }
}
