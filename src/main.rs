//! The `pgwarden` binary: parse arguments, load the config, start the shards
//! and the control thread.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

const HELP: &str = "\
pgwarden: a thread-per-core PostgreSQL proxy and connection pooler on io_uring

USAGE:
    pgwarden --config FILE          run the proxy with the configuration in FILE
    pgwarden check --config FILE    validate FILE; print every error with its key path
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
    Help,
    Version,
}

fn parse_args(args: &[String]) -> Result<Command, String> {
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
            Ok(_) => {
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(errs) => {
                eprintln!("{errs}");
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
    let shared = match pgwarden::session::ctx::Shared::new(config.clone(), shards) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    for u in &config.users {
        if u.auth_method == pgwarden::config::AuthMethod::Trust {
            log::warn!("user \"{}\" logs in without a password (auth = \"trust\")", u.name);
        }
    }
    let (addr, handles) = match pgwarden::shard::start(shared.clone(), config.general.listen, shards) {
        Ok(x) => x,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    log::info!("pgwarden: listening on {addr} with {shards} shards");
    match pgwarden::control::run(shared, handles) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("control thread failed: {e}");
            ExitCode::FAILURE
        }
    }
}
