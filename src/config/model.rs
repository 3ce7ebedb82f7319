//! The validated configuration: plain data, every default filled in, every
//! value checked. Built only by [`super::parse`]; the runtime builds its
//! snapshots from it.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::auth::jwt::Algorithm;

use super::walk::Choice;

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub general: General,
    /// At least one; names are unique.
    pub databases: Vec<Database>,
    /// Names are unique; may be empty when `jwt` is set.
    pub users: Vec<User>,
    /// `[jwt]`: token logins; `None` when the section is absent.
    pub jwt: Option<Jwt>,
    /// `[tls]`: TLS for clients; `None` when the section is absent.
    pub tls: Option<Tls>,
}

/// `[tls]`: TLS termination for client connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key of the leaf certificate.
    pub key_file: PathBuf,
    pub client_tls: ClientTls,
}

/// Whether clients may, or must, use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientTls {
    /// SSLRequest is answered `N`.
    Disabled,
    /// Clients choose.
    Allowed,
    /// A client that does not start TLS is refused (CancelRequest aside).
    Required,
}

impl Config {
    /// The pool size for `user`'s pools: its own `pool_size`, else
    /// `general.default_pool_size`.
    pub fn pool_size(&self, user: &User) -> u32 {
        user.pool_size.unwrap_or(self.general.default_pool_size)
    }

    /// The pool mode for `user`: its own `pool_mode`, else `general.pool_mode`.
    pub fn pool_mode(&self, user: &User) -> PoolMode {
        user.pool_mode.unwrap_or(self.general.pool_mode)
    }

    /// The (first) database entry clients know as `name`.
    pub fn database(&self, name: &str) -> Option<&Database> {
        self.databases.iter().find(|d| d.name == name)
    }

    /// Who the health check logs in as, and with which password:
    /// `healthcheck_user`, else the first `[[users]]` entry's server role,
    /// else `jwt.server_user`.
    pub fn healthcheck_login(&self) -> Option<(String, Option<String>)> {
        let g = &self.general;
        if let Some(u) = &g.healthcheck_user {
            return Some((u.clone(), g.healthcheck_password.clone()));
        }
        if let Some(u) = self.users.first() {
            return Some((u.server_user.clone(), u.server_password.clone()));
        }
        let j = self.jwt.as_ref()?;
        Some((j.server_user.clone()?, j.server_password.clone()))
    }

    /// Whether any database has more than one entry (a primary and
    /// replicas), so that host health is checked.
    pub fn has_clusters(&self) -> bool {
        self.databases
            .iter()
            .enumerate()
            .any(|(i, d)| d.role != DbRole::Primary || self.databases[..i].iter().any(|e| e.name == d.name))
    }

    /// The user clients log in as `name`.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }
}

/// `[general]`: process-wide settings. See `config/pgwarden.toml` for what
/// each one does and why you would change it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct General {
    pub listen: SocketAddr,
    /// Also accept clients on a Unix-domain socket in this directory
    /// (`DIR/.s.PGSQL.PORT`, PORT being `listen`'s), as PgBouncer's
    /// `unix_socket_dir` does.
    pub unix_socket_dir: Option<String>,
    /// Data shards (one io_uring executor per core); `"auto"` resolved.
    pub workers: usize,
    /// Pin each shard's thread to one CPU (right for dedicated hosts; on a
    /// box shared with Postgres and clients, unpinned threads can dodge busy
    /// cores).
    pub pin_workers: bool,
    pub pool_mode: PoolMode,
    pub default_pool_size: u32,
    pub checkout_timeout_ms: u64,
    pub server_connect_timeout_ms: u64,
    /// 0 = never.
    pub server_idle_timeout_ms: u64,
    /// 0 = never.
    pub server_lifetime_ms: u64,
    pub client_login_timeout_ms: u64,
    pub shutdown_timeout_ms: u64,
    pub max_message_size: u32,
    pub max_client_connections: u32,
    /// Per server connection; 0 disables prepared statement tracking.
    pub prepared_statements_cache_size: u32,
    /// The default for users that do not set `auth`.
    pub auth_method: AuthMethod,
    pub log_level: LogLevel,
    /// Primary and replicas: how often, and how patiently, the control
    /// thread checks each host of a database with more than one entry.
    pub healthcheck_interval_ms: u64,
    pub healthcheck_timeout_ms: u64,
    /// A replica lagging more than this is banned; 0: lag is not checked.
    pub max_replica_lag_ms: u64,
    /// How long a failed or lagging host gets no new transactions.
    pub ban_time_ms: u64,
    pub load_balancing: LoadBalancing,
    /// Send read-only transactions to replicas.
    pub read_write_split: bool,
    pub primary_reads: PrimaryReads,
    pub read_only_fallback: ReadOnlyFallback,
    /// Who the health check logs in as; `None`: the first `[[users]]`
    /// entry's server user, else `jwt.server_user`.
    pub healthcheck_user: Option<String>,
    pub healthcheck_password: Option<String>,
}

/// How reads are spread over healthy replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoadBalancing {
    RoundRobin,
    Random,
    /// The replica this shard has the fewest connections lent out to.
    LeastConnections,
}

/// Whether the primary also serves reads that could go to a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrimaryReads {
    /// The primary is one more read target.
    Include,
    /// Reads go to replicas only; with none healthy they fail (57P03).
    Exclude,
    /// Reads go to replicas, and to the primary when none is healthy.
    Fallback,
}

/// Where read-only users go when no replica is healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReadOnlyFallback {
    /// Refuse with 57P03: no replica is available.
    Error,
    /// The primary, with the read-only enforcement of JWT read-only users.
    Primary,
}

/// What a `[[databases]]` entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DbRole {
    Primary,
    Replica,
    /// Asked with `pg_is_in_recovery()` by the health check.
    Auto,
}

impl Default for General {
    /// The documented defaults (`workers` resolved as for `"auto"`).
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 6432)),
            unix_socket_dir: None,
            workers: auto_workers(),
            pool_mode: PoolMode::Transaction,
            default_pool_size: 20,
            checkout_timeout_ms: 5_000,
            server_connect_timeout_ms: 5_000,
            server_idle_timeout_ms: 600_000,
            server_lifetime_ms: 3_600_000,
            client_login_timeout_ms: 15_000,
            shutdown_timeout_ms: 30_000,
            max_message_size: 1 << 30,
            max_client_connections: 10_000,
            prepared_statements_cache_size: 500,
            pin_workers: true,
            auth_method: AuthMethod::ScramSha256,
            log_level: LogLevel::Info,
            healthcheck_interval_ms: 5_000,
            healthcheck_timeout_ms: 3_000,
            max_replica_lag_ms: 10_000,
            ban_time_ms: 30_000,
            load_balancing: LoadBalancing::RoundRobin,
            read_write_split: true,
            primary_reads: PrimaryReads::Include,
            read_only_fallback: ReadOnlyFallback::Error,
            healthcheck_user: None,
            healthcheck_password: None,
        }
    }
}

/// Most data shards `workers` may ask for.
pub const MAX_WORKERS: u16 = 1024;

/// What `workers = "auto"` means: one shard per available core (at most
/// [`MAX_WORKERS`]).
pub fn auto_workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get).min(usize::from(MAX_WORKERS))
}

/// `[[databases]]`: a database clients may name, and where it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Database {
    /// The name clients connect to.
    pub name: String,
    pub host: String,
    pub port: u16,
    /// The name on the server; defaults to `name`.
    pub database_name: String,
    /// Entries sharing a `name` form one cluster: a primary and replicas.
    pub role: DbRole,
}

/// `[[users]]`: a user clients may log in as, and the role it uses on the
/// server. `Debug` shows no password.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// Plaintext, `SCRAM-SHA-256$...` or `md5<32 hex>`; `None` only with
    /// `auth = "trust"`. See [`super::PasswordKind`].
    pub password: Option<String>,
    /// Key `auth`; defaults to `general.auth_method`.
    pub auth_method: AuthMethod,
    /// The role on the server; defaults to `name`.
    pub server_user: String,
    /// Defaults to `password`.
    pub server_password: Option<String>,
    /// `None`: `general.default_pool_size` (see [`Config::pool_size`]).
    pub pool_size: Option<u32>,
    /// `None`: `general.pool_mode` (see [`Config::pool_mode`]).
    pub pool_mode: Option<PoolMode>,
    /// Writes are refused, the server session is read-only, and with
    /// replicas the user's transactions go to replicas only.
    pub read_only: bool,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("password", &self.password.as_ref().map(|_| Redacted))
            .field("auth_method", &self.auth_method)
            .field("server_user", &self.server_user)
            .field("server_password", &self.server_password.as_ref().map(|_| Redacted))
            .field("pool_size", &self.pool_size)
            .field("pool_mode", &self.pool_mode)
            .field("read_only", &self.read_only)
            .finish()
    }
}

/// Stands in for a secret in `Debug` output.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `[jwt]`: logins with a signed token as the password. See
/// `config/pgwarden.toml` and `config/jwt.toml` for each key.
#[derive(Clone, PartialEq, Eq)]
pub struct Jwt {
    /// PEM files with public keys (`public_key_file`, one path or a list).
    pub public_key_files: Vec<PathBuf>,
    pub jwks_file: Option<PathBuf>,
    /// Fetched and refreshed by the control thread.
    pub jwks_url: Option<String>,
    /// Extra trusted CA certificates (PEM) for `jwks_url`.
    pub jwks_ca_file: Option<PathBuf>,
    pub jwks_allow_http: bool,
    /// Key `jwks_cache_ttl`: seconds between refreshes.
    pub jwks_cache_ttl_secs: u64,
    pub jwks_refresh_cooldown_secs: u64,
    pub jwks_max_stale_secs: u64,
    /// Empty: every algorithm we verify.
    pub algorithms: Vec<Algorithm>,
    /// Accepted `iss`; empty: not checked.
    pub issuers: Vec<String>,
    /// Accepted `aud`; empty: not checked.
    pub audiences: Vec<String>,
    pub leeway_secs: u64,
    /// A claim name or a dotted path into nested claims.
    pub username_claim: String,
    /// When set, only startup users ending with it are JWT logins.
    pub user_suffix: Option<String>,
    pub match_startup_user: bool,
    /// Claim value -> Postgres role; identities not in it map to themselves.
    pub role_map: Vec<(String, String)>,
    /// Exact names, or prefixes ending with `*`; empty: any role not refused
    /// otherwise.
    pub allowed_roles: Vec<String>,
    pub identity: Identity,
    /// The authenticator in `identity = "set_role"` mode.
    pub server_user: Option<String>,
    pub server_password: Option<String>,
    pub allow_superuser_server_user: bool,
    pub auto_provision: bool,
    pub auto_provision_pool_size: u32,
    pub max_auto_pools: u32,
    /// Roles made by auto_provision are read-only.
    pub auto_provision_read_only: bool,
    /// A claim (dotted path) that makes a token read-only when it holds one
    /// of `read_only_values`.
    pub read_only_claim: Option<String>,
    pub read_only_values: Vec<String>,
    pub require_tls: bool,
    /// End a session at the first transaction boundary after its token's
    /// `exp`.
    pub expire_sessions: bool,
    /// `[[jwt.roles]]`: roles with their own settings; without
    /// `auto_provision`, the only roles that may log in.
    pub roles: Vec<JwtRole>,
}

impl fmt::Debug for Jwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwt")
            .field("public_key_files", &self.public_key_files)
            .field("jwks_file", &self.jwks_file)
            .field("jwks_url", &self.jwks_url)
            .field("algorithms", &self.algorithms)
            .field("issuers", &self.issuers)
            .field("audiences", &self.audiences)
            .field("username_claim", &self.username_claim)
            .field("identity", &self.identity)
            .field("server_user", &self.server_user)
            .field("server_password", &self.server_password.as_ref().map(|_| Redacted))
            .field("auto_provision", &self.auto_provision)
            .field("require_tls", &self.require_tls)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

impl Jwt {
    /// The `[[jwt.roles]]` entry for `role`.
    pub fn role(&self, role: &str) -> Option<&JwtRole> {
        self.roles.iter().find(|r| r.name == role)
    }
}

/// `[[jwt.roles]]`: one Postgres role JWT logins may become.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtRole {
    pub name: String,
    pub read_only: bool,
    pub pool_size: Option<u32>,
    pub pool_mode: Option<PoolMode>,
}

/// Who the server connection of a JWT login is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Identity {
    /// Logs in as `server_user` and takes the mapped role with the `role`
    /// startup parameter; role-changing statements are refused.
    SetRole,
    /// Logs in as the mapped role itself.
    Login,
}

/// How long a server connection stays bound to one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolMode {
    /// From a transaction's first message until ReadyForQuery says idle.
    Transaction,
    /// For the client's whole session.
    Session,
}

/// How a client proves who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    ScramSha256,
    Md5,
    /// Cleartext password (use only over TLS).
    Plain,
    /// No password at all.
    Trust,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl Choice for PoolMode {
    const CHOICES: &'static [(&'static str, Self)] =
        &[("transaction", Self::Transaction), ("session", Self::Session)];
}

impl Choice for AuthMethod {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("scram-sha-256", Self::ScramSha256),
        ("md5", Self::Md5),
        ("plain", Self::Plain),
        ("trust", Self::Trust),
    ];
}

impl Choice for ClientTls {
    const CHOICES: &'static [(&'static str, Self)] =
        &[("disabled", Self::Disabled), ("allowed", Self::Allowed), ("required", Self::Required)];
}

impl Choice for Identity {
    const CHOICES: &'static [(&'static str, Self)] = &[("set_role", Self::SetRole), ("login", Self::Login)];
}

impl Choice for LoadBalancing {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("round_robin", Self::RoundRobin),
        ("random", Self::Random),
        ("least_connections", Self::LeastConnections),
    ];
}

impl Choice for PrimaryReads {
    const CHOICES: &'static [(&'static str, Self)] =
        &[("include", Self::Include), ("exclude", Self::Exclude), ("fallback", Self::Fallback)];
}

impl Choice for ReadOnlyFallback {
    const CHOICES: &'static [(&'static str, Self)] = &[("error", Self::Error), ("primary", Self::Primary)];
}

impl Choice for DbRole {
    const CHOICES: &'static [(&'static str, Self)] =
        &[("primary", Self::Primary), ("replica", Self::Replica), ("auto", Self::Auto)];
}

/// `read_write_split = "on" | "off"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct OnOff(pub bool);

impl Choice for OnOff {
    const CHOICES: &'static [(&'static str, Self)] = &[("on", Self(true)), ("off", Self(false))];
}

impl Choice for LogLevel {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("error", Self::Error),
        ("warn", Self::Warn),
        ("info", Self::Info),
        ("debug", Self::Debug),
        ("trace", Self::Trace),
    ];
}

/// The spelling of `value` in the configuration file.
fn spelling<T: Choice + PartialEq>(value: T) -> &'static str {
    T::CHOICES.iter().find(|(_, v)| *v == value).map_or("?", |(name, _)| name)
}

macro_rules! config_spelling {
    ($($t:ty),*) => {$(
        impl $t {
            /// The value as written in the configuration file.
            pub fn as_str(self) -> &'static str {
                spelling(self)
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}

config_spelling!(
    PoolMode,
    AuthMethod,
    LogLevel,
    Identity,
    ClientTls,
    LoadBalancing,
    PrimaryReads,
    ReadOnlyFallback,
    DbRole
);
