//! The JWKS refresher: fetches `jwks_url` on its own thread (blocking HTTP
//! is fine here, never on a shard), publishes each good key set to the
//! shards, keeps the last good set when a fetch fails (up to
//! `jwks_max_stale_secs`), and answers forced refreshes asked for by logins
//! with an unknown `kid` (at most one per cooldown; see
//! [`KeyStore::request_refresh`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::jwt::{parse_jwks, KeySet, VerifyingKey};
use crate::config::Jwt;
use crate::session::ctx::Shared;
use crate::session::jwt::KeyStore;

/// Connect timeout of a fetch.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Whole-request timeout of a fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest JWKS body read.
const MAX_BODY_BYTES: u64 = 1024 * 1024;
/// Retry delay after a failed fetch: doubles up to the refresh interval.
const RETRY_MIN: Duration = Duration::from_secs(5);
/// Bounds on a `Cache-Control: max-age` we honour.
const MAX_AGE_MIN: Duration = Duration::from_secs(30);
const MAX_AGE_MAX: Duration = Duration::from_secs(86_400);
/// System CA bundle (Debian's ca-certificates).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A fetched JWKS.
struct Fetched {
    keys: Vec<VerifyingKey>,
    skipped: Vec<String>,
    max_age: Option<Duration>,
}

/// Checks what the refresher needs before start-up (the CA file).
pub fn check(jwt: &Jwt) -> Result<(), String> {
    if jwt.jwks_url.is_some() {
        agent(jwt)?;
    }
    Ok(())
}

/// Builds the HTTP agent: no redirects, timeouts, https only unless allowed,
/// the system roots plus `jwks_ca_file`.
fn agent(jwt: &Jwt) -> Result<ureq::Agent, String> {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    fn load(
        pems: &mut Vec<Certificate<'static>>,
        path: &std::path::Path,
        required: bool,
    ) -> Result<(), String> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if required => {
                return Err(format!("jwt.jwks_ca_file: cannot read {}: {e}", path.display()))
            }
            Err(_) => return Ok(()),
        };
        for item in ureq::tls::parse_pem(&text) {
            if let Ok(ureq::tls::PemItem::Certificate(c)) = item {
                pems.push(c.to_owned());
            }
        }
        Ok(())
    }
    let mut pems: Vec<Certificate<'static>> = Vec::new();
    load(&mut pems, std::path::Path::new(SYSTEM_ROOTS), false)?;
    if let Some(ca) = &jwt.jwks_ca_file {
        let before = pems.len();
        load(&mut pems, ca, true)?;
        if pems.len() == before {
            return Err(format!("jwt.jwks_ca_file: {} holds no CERTIFICATE block", ca.display()));
        }
    }
    let roots = if pems.is_empty() { RootCerts::WebPki } else { RootCerts::Specific(Arc::new(pems)) };
    let config = ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(FETCH_TIMEOUT))
        .max_redirects(0)
        .http_status_as_error(false)
        .https_only(!jwt.jwks_allow_http)
        .tls_config(TlsConfig::builder().root_certs(roots).build())
        .build();
    Ok(config.new_agent())
}

fn fetch(agent: &ureq::Agent, url: &str) -> Result<Fetched, String> {
    let mut resp = agent.get(url).header("Accept", "application/json").call().map_err(|e| e.to_string())?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("HTTP status {status}"));
    }
    let max_age = resp
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_max_age)
        .map(|d| d.clamp(MAX_AGE_MIN, MAX_AGE_MAX));
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_BODY_BYTES)
        .read_to_vec()
        .map_err(|e| format!("reading the body (at most {MAX_BODY_BYTES} bytes): {e}"))?;
    let (keys, skipped) = parse_jwks(&body).map_err(|e| e.to_string())?;
    if keys.is_empty() {
        return Err("the JWKS holds no usable signing key".into());
    }
    Ok(Fetched { keys, skipped, max_age })
}

/// `max-age=N` from a Cache-Control value.
pub fn parse_max_age(value: &str) -> Option<Duration> {
    value.split(',').find_map(|part| {
        let (k, v) = part.trim().split_once('=')?;
        if k.trim().eq_ignore_ascii_case("max-age") {
            v.trim().trim_matches('"').parse::<u64>().ok().map(Duration::from_secs)
        } else {
            None
        }
    })
}

/// Starts the refresher thread when `jwks_url` is set.
pub fn spawn(shared: Arc<Shared>) -> Result<Option<std::thread::JoinHandle<()>>, String> {
    let (Some(jwt), Some(rt)) = (shared.config.jwt.as_ref(), shared.jwt.as_ref()) else { return Ok(None) };
    let Some(url) = jwt.jwks_url.clone() else { return Ok(None) };
    let agent = agent(jwt)?;
    let store = rt.store.clone();
    let shared2 = shared.clone();
    let handle = std::thread::Builder::new()
        .name("pgwarden-jwks".into())
        .spawn(move || run(&shared2, &store, &agent, &url))
        .map_err(|e| format!("cannot start the JWKS thread: {e}"))?;
    Ok(Some(handle))
}

fn run(shared: &Shared, store: &KeyStore, agent: &ureq::Agent, url: &str) {
    let jwt = shared.config.jwt.as_ref().expect("jwks thread only with [jwt]");
    let ttl = Duration::from_secs(jwt.jwks_cache_ttl_secs);
    let max_stale = Duration::from_secs(jwt.jwks_max_stale_secs);
    let mut last_good: Option<Instant> = None;
    let mut url_keys_published = false;
    let mut retry = RETRY_MIN;
    let mut next = Instant::now();
    loop {
        // Sleep until the next scheduled fetch or a forced one.
        let wait = next.saturating_duration_since(Instant::now());
        let forced = !wait.is_zero() && store.wait_for_request(wait);
        if shared.shutting_down() {
            return;
        }
        if !forced && Instant::now() < next {
            continue;
        }
        match fetch(agent, url) {
            Ok(f) => {
                for s in &f.skipped {
                    log::warn!("jwt.jwks_url {url}: skipped {s}");
                }
                let count = f.keys.len();
                let (set, _) = KeySet::new(store.static_keys.iter().cloned().chain(f.keys));
                store.publish(set);
                store.attempt_done(true);
                if last_good.is_none() || forced {
                    log::info!(
                        "jwt.jwks_url {url}: {count} signing keys loaded{}",
                        if forced { " (forced refresh)" } else { "" }
                    );
                }
                last_good = Some(Instant::now());
                url_keys_published = true;
                retry = RETRY_MIN;
                // A provider's max-age may shorten the interval, never lengthen it.
                next = Instant::now() + f.max_age.map_or(ttl, |a| a.min(ttl));
            }
            Err(e) => {
                store.attempt_done(false);
                let failures = store.failures.load(Ordering::Acquire);
                match last_good {
                    None => log::error!(
                        "jwt.jwks_url {url}: fetch failed: {e}; no keys from it yet (failure {failures}), \
                         retrying in {} s",
                        retry.as_secs()
                    ),
                    Some(t) => log::warn!(
                        "jwt.jwks_url {url}: fetch failed: {e}; keeping the keys fetched {} s ago \
                         (failure {failures})",
                        t.elapsed().as_secs()
                    ),
                }
                if url_keys_published && last_good.is_some_and(|t| t.elapsed() > max_stale) {
                    log::error!(
                        "jwt.jwks_url {url}: keys older than jwks_max_stale_secs ({} s): dropping them",
                        max_stale.as_secs()
                    );
                    store.publish(KeySet::new(store.static_keys.iter().cloned()).0);
                    url_keys_published = false;
                }
                next = Instant::now() + retry;
                retry = (retry * 2).min(ttl.max(RETRY_MIN));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age() {
        assert_eq!(parse_max_age("public, max-age=600"), Some(Duration::from_secs(600)));
        assert_eq!(parse_max_age("MAX-AGE=\"60\", must-revalidate"), Some(Duration::from_secs(60)));
        assert_eq!(parse_max_age("no-cache"), None);
        assert_eq!(parse_max_age("max-age=abc"), None);
    }
}
