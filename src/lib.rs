//! pgwarden: a thread-per-core PostgreSQL proxy and connection pooler on
//! io_uring.
//!
//! Pure decisions live apart from the code that does I/O:
//!
//! | module | what lives there | I/O? |
//! |---|---|---|
//! | [`protocol`] | the v3 wire codec over byte slices | no |
//! | [`auth`] | SCRAM-SHA-256, md5, cleartext verification, JWT keys and validation | no |
//! | [`config`] | TOML -> validated config, every error with its key path | no (file read only) |
//! | [`route`] | host health (bans, promotion) and replica choice, for primary/replica routing | no |
//! | [`pool`] | pool slices, the global cap, checkout/release decisions | no |
//! | [`sql`] | statement inspection: a lexer, then pg_query for what it flags | no |
//! | [`session`] | startup, authentication, the relay loop, response tracking | yes, through `net` |
//! | [`net`] | sockets, owned-buffer io_uring reads and writes | yes |
//! | [`shard`] | one pinned io_uring executor per core, accept loops | yes |
//! | [`control`] | the control thread: signals and graceful shutdown | yes |
//! | [`tools`] | `pgwarden keygen` and `pgwarden token` | files only |
//!
//! Only `net` and `shard` name the runtime (monoio).

pub mod auth;
pub mod config;
pub mod control;
pub mod logging;
pub mod net;
pub mod pool;
pub mod protocol;
pub mod route;
pub mod session;
pub mod shard;
pub mod sql;
pub mod tools;
