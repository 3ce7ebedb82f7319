//! The `pgwarden` binary: parse arguments, load the config, start the shards
//! and the control thread.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use pgwarden::auth::jwt::Algorithm;
use pgwarden::tools::{self, TokenRequest};

const HELP: &str = "\
pgwarden: a thread-per-core PostgreSQL proxy and connection pooler on io_uring

USAGE:
    pgwarden --config FILE          run the proxy with the configuration in FILE
    pgwarden check --config FILE    validate FILE; print every error with its key path
    pgwarden keygen [--alg RS256|ES256|ES384|EdDSA] --out DIR
                                    write DIR/private.pem (mode 0600), DIR/public.pem and
                                    DIR/jwks.json for a new signing key (default ES256)
    pgwarden token --key PRIVATE.pem --sub NAME [--ttl 1h] [--aud A]... [--iss I]
                   [--kid K] [--alg ALG] [--claim key=value]...
                                    print a signed JWT (exp = now + ttl; ttl as 90s, 15m,
                                    1h or 2d; a claim value that parses as JSON is JSON,
                                    otherwise a string; kid defaults to the keygen kid)
    pgwarden --help                 print this help
    pgwarden --version              print the version

The configuration is TOML; config/pgwarden.toml documents every key.
${VAR} in a string value is replaced from the environment.

Signals: SIGINT or SIGTERM stop accepting connections, let running
transactions finish for up to general.shutdown_timeout_ms, then exit.
";

enum Command {
    Run(PathBuf),
    Check(PathBuf),
    Keygen(Algorithm, PathBuf),
    Token(TokenRequest),
    Help,
    Version,
}

fn algorithm(name: &str) -> Result<Algorithm, String> {
    Algorithm::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
        format!("unknown algorithm {name:?} (one of {})", names.join(", "))
    })
}

fn parse_keygen(args: &[String]) -> Result<Command, String> {
    let mut alg = Algorithm::ES256;
    let mut out = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--alg" => alg = algorithm(value()?)?,
            "--out" => out = Some(PathBuf::from(value()?)),
            other => return Err(format!("keygen: unknown argument \"{other}\" (see pgwarden --help)")),
        }
    }
    Ok(Command::Keygen(alg, out.ok_or("keygen: missing --out DIR")?))
}

fn parse_token(args: &[String]) -> Result<Command, String> {
    let mut req = TokenRequest { ttl_secs: 3600, ..TokenRequest::default() };
    let (mut key, mut sub) = (None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--key" => key = Some(PathBuf::from(value()?)),
            "--sub" => sub = Some(value()?),
            "--ttl" => req.ttl_secs = tools::parse_duration_secs(&value()?)?,
            "--aud" => req.aud.push(value()?),
            "--iss" => req.iss = Some(value()?),
            "--kid" => req.kid = Some(value()?),
            "--alg" => req.alg = Some(algorithm(&value()?)?),
            "--claim" => req.claims.push(value()?),
            other => return Err(format!("token: unknown argument \"{other}\" (see pgwarden --help)")),
        }
    }
    req.key = key.ok_or("token: missing --key PRIVATE.pem")?;
    req.sub = sub.ok_or("token: missing --sub NAME")?;
    Ok(Command::Token(req))
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    match args.first().map(String::as_str) {
        Some("keygen") => return parse_keygen(&args[1..]),
        Some("token") => return parse_token(&args[1..]),
        _ => {}
    }
    let mut config = None;
    let mut check = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" | "help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "check" => check = true,
            "-c" | "--config" => {
                config = Some(PathBuf::from(it.next().ok_or("--config needs a file name")?));
            }
            s if s.starts_with("--config=") => config = Some(PathBuf::from(&s["--config=".len()..])),
            other => return Err(format!("unknown argument \"{other}\" (see pgwarden --help)")),
        }
    }
    let config = config.ok_or("missing --config FILE (see pgwarden --help)")?;
    Ok(if check { Command::Check(config) } else { Command::Run(config) })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse_args(&args) {
        Ok(Command::Help) => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            println!("pgwarden {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Ok(Command::Check(path)) => match pgwarden::config::load(&path) {
            Ok(config) => {
                // Key and certificate files are part of the configuration:
                // load them too.
                if let Some(jwt) = &config.jwt {
                    let loaded = pgwarden::session::jwt::JwtRuntime::new(&config, jwt)
                        .and_then(|_| pgwarden::control::jwks::check(jwt));
                    if let Err(e) = loaded {
                        eprintln!("{e}");
                        return ExitCode::FAILURE;
                    }
                }
                if let Some(tls) = &config.tls {
                    if let Err(e) = pgwarden::net::tls::server_config(&tls.cert_file, &tls.key_file) {
                        eprintln!("{e}");
                        return ExitCode::FAILURE;
                    }
                }
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(errs) => {
                eprintln!("{errs}");
                ExitCode::FAILURE
            }
        },
        Ok(Command::Keygen(alg, dir)) => match tools::keygen(alg, &dir) {
            Ok(out) => {
                println!("{alg} key, kid {}", out.kid);
                println!("  private key: {} (keep it secret)", out.private_key.display());
                println!("  public key:  {}  -> [jwt] public_key_file", out.public_key.display());
                println!("  JWKS:        {}  -> [jwt] jwks_file", out.jwks.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pgwarden keygen: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(Command::Token(req)) => match tools::token(&req) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pgwarden token: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(Command::Run(path)) => run(&path),
        Err(e) => {
            eprintln!("pgwarden: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(path: &std::path::Path) -> ExitCode {
    let config = match pgwarden::config::load(path) {
        Ok(c) => Arc::new(c),
        Err(errs) => {
            eprintln!("pgwarden: invalid configuration {}:\n{errs}", path.display());
            return ExitCode::FAILURE;
        }
    };
    pgwarden::logging::init(config.general.log_level.as_str());
    let shards = config.general.workers;
    if let Some(jwt) = &config.jwt {
        if let Err(e) = pgwarden::control::jwks::check(jwt) {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    }
    let shared = match pgwarden::session::ctx::Shared::new(config.clone(), shards) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = check_authenticator_at_start(&shared) {
        log::error!("{e}");
        return ExitCode::FAILURE;
    }
    for u in &config.users {
        if u.auth_method == pgwarden::config::AuthMethod::Trust {
            log::warn!("user \"{}\" logs in without a password (auth = \"trust\")", u.name);
        }
    }
    let started = match pgwarden::shard::start(shared.clone(), config.general.listen, shards) {
        Ok(x) => x,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match &started.unix {
        Some(u) => log::info!(
            "pgwarden: listening on {} and {} with {shards} shards",
            started.addr,
            u.path().display()
        ),
        None => log::info!("pgwarden: listening on {} with {shards} shards", started.addr),
    }
    let result = pgwarden::control::run(shared, started.handles);
    // The shards have stopped: the socket file goes now.
    drop(started.unix);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("control thread failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// With `[jwt] identity = "set_role"`: logs in as the server user once per
/// database and refuses to start if it is a superuser (unless allowed).
/// A database that cannot be reached is checked later, on each new server
/// connection, so pgwarden may start before Postgres.
fn check_authenticator_at_start(shared: &Arc<pgwarden::session::ctx::Shared>) -> Result<(), String> {
    use pgwarden::config::Identity;
    use pgwarden::session::server::{ServerConn, ServerLogin};
    let Some(jwt) = shared.config.jwt.as_ref() else { return Ok(()) };
    let (Identity::SetRole, Some(user)) = (jwt.identity, jwt.server_user.clone()) else { return Ok(()) };
    let timeout = std::time::Duration::from_millis(shared.config.general.server_connect_timeout_ms);
    pgwarden::shard::block_on(async {
        let hosts = shared.clusters.iter().flat_map(|(name, c)| c.hosts.iter().map(move |h| (name, h)));
        for (name, db) in hosts {
            let login = ServerLogin {
                addr: db.addr.clone(),
                target: db.target,
                database: db.database_name.clone(),
                user: user.clone(),
                password: jwt.server_password.as_deref().map(pgwarden::auth::Secret::parse),
                role: None,
                read_only: false,
                scram_keys: None,
                connect_timeout: timeout,
            };
            let mut conn = match ServerConn::connect(&login, 1).await {
                Ok(c) => c,
                Err(e) => {
                    log::warn!(
                        "could not check jwt.server_user \"{user}\" on database \"{name}\" at {} at start-up \
                         ({e}); it is checked on each new server connection",
                        db.label
                    );
                    continue;
                }
            };
            if let Err(e) = pgwarden::session::ctx::check_authenticator(shared, &mut conn, &user).await {
                return Err(format!("refusing to start: {e}"));
            }
        }
        Ok(())
    })?
}
