//! The walker: typed reads from the raw TOML table that record every error,
//! with its key path, instead of stopping at the first one.
//!
//! A section is read through a [`Reader`] opened on its table. The reader
//! remembers which keys the section asked for, so [`Reader::finish`] can
//! report every other key as unknown (with a "did you mean") without a second
//! list of keys to keep in sync. Adding a section is: open a `Reader`, call
//! the typed getters, call `finish`.
//!
//! Getters return `None` both when the key is absent and when it is wrong
//! (the error is then recorded in [`Ctx`]); callers fill in defaults with
//! `unwrap_or`, and use [`Reader::required`] for keys that have none.

use std::ops::RangeInclusive;

use toml::{Table, Value};

use super::env::expand;
use super::error::ConfigError;

/// The context of one parse: where variables come from, and what went wrong.
pub(super) struct Ctx<'e> {
    env: &'e dyn Fn(&str) -> Option<String>,
    errors: Vec<ConfigError>,
    /// Every key path the walker asked for; a test checks that the example
    /// configuration shows each of them.
    asked: Vec<String>,
}

impl<'e> Ctx<'e> {
    pub(super) fn new(env: &'e dyn Fn(&str) -> Option<String>) -> Self {
        Self { env, errors: Vec::new(), asked: Vec::new() }
    }

    pub(super) fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigError::new(path, message));
    }

    /// Whether an error was already recorded at exactly `path` (later checks
    /// use it to avoid piling a second error onto the same mistake).
    pub(super) fn has_error_at(&self, path: &str) -> bool {
        self.errors.iter().any(|e| e.path == path)
    }

    /// `raw` with `${NAME}` substituted, or `None` after recording why not.
    pub(super) fn expand(&mut self, path: &str, raw: &str) -> Option<String> {
        match expand(raw, self.env) {
            Ok(value) => Some(value),
            Err(e) => {
                self.error(path, e.message());
                None
            }
        }
    }

    pub(super) fn into_errors(self) -> Vec<ConfigError> {
        self.errors
    }

    #[cfg(test)]
    pub(super) fn asked(&self) -> &[String] {
        &self.asked
    }
}

/// A closed set of string values for one key (an enum in the config).
pub(crate) trait Choice: Copy + 'static {
    /// Every accepted spelling and what it means, in the order to list them.
    const CHOICES: &'static [(&'static str, Self)];
}

/// Lists the accepted values: `"transaction", "session"`.
pub(super) fn list_choices<T: Choice>() -> String {
    let quoted: Vec<String> = T::CHOICES.iter().map(|(n, _)| format!("{n:?}")).collect();
    quoted.join(", ")
}

/// Reads one table (a section, or one entry of an array of tables).
pub(super) struct Reader<'t> {
    table: &'t Table,
    path: String,
    asked: Vec<&'static str>,
}

impl<'t> Reader<'t> {
    /// `path` is the table's own key path: `"general"`, `"users[0]"`, or `""`
    /// for the top level.
    pub(super) fn new(table: &'t Table, path: impl Into<String>) -> Self {
        Self { table, path: path.into(), asked: Vec::new() }
    }

    pub(super) fn path(&self) -> &str {
        &self.path
    }

    /// The key path of `key` in this table: `databases[1].port`.
    pub(super) fn path_of(&self, key: &str) -> String {
        let key = quote_key(key);
        if self.path.is_empty() {
            key
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Whether the table holds `key` at all (right or wrong).
    pub(super) fn present(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    /// The raw value of `key`, marking the key as known to this section.
    pub(super) fn get(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Option<&'t Value> {
        if !self.asked.contains(&key) {
            self.asked.push(key);
            ctx.asked.push(self.path_of(key));
        }
        self.table.get(key)
    }

    /// Reads `key` with `read`, and reports it as missing if it is absent.
    pub(super) fn required<T>(
        &mut self,
        ctx: &mut Ctx<'_>,
        key: &'static str,
        read: impl FnOnce(&mut Self, &mut Ctx<'_>, &'static str) -> Option<T>,
    ) -> Option<T> {
        if !self.present(key) {
            self.get(ctx, key);
            ctx.error(&self.path_of(key), "required key is missing");
            return None;
        }
        read(self, ctx, key)
    }

    /// A string, with `${NAME}` substituted.
    pub(super) fn string(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Option<String> {
        self.string_impl(ctx, key, false)
    }

    /// Like [`Reader::string`], for passwords: no message ever shows the value.
    pub(super) fn secret(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Option<String> {
        let path = self.path_of(key);
        let value = self.string_impl(ctx, key, true)?;
        if value.contains('\0') {
            ctx.error(&path, "must not contain a NUL character");
            return None;
        }
        Some(value)
    }

    fn string_impl(&mut self, ctx: &mut Ctx<'_>, key: &'static str, secret: bool) -> Option<String> {
        let path = self.path_of(key);
        let value = self.get(ctx, key)?;
        let Some(raw) = value.as_str() else {
            ctx.error(&path, expected("a string", value, secret));
            return None;
        };
        ctx.expand(&path, raw)
    }

    /// A string that must be non-empty, hold no NUL and fit in `max_bytes`
    /// (Postgres names: 63 bytes, `NAMEDATALEN - 1`; longer ones it truncates).
    pub(super) fn name(&mut self, ctx: &mut Ctx<'_>, key: &'static str, max_bytes: usize) -> Option<String> {
        let path = self.path_of(key);
        let value = self.string(ctx, key)?;
        let problem = if value.is_empty() {
            "must not be empty".to_string()
        } else if value.contains('\0') {
            "must not contain a NUL character".to_string()
        } else if value.len() > max_bytes {
            format!("must be at most {max_bytes} bytes, found {} bytes", value.len())
        } else {
            return Some(value);
        };
        ctx.error(&path, problem);
        None
    }

    /// A string or an array of strings (each with `${NAME}` substituted);
    /// an empty array is an empty list.
    pub(super) fn strings(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Option<Vec<String>> {
        let path = self.path_of(key);
        match self.get(ctx, key)? {
            Value::String(raw) => Some(vec![ctx.expand(&path, raw)?]),
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{path}[{i}]");
                    match item.as_str() {
                        Some(raw) => match ctx.expand(&item_path, raw) {
                            Some(v) => out.push(v),
                            None => ok = false,
                        },
                        None => {
                            ctx.error(&item_path, expected("a string", item, false));
                            ok = false;
                        }
                    }
                }
                ok.then_some(out)
            }
            other => {
                ctx.error(&path, expected("a string or an array of strings", other, false));
                None
            }
        }
    }

    /// A table of string values (`key = "value"` pairs), in file order.
    pub(super) fn string_table(
        &mut self,
        ctx: &mut Ctx<'_>,
        key: &'static str,
    ) -> Option<Vec<(String, String)>> {
        let path = self.path_of(key);
        let table = self.table(ctx, key)?;
        let mut out = Vec::with_capacity(table.len());
        let mut ok = true;
        for (k, v) in table {
            let item_path = format!("{path}.{}", quote_key(k));
            match v.as_str() {
                Some(raw) => match ctx.expand(&item_path, raw) {
                    Some(v) => out.push((k.clone(), v)),
                    None => ok = false,
                },
                None => {
                    ctx.error(&item_path, expected("a string", v, false));
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// A boolean (`true` or `false`).
    pub(super) fn boolean(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Option<bool> {
        let path = self.path_of(key);
        let value = self.get(ctx, key)?;
        let Some(b) = value.as_bool() else {
            ctx.error(&path, expected("a boolean (true or false)", value, false));
            return None;
        };
        Some(b)
    }

    /// An unsigned integer within `range` (inclusive).
    pub(super) fn uint<T>(
        &mut self,
        ctx: &mut Ctx<'_>,
        key: &'static str,
        range: RangeInclusive<T>,
    ) -> Option<T>
    where
        T: Copy + Into<u64> + TryFrom<u64>,
    {
        let path = self.path_of(key);
        let value = self.get(ctx, key)?;
        let Some(n) = value.as_integer() else {
            ctx.error(&path, expected("an integer", value, false));
            return None;
        };
        in_range(ctx, &path, n, range)
    }

    /// One of `T`'s accepted strings (after `${NAME}` substitution).
    pub(super) fn choice<T: Choice>(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Option<T> {
        let path = self.path_of(key);
        let value = self.get(ctx, key)?;
        let Some(raw) = value.as_str() else {
            let what = format!("a string, one of {}", list_choices::<T>());
            ctx.error(&path, expected(&what, value, false));
            return None;
        };
        let text = ctx.expand(&path, raw)?;
        if let Some(&(_, choice)) = T::CHOICES.iter().find(|(name, _)| *name == text) {
            return Some(choice);
        }
        let names: Vec<&str> = T::CHOICES.iter().map(|(name, _)| *name).collect();
        let message = format!(
            "expected one of {}, found {}{}",
            list_choices::<T>(),
            quote_value(&text),
            suggestion(&text, &names)
        );
        ctx.error(&path, message);
        None
    }

    /// A sub-table such as `[general]`.
    pub(super) fn table(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Option<&'t Table> {
        let path = self.path_of(key);
        let value = self.get(ctx, key)?;
        match value.as_table() {
            Some(table) => Some(table),
            None => {
                let what = format!("a table ([{key}])");
                ctx.error(&path, expected(&what, value, false));
                None
            }
        }
    }

    /// An array of tables such as `[[databases]]`: each entry's path and
    /// table. Entries that are not tables are reported and left out.
    pub(super) fn table_array(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Vec<(String, &'t Table)> {
        let path = self.path_of(key);
        let Some(value) = self.get(ctx, key) else {
            return Vec::new();
        };
        let Some(array) = value.as_array() else {
            let what = format!("an array of tables ([[{key}]])");
            ctx.error(&path, expected(&what, value, false));
            return Vec::new();
        };
        let mut entries = Vec::with_capacity(array.len());
        for (i, item) in array.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            match item.as_table() {
                Some(table) => entries.push((item_path, table)),
                None => ctx.error(&item_path, expected("a table", item, false)),
            }
        }
        entries
    }

    /// Reports every key of a section this reader was not asked for.
    pub(super) fn finish(self, ctx: &mut Ctx<'_>) {
        self.report_unknown(ctx, |_| "unknown key");
    }

    /// Reports every top-level key that is not a known section.
    pub(super) fn finish_top_level(self, ctx: &mut Ctx<'_>) {
        self.report_unknown(ctx, |value| match value {
            Value::Table(_) | Value::Array(_) => "unknown section",
            _ => "unknown top-level key (settings belong in a section such as [general])",
        });
    }

    fn report_unknown(&self, ctx: &mut Ctx<'_>, what: impl Fn(&Value) -> &'static str) {
        for (key, value) in self.table {
            if !self.asked.contains(&key.as_str()) {
                let hint = suggestion(key, &self.asked);
                ctx.error(&self.path_of(key), format!("{}{hint}", what(value)));
            }
        }
    }
}

/// Checks that `n` lies in `range`, saying the range if not.
pub(super) fn in_range<T>(ctx: &mut Ctx<'_>, path: &str, n: i64, range: RangeInclusive<T>) -> Option<T>
where
    T: Copy + Into<u64> + TryFrom<u64>,
{
    let (low, high): (u64, u64) = ((*range.start()).into(), (*range.end()).into());
    match u64::try_from(n) {
        Ok(u) if (low..=high).contains(&u) => T::try_from(u).ok(),
        _ => {
            ctx.error(path, format!("must be between {low} and {high}, found {n}"));
            None
        }
    }
}

/// "expected WHAT, found KIND VALUE"; `secret` leaves the value out.
pub(super) fn expected(what: &str, found: &Value, secret: bool) -> String {
    format!("expected {what}, found {}", describe(found, secret))
}

/// A value's type and, unless secret, the value itself: `string "x"`.
fn describe(value: &Value, secret: bool) -> String {
    let kind = value.type_str();
    if secret {
        return kind.to_string();
    }
    match value {
        Value::String(s) => format!("{kind} {}", quote_value(s)),
        Value::Integer(i) => format!("{kind} {i}"),
        Value::Float(x) => format!("{kind} {x}"),
        Value::Boolean(b) => format!("{kind} {b}"),
        Value::Datetime(d) => format!("{kind} {d}"),
        Value::Array(_) | Value::Table(_) => kind.to_string(),
    }
}

/// Longest stretch of a value to show in a message, in characters.
const MAX_SHOWN_CHARS: usize = 60;

/// A value quoted for a message, cut at [`MAX_SHOWN_CHARS`] characters.
pub(super) fn quote_value(s: &str) -> String {
    match s.char_indices().nth(MAX_SHOWN_CHARS) {
        Some((cut, _)) => format!("{:?}...", &s[..cut]),
        None => format!("{s:?}"),
    }
}

/// A key as written in a path: bare when TOML allows it, quoted otherwise.
fn quote_key(key: &str) -> String {
    let bare = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    }
}

/// `; did you mean "x"?` for the closest candidate, or `""` if none is close:
/// a few edits away, or one `_`-separated part of the other
/// (`auth_method` -> `auth`, `pool_size` -> `default_pool_size`).
pub(super) fn suggestion(given: &str, candidates: &[&str]) -> String {
    let given_lower = given.to_ascii_lowercase();
    let alias = ALIASES.iter().find(|(alias, key)| *alias == given_lower && candidates.contains(key));
    if let Some((_, key)) = alias {
        return format!("; did you mean {key:?}?");
    }
    candidates
        .iter()
        .filter_map(|&candidate| {
            let d = distance(&given_lower, &candidate.to_ascii_lowercase());
            let part = is_part_of(&given_lower, candidate);
            let close = d <= (candidate.len() / 4).clamp(1, 3);
            // A whole part outranks a few edits: pool_size is closer in
            // meaning to default_pool_size than to pool_mode.
            (close || part).then_some(((!part, d), candidate))
        })
        .min_by_key(|&(rank, _)| rank)
        .map(|(_, candidate)| format!("; did you mean {candidate:?}?"))
        .unwrap_or_default()
}

/// Other poolers' names for our keys (PgBouncer's, mostly), which no edit
/// distance would find.
const ALIASES: &[(&str, &str)] = &[
    ("dbname", "database_name"),
    ("auth_type", "auth_method"),
    ("auth_type", "auth"),
    ("listen_addr", "listen"),
    ("listen_port", "listen"),
    ("max_client_conn", "max_client_connections"),
    ("query_wait_timeout", "checkout_timeout_ms"),
    ("max_prepared_statements", "prepared_statements_cache_size"),
];

/// Whether one name is a whole `_`-separated prefix or suffix of the other.
fn is_part_of(a: &str, b: &str) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    short.len() >= 4
        && short.len() < long.len()
        && (long.starts_with(&format!("{short}_")) || long.ends_with(&format!("_{short}")))
}

/// Edit distance with adjacent transpositions (optimal string alignment).
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for (i, cell) in d.iter_mut().step_by(width).enumerate() {
        *cell = i;
    }
    for (j, cell) in d.iter_mut().take(width).enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance() {
        assert_eq!(distance("port", "port"), 0);
        assert_eq!(distance("prot", "port"), 1);
        assert_eq!(distance("pool_sise", "pool_size"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    #[test]
    fn suggestions() {
        let keys = ["name", "host", "port", "database_name"];
        assert_eq!(suggestion("hots", &keys), "; did you mean \"host\"?");
        assert_eq!(suggestion("Port", &keys), "; did you mean \"port\"?");
        assert_eq!(suggestion("dbname", &keys), "; did you mean \"database_name\"?");
        assert_eq!(suggestion("dbname", &["name", "host"]), "");
        assert_eq!(suggestion("auth_type", &["name", "auth"]), "; did you mean \"auth\"?");
        assert_eq!(suggestion("auth_method", &["auth"]), "; did you mean \"auth\"?");
        assert_eq!(
            suggestion("pool_size", &["default_pool_size", "workers"]),
            "; did you mean \"default_pool_size\"?"
        );
        assert_eq!(suggestion("xyzzy", &keys), "");
        assert_eq!(
            suggestion("pool_size", &["pool_mode", "default_pool_size"]),
            "; did you mean \"default_pool_size\"?"
        );
        assert_eq!(suggestion("pool_sise", &["pool_mode", "pool_size"]), "; did you mean \"pool_size\"?");
    }

    #[test]
    fn long_values_are_cut() {
        let long = "x".repeat(100);
        let shown = quote_value(&long);
        assert!(shown.len() < 70 && shown.ends_with("..."), "{shown}");
        assert_eq!(quote_value("a\"b"), "\"a\\\"b\"");
    }

    #[test]
    fn odd_keys_are_quoted_in_paths() {
        let table = Table::new();
        let reader = Reader::new(&table, "general");
        assert_eq!(reader.path_of("pool-size"), "general.pool-size");
        assert_eq!(reader.path_of("a b"), "general.\"a b\"");
    }
}
