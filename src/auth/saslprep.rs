//! SASLprep (RFC 4013) of passwords, the way PostgreSQL does it.
//!
//! A SCRAM secret is derived from the *prepared* password, so a client and a
//! server must prepare the same way or a correct non-ASCII password fails.
//! PostgreSQL (`pg_saslprep` in src/common/saslprep.c, and its callers in
//! libpq and the backend) differs from a textbook SASLprep in three ways that
//! we copy:
//!
//! - pure ASCII is used as is, without even the control-character check;
//! - a password that is not UTF-8, that maps to nothing, or that contains a
//!   prohibited or unassigned code point, or breaks the bidi rules, is not an
//!   error: the caller falls back to the raw bytes;
//! - the prohibited, unassigned and bidi checks run on the *mapped* string,
//!   before normalization.
//!
//! Normalization (NFKC) comes from the `stringprep` crate's SASLprep run on
//! the already-checked mapped string. That run checks the normalized output
//! as well; the rare password that passes PostgreSQL's pre-normalization
//! checks yet fails after NFKC then falls back to raw bytes here where
//! PostgreSQL would use the normalized form. Unicode table versions may also
//! differ at the margins. Both affect only exotic passwords.

use std::borrow::Cow;

use stringprep::tables;

/// The bytes to feed to PBKDF2 for `password`: its SASLprep form when it has
/// one, else the raw bytes, as PostgreSQL's client and server both do.
pub(crate) fn prepare_password(password: &[u8]) -> Cow<'_, [u8]> {
    match pg_saslprep(password) {
        Some(Cow::Borrowed(s)) => Cow::Borrowed(s.as_bytes()),
        Some(Cow::Owned(s)) => Cow::Owned(s.into_bytes()),
        None => Cow::Borrowed(password),
    }
}

/// `pg_saslprep`: the prepared password, or `None` where PostgreSQL reports
/// invalid UTF-8 or a prohibited password.
fn pg_saslprep(password: &[u8]) -> Option<Cow<'_, str>> {
    let text = std::str::from_utf8(password).ok()?;
    if text.is_ascii() {
        return Some(Cow::Borrowed(text));
    }
    let mapped = map(text);
    if mapped.is_empty() || mapped.chars().any(prohibited) || violates_bidi(&mapped) {
        return None;
    }
    let normalized = stringprep::saslprep(&mapped).ok()?;
    Some(Cow::Owned(normalized.into_owned()))
}

/// RFC 4013 step 1: non-ASCII spaces become U+0020, the "commonly mapped to
/// nothing" characters (RFC 3454 B.1) disappear.
fn map(text: &str) -> String {
    text.chars()
        .filter(|&c| !tables::commonly_mapped_to_nothing(c))
        .map(|c| if tables::non_ascii_space_character(c) { ' ' } else { c })
        .collect()
}

/// RFC 4013 step 3 (tables C.1.2 to C.9) and RFC 3454 A.1 (unassigned).
fn prohibited(c: char) -> bool {
    tables::non_ascii_space_character(c)
        || tables::ascii_control_character(c)
        || tables::non_ascii_control_character(c)
        || tables::private_use(c)
        || tables::non_character_code_point(c)
        || tables::surrogate_code(c)
        || tables::inappropriate_for_plain_text(c)
        || tables::inappropriate_for_canonical_representation(c)
        || tables::change_display_properties_or_deprecated(c)
        || tables::tagging_character(c)
        || tables::unassigned_code_point(c)
}

/// RFC 3454 section 6: with any RandALCat character there must be no LCat
/// character, and the string must start and end with RandALCat.
fn violates_bidi(text: &str) -> bool {
    if !text.chars().any(tables::bidi_r_or_al) {
        return false;
    }
    let first = text.chars().next().is_some_and(tables::bidi_r_or_al);
    let last = text.chars().next_back().is_some_and(tables::bidi_r_or_al);
    text.chars().any(tables::bidi_l) || !first || !last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prep(s: &str) -> Vec<u8> {
        prepare_password(s.as_bytes()).into_owned()
    }

    #[test]
    fn ascii_is_used_as_is_even_with_controls() {
        assert_eq!(prep("pencil"), b"pencil");
        assert_eq!(prep("tab\there"), b"tab\there");
        assert_eq!(prep(""), b"");
    }

    #[test]
    fn maps_spaces_and_removes_soft_hyphen() {
        assert_eq!(prep("a\u{00A0}b\u{00AD}c"), "a bc".as_bytes());
    }

    #[test]
    fn normalizes_nfkc() {
        assert_eq!(prep("\u{FB01}x"), b"fix");
        assert_eq!(prep("\u{2168}"), b"IX");
    }

    #[test]
    fn falls_back_to_raw_bytes() {
        let invalid_utf8 = [0x66, 0xff, 0x66];
        assert_eq!(prepare_password(&invalid_utf8).as_ref(), &invalid_utf8);
        // Maps to nothing: PostgreSQL refuses an empty prepared password.
        assert_eq!(prep("\u{00AD}"), "\u{00AD}".as_bytes());
        // Private use.
        assert_eq!(prep("a\u{E000}"), "a\u{E000}".as_bytes());
        // U+0340 is prohibited before NFKC maps it to U+0300: PostgreSQL
        // checks the mapped string, so the raw bytes win.
        assert_eq!(prep("\u{00E9}\u{0340}"), "\u{00E9}\u{0340}".as_bytes());
        // Mixed right-to-left and left-to-right text.
        assert_eq!(prep("\u{05D0}a\u{05D0}"), "\u{05D0}a\u{05D0}".as_bytes());
    }

    #[test]
    fn right_to_left_password_is_prepared() {
        assert_eq!(prep("\u{05D0}\u{05D1}"), "\u{05D0}\u{05D1}".as_bytes());
    }
}
