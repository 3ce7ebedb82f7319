//! `${NAME}` substitution in string values.
//!
//! `${NAME}` is replaced by the variable's value, several per string are
//! allowed, `$$` is a literal `$`, and any other `$` is kept as is (so SCRAM
//! secrets, which contain `$`, need no escaping). Substituted values are not
//! expanded again. Messages name variables and byte offsets, never the
//! value, since the string may be a password.

/// Why a string could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ExpandError {
    /// These variables (in order of first use, no repeats) are not set.
    Unset(Vec<String>),
    /// A `${` at this byte offset has no closing `}`.
    Unterminated(usize),
    /// The `${...}` at this byte offset does not hold a valid name.
    BadName(usize),
}

impl ExpandError {
    pub(super) fn message(&self) -> String {
        match self {
            Self::Unset(names) if names.len() == 1 => {
                format!("environment variable {} is not set", names[0])
            }
            Self::Unset(names) => {
                format!("environment variables {} are not set", names.join(", "))
            }
            Self::Unterminated(at) => {
                format!("unterminated \"${{\" at byte {at} (write \"$$\" for a literal \"$\")")
            }
            Self::BadName(at) => format!(
                "invalid environment variable name in \"${{...}}\" at byte {at}: \
                 names match [A-Za-z_][A-Za-z0-9_]* (write \"$$\" for a literal \"$\")"
            ),
        }
    }
}

/// Expands `${NAME}` and `$$` in `raw`, looking names up in `env`.
pub(super) fn expand(raw: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(raw.len());
    let mut unset: Vec<String> = Vec::new();
    let mut rest = raw;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let at = raw.len() - rest.len() + dollar;
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let close = body.find('}').ok_or(ExpandError::Unterminated(at))?;
            let name = &body[..close];
            if !is_valid_name(name) {
                return Err(ExpandError::BadName(at));
            }
            match env(name) {
                Some(value) => out.push_str(&value),
                None if !unset.iter().any(|n| n == name) => unset.push(name.to_string()),
                None => {}
            }
            rest = &body[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    if unset.is_empty() {
        Ok(out)
    } else {
        Err(ExpandError::Unset(unset))
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`
fn is_valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("one".into()),
            "_b9" => Some("two".into()),
            "REF" => Some("${A}".into()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_and_escapes() {
        assert_eq!(expand("", &env), Ok(String::new()));
        assert_eq!(expand("no vars", &env), Ok("no vars".into()));
        assert_eq!(expand("${A}", &env), Ok("one".into()));
        assert_eq!(expand("x${A}y${_b9}z${A}", &env), Ok("xoneytwozone".into()));
        assert_eq!(expand("$$", &env), Ok("$".into()));
        assert_eq!(expand("$${A}", &env), Ok("${A}".into()));
        assert_eq!(expand("$$${A}", &env), Ok("$one".into()));
        assert_eq!(expand("$$$${A}", &env), Ok("$${A}".into()));
        assert_eq!(expand("a$b$", &env), Ok("a$b$".into()));
        assert_eq!(expand("é${A}é", &env), Ok("éoneé".into()));
        assert_eq!(expand("${REF}", &env), Ok("${A}".into()));
    }

    #[test]
    fn reports_unset_and_malformed() {
        assert_eq!(expand("${X}${A}${Y}${X}", &env), Err(ExpandError::Unset(vec!["X".into(), "Y".into()])));
        assert_eq!(expand("ab${A", &env), Err(ExpandError::Unterminated(2)));
        assert_eq!(expand("${}", &env), Err(ExpandError::BadName(0)));
        assert_eq!(expand("é${9A}", &env), Err(ExpandError::BadName(2)));
        assert_eq!(expand("${A-B}", &env), Err(ExpandError::BadName(0)));
    }
}
