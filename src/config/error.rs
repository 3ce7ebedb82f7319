//! The configuration's error types. Whose fault: always the operator's (the
//! file, or the environment it refers to), so every error names the key path
//! it is about, and none ever carries a password's value.

use std::fmt;

use thiserror::Error;

/// One problem in the configuration, at one key path.
///
/// `path` is empty for problems that are about the file as a whole (it cannot
/// be read, or is not valid TOML).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct ConfigError {
    /// Where: `general.workers`, `databases[1].port`, `users[0]`, or `""`.
    pub path: String,
    /// What is wrong and, where it helps, what would be right.
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { path: path.into(), message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one configuration, in the order they were found.
/// Never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The key paths of the errors, in order (handy in tests and logs).
    pub fn paths(&self) -> Vec<&str> {
        self.0.iter().map(|e| e.path.as_str()).collect()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        Self(vec![error])
    }
}

impl fmt::Display for ConfigErrors {
    /// One error per line, no trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}
