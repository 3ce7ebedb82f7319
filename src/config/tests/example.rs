//! The documented example `config/pgwarden.toml`: it parses, its
//! commented-out defaults are the real defaults, and it shows every key.

use std::net::SocketAddr;

use super::*;

#[test]
fn example_parses() {
    let config = parse_ok(EXAMPLE);
    assert_eq!(config.general, General::default());
    assert_eq!(config.general.listen, SocketAddr::from(([127, 0, 0, 1], 6432)));
    assert_eq!(
        config.databases,
        vec![Database {
            name: "app".into(),
            host: "127.0.0.1".into(),
            port: 5432,
            database_name: "app".into(),
            role: DbRole::Primary,
        }]
    );
    let user = config.user("app").expect("user app");
    assert_eq!(user.password.as_deref(), Some("app-secret"));
    assert_eq!(user.auth_method, AuthMethod::ScramSha256);
}

/// The example with every `# key = value` line uncommented.
fn uncommented_example() -> String {
    EXAMPLE
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if is_setting(rest) || is_section(rest) => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `[jwt]` and `[[jwt.roles]]`: optional sections shown commented out.
fn is_section(line: &str) -> bool {
    line.starts_with('[') && line.ends_with(']') && !line.contains(' ')
}

fn is_setting(line: &str) -> bool {
    line.split_once(" = ")
        .is_some_and(|(key, _)| !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
}

#[test]
fn example_comments_show_the_defaults() {
    let text = uncommented_example();
    assert!(text.contains("\nworkers = \"auto\""), "uncommenting failed");
    let all = parse_ok(&text);
    let plain = parse_ok(EXAMPLE);
    // The health check's login has no default value to show: unset, it is
    // taken from the first user.
    let mut general = all.general.clone();
    assert_eq!(general.healthcheck_user.take().as_deref(), Some("pgwarden_monitor"));
    assert!(general.healthcheck_password.take().is_some());
    assert_eq!(general, plain.general);
    assert_eq!(all.databases, plain.databases);
    let (a, p) = (&all.users[0], &plain.users[0]);
    assert_eq!(all.pool_size(a), plain.pool_size(p));
    assert_eq!(all.pool_mode(a), plain.pool_mode(p));
    assert_eq!(
        (&a.password, a.auth_method, &a.server_user, &a.server_password),
        (&p.password, p.auth_method, &p.server_user, &p.server_password)
    );
}

#[test]
fn example_shows_every_key() {
    let text = uncommented_example();
    let raw = parse_raw(&text).expect("valid TOML");
    let mut ctx = Ctx::new(&no_env);
    build(&mut ctx, &raw);
    assert!(ctx.asked().len() > 20, "walker asked for {:?}", ctx.asked());
    for path in ctx.asked() {
        assert!(lookup(&raw, path).is_some(), "the example does not show {path}");
    }
    assert_eq!(ctx.into_errors(), vec![]);
}

/// The value at a key path such as `databases[0].port`.
fn lookup<'a>(table: &'a toml::Table, path: &str) -> Option<&'a toml::Value> {
    let mut parts = path.split('.');
    let first = parts.next()?;
    let mut value = index(table.get(first.split('[').next()?)?, first)?;
    for part in parts {
        value = index(value.as_table()?.get(part.split('[').next()?)?, part)?;
    }
    Some(value)
}

fn index<'a>(value: &'a toml::Value, part: &str) -> Option<&'a toml::Value> {
    match part.split_once('[') {
        Some((_, i)) => value.as_array()?.get(i.trim_end_matches(']').parse::<usize>().ok()?),
        None => Some(value),
    }
}
