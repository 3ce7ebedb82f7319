//! `[jwt]`: defaults, and every rule with its key path.

use super::*;

const DB: &str = "[[databases]]\nname = \"app\"\nhost = \"db\"\n";

fn jwt(body: &str) -> String {
    format!("{DB}\n[jwt]\n{body}\n")
}

const GOOD: &str = "public_key_file = \"k.pem\"\nserver_user = \"authenticator\"\nauto_provision = true\nrequire_tls = false";

#[test]
fn defaults_and_no_static_users_needed() {
    let config = parse_ok(&jwt(GOOD));
    assert!(config.users.is_empty());
    let j = config.jwt.expect("jwt");
    assert_eq!(j.username_claim, "sub");
    assert_eq!(j.identity, Identity::SetRole);
    assert_eq!(j.algorithms.len(), 9);
    assert!(j.match_startup_user);
    assert_eq!(j.auto_provision_pool_size, 5);
    assert_eq!(j.max_auto_pools, 100);
    assert_eq!(j.public_key_files, vec![std::path::PathBuf::from("k.pem")]);
}

#[test]
fn lists_maps_and_roles() {
    let config = parse_ok(&jwt(&format!(
        "{GOOD}\nissuer = [\"a\", \"b\"]\naudience = \"pg\"\nalgorithms = [\"ES256\"]\n\
         username_claim = \"realm_access.role\"\nrole_map = {{ \"alice@x\" = \"analyst\" }}\n\
         allowed_roles = [\"analyst\", \"app_*\"]\n[[jwt.roles]]\nname = \"analyst\"\npool_size = 3\n"
    )));
    let j = config.jwt.unwrap();
    assert_eq!(j.issuers, vec!["a", "b"]);
    assert_eq!(j.audiences, vec!["pg"]);
    assert_eq!(j.algorithms, vec![crate::auth::jwt::Algorithm::ES256]);
    assert_eq!(j.role_map, vec![("alice@x".to_string(), "analyst".to_string())]);
    assert_eq!(j.role("analyst").unwrap().pool_size, Some(3));
}

#[test]
fn every_rule_names_its_key() {
    let errs = errors(&jwt("algorithms = [\"HS256\", \"none\", \"XX1\"]\nusername_claim = \"a..b\"\n\
         allowed_roles = [\"*\", \"a*b\"]\nrole_map = { x = \"postgres\", y = \"pg_monitor\" }\n\
         server_password = \"SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy\"\nleeway_secs = 99999"));
    let has = |path: &str, text: &str| errs.iter().any(|e| e.starts_with(path) && e.contains(text));
    assert!(has("jwt.algorithms[0]", "public keys only"), "{errs:#?}");
    assert!(has("jwt.algorithms[1]", "public keys only"), "{errs:#?}");
    assert!(has("jwt.algorithms[2]", "expected one of"), "{errs:#?}");
    assert!(has("jwt.username_claim", "dotted path"), "{errs:#?}");
    assert!(has("jwt.allowed_roles[0]", "prefix"), "{errs:#?}");
    assert!(has("jwt.allowed_roles[1]", "prefix"), "{errs:#?}");
    assert!(has("jwt.role_map.\"x\"", "reserved"), "{errs:#?}");
    assert!(has("jwt.role_map.\"y\"", "reserved"), "{errs:#?}");
    assert!(has("jwt.server_password", "SCRAM secret"), "{errs:#?}");
    assert!(has("jwt.leeway_secs", "between"), "{errs:#?}");
    assert!(has("jwt:", "no verification keys"), "{errs:#?}");
    assert!(has("jwt.server_user", "set_role"), "{errs:#?}");
    assert!(has("jwt.roles", "no role can log in"), "{errs:#?}");
    assert!(has("jwt.require_tls", "TLS"), "{errs:#?}");
}

#[test]
fn a_jwt_role_is_never_a_static_user_or_the_authenticator() {
    let text = format!(
        "{DB}\n[[users]]\nname = \"app\"\npassword = \"x\"\nserver_user = \"app_owner\"\n\n[jwt]\n{GOOD}\n\
         role_map = {{ a = \"app\", b = \"app_owner\", c = \"authenticator\" }}\n[[jwt.roles]]\nname = \"app\"\n"
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 4, "{errs:#?}");
    assert!(errs.iter().all(|e| e.contains("cannot be a JWT role")), "{errs:#?}");
}

#[test]
fn without_jwt_users_are_still_required() {
    let errs = errors(DB);
    assert!(errs.iter().any(|e| e.starts_with("users:")), "{errs:#?}");
}

#[test]
fn require_tls_is_met_by_tls_for_clients() {
    let base = "public_key_file = \"k.pem\"\nserver_user = \"authenticator\"\nauto_provision = true";
    let with_tls = |client_tls: &str| {
        format!("{DB}\n[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n{client_tls}\n[jwt]\n{base}\n")
    };
    let config = parse_ok(&with_tls(""));
    assert_eq!(config.tls.as_ref().unwrap().client_tls, ClientTls::Allowed);
    assert!(config.jwt.unwrap().require_tls);
    parse_ok(&with_tls("client_tls = \"required\""));
    let errs = errors(&with_tls("client_tls = \"disabled\""));
    assert!(errs.iter().any(|e| e.starts_with("jwt.require_tls")), "{errs:#?}");
}

#[test]
fn jwks_url_rules() {
    let base = "server_user = \"a\"\nauto_provision = true\nrequire_tls = false";
    let config = parse_ok(&jwt(&format!("{base}\njwks_url = \"https://idp.example.com/jwks\"")));
    let j = config.jwt.unwrap();
    assert_eq!(j.jwks_url.as_deref(), Some("https://idp.example.com/jwks"));
    assert_eq!(
        (j.jwks_cache_ttl_secs, j.jwks_refresh_cooldown_secs, j.jwks_max_stale_secs),
        (300, 30, 86_400)
    );
    let errs = errors(&jwt(&format!("{base}\njwks_url = \"http://idp/jwks\"")));
    assert!(errs.iter().any(|e| e.starts_with("jwt.jwks_url") && e.contains("jwks_allow_http")), "{errs:#?}");
    parse_ok(&jwt(&format!("{base}\njwks_url = \"http://idp/jwks\"\njwks_allow_http = true")));
    let errs = errors(&jwt(&format!("{base}\njwks_url = \"ftp://idp\"\njwks_cache_ttl = 1")));
    assert!(errs.iter().any(|e| e.starts_with("jwt.jwks_url") && e.contains("https")), "{errs:#?}");
    assert!(errs.iter().any(|e| e.starts_with("jwt.jwks_cache_ttl")), "{errs:#?}");
}

#[test]
fn read_only_keys() {
    let config = parse_ok(&jwt(&format!(
        "{GOOD}\nauto_provision_read_only = true\nread_only_claim = \"scope\"\nread_only_values = \"db:read\"\n\
         [[jwt.roles]]\nname = \"reporter\"\nread_only = true\n"
    )));
    let j = config.jwt.unwrap();
    assert!(j.auto_provision_read_only);
    assert_eq!(j.read_only_claim.as_deref(), Some("scope"));
    assert_eq!(j.read_only_values, vec!["db:read"]);
    assert!(j.role("reporter").unwrap().read_only);
    let errs = errors(&jwt(&format!("{GOOD}\nread_only_claim = \"scope\"")));
    assert!(errs.iter().any(|e| e.starts_with("jwt.read_only_values")), "{errs:#?}");
}
