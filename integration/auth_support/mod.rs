//! Test support shared by integration tests: a throwaway PostgreSQL server
//! ([`pg`]), the client half of login ([`wire`]) and its server half
//! ([`login_server`]). None depends on the crate under test.
// Each test binary compiles all of it and uses a part.
#![allow(dead_code)]

pub mod login_server;
pub mod pg;
pub mod wire;
