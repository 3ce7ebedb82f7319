//! JWT login: verification keys (PEM, JWKS), token validation and, for the
//! developer tools, signing.
//!
//! Verification is ring directly rather than a JWT library: a key is bound to
//! its algorithm family when it is loaded, the token's `alg` header only picks
//! among the algorithms that key allows, and every header and claim rule is
//! ours (see `validate.rs`), so there is nothing to configure around.

mod der;
pub mod identity;
pub mod keys;
pub mod sign;
pub mod validate;

pub use identity::{claim_has_value, Resolved, RoleError, RoleRules};
pub use keys::{parse_jwks, Algorithm, KeyError, KeySet, VerifyingKey};
pub use sign::SigningKey;
pub use validate::{claim_at, peek_header, validate, JwtError, Policy, Verified, MAX_TOKEN_BYTES};

#[cfg(test)]
mod tests;
