//! Statement inspection, first with a small lexer over SQL text
//! (quotes, dollar quotes, comments, identifiers), enough to recognise a
//! single `PREPARE name ...`, `EXECUTE name ...` or `DEALLOCATE name`
//! statement. Pure; anything it is unsure about is `None`, and callers then
//! leave the statement alone.

pub mod grammar;

/// A reference to an SQL-level prepared statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlPrepared {
    /// `PREPARE name [(types)] AS statement`
    Prepare(String),
    /// `EXECUTE name [(args)]`
    Execute(String),
    /// `DEALLOCATE [PREPARE] name`
    Deallocate(String),
    /// `DEALLOCATE [PREPARE] ALL`
    DeallocateAll,
}

/// Recognises `text` as exactly one PREPARE, EXECUTE or DEALLOCATE
/// statement (an optional trailing `;` and comments allowed).
pub fn sql_prepared(text: &[u8]) -> Option<SqlPrepared> {
    // Every query passes here: let the first word turn most away before the
    // UTF-8 check and the lexer (comments and quotes take the long way).
    match text.iter().find(|b| !b.is_ascii_whitespace()).map(u8::to_ascii_lowercase) {
        Some(b'p' | b'e' | b'd' | b'/' | b'-' | b'(') => {}
        _ => return None,
    }
    let text = std::str::from_utf8(text).ok()?;
    let mut lx = Lexer { s: text.as_bytes(), pos: 0, quoted_last: false };
    let first = lx.word()?;
    let out = match first.as_str() {
        "prepare" => SqlPrepared::Prepare(lx.name()?),
        "execute" => SqlPrepared::Execute(lx.name()?),
        "deallocate" => {
            let mut w = lx.name()?;
            if w == "prepare" {
                let save = lx.pos;
                match lx.name() {
                    Some(n) => w = n,
                    None => lx.pos = save,
                }
            }
            if w == "all" && !lx.quoted_last {
                return lx.only_end().then_some(SqlPrepared::DeallocateAll);
            }
            return lx.only_end().then_some(SqlPrepared::Deallocate(w));
        }
        _ => return None,
    };
    lx.single_statement().then_some(out)
}

struct Lexer<'a> {
    s: &'a [u8],
    pos: usize,
    /// Whether the last name read was double-quoted.
    quoted_last: bool,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    /// Skips whitespace and comments; false on an unterminated comment.
    fn skip_blank(&mut self) -> bool {
        loop {
            match self.peek() {
                // Postgres's scanner: space, \t, \n, \r, \f, \v.
                Some(c) if c.is_ascii_whitespace() || c == 0x0b => self.pos += 1,
                // A `--` comment ends at \n or \r, as in Postgres's scanner.
                Some(b'-') if self.s.get(self.pos + 1) == Some(&b'-') => {
                    while let Some(c) = self.peek() {
                        self.pos += 1;
                        if c == b'\n' || c == b'\r' {
                            break;
                        }
                    }
                }
                Some(b'/') if self.s.get(self.pos + 1) == Some(&b'*') => {
                    self.pos += 2;
                    let mut depth = 1;
                    while depth > 0 {
                        match (self.peek(), self.s.get(self.pos + 1)) {
                            (None, _) => return false,
                            (Some(b'*'), Some(b'/')) => {
                                depth -= 1;
                                self.pos += 2;
                            }
                            (Some(b'/'), Some(b'*')) => {
                                depth += 1;
                                self.pos += 2;
                            }
                            _ => self.pos += 1,
                        }
                    }
                }
                _ => return true,
            }
        }
    }

    /// An unquoted keyword, lower-cased.
    fn word(&mut self) -> Option<String> {
        if !self.skip_blank() {
            return None;
        }
        let start = self.pos;
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == b'_' || c == b'$') {
            self.pos += 1;
        }
        (self.pos > start).then(|| String::from_utf8_lossy(&self.s[start..self.pos]).to_ascii_lowercase())
    }

    /// An identifier as Postgres folds it: unquoted lower-cased, quoted exact.
    fn name(&mut self) -> Option<String> {
        self.quoted_last = false;
        if !self.skip_blank() {
            return None;
        }
        if self.peek() == Some(b'"') {
            self.quoted_last = true;
            self.pos += 1;
            let mut out = Vec::new();
            loop {
                match self.peek()? {
                    b'"' if self.s.get(self.pos + 1) == Some(&b'"') => {
                        out.push(b'"');
                        self.pos += 2;
                    }
                    b'"' => {
                        self.pos += 1;
                        break;
                    }
                    c => {
                        out.push(c);
                        self.pos += 1;
                    }
                }
            }
            return String::from_utf8(out).ok().filter(|n| !n.is_empty());
        }
        let c = self.peek()?;
        if !(c.is_ascii_alphabetic() || c == b'_' || c >= 0x80) {
            return None;
        }
        let start = self.pos;
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80)
        {
            self.pos += 1;
        }
        Some(String::from_utf8_lossy(&self.s[start..self.pos]).to_ascii_lowercase())
    }

    /// Nothing but blanks and at most one `;` left.
    fn only_end(&mut self) -> bool {
        if !self.skip_blank() {
            return false;
        }
        if self.peek() == Some(b';') {
            self.pos += 1;
            if !self.skip_blank() {
                return false;
            }
        }
        self.pos == self.s.len()
    }

    /// The rest holds no `;` outside quotes and comments except a trailing
    /// one: the text is a single statement.
    fn single_statement(&mut self) -> bool {
        loop {
            if !self.skip_blank() {
                return false;
            }
            let Some(c) = self.peek() else { return true };
            match c {
                b';' => return self.only_end(),
                b'\'' => {
                    if !self.skip_quoted(b'\'') {
                        return false;
                    }
                }
                b'"' => {
                    if !self.skip_quoted(b'"') {
                        return false;
                    }
                }
                b'$' => {
                    if !self.skip_dollar() {
                        return false;
                    }
                }
                _ => self.pos += 1,
            }
        }
    }

    /// Skips a quoted literal; doubled quotes and backslashes (for E'')
    /// are handled conservatively: a backslash skips the next byte, which
    /// can only make an ambiguous text look unterminated (then: None).
    fn skip_quoted(&mut self, q: u8) -> bool {
        // E'...' only when the E starts a token (in `name'x'` the e belongs
        // to the name and the string is a plain one).
        let escapes = q == b'\''
            && self.pos > 0
            && matches!(self.s[self.pos - 1], b'e' | b'E')
            && (self.pos < 2 || !(is_ident(self.s[self.pos - 2]) || self.s[self.pos - 2] >= 0x80));
        self.pos += 1;
        loop {
            match self.peek() {
                None => return false,
                Some(b'\\') if escapes => self.pos += 2,
                Some(c) if c == q => {
                    if self.s.get(self.pos + 1) == Some(&q) {
                        self.pos += 2;
                    } else {
                        self.pos += 1;
                        return true;
                    }
                }
                _ => self.pos += 1,
            }
        }
    }

    /// Skips `$tag$ ... $tag$`; a lone `$` (parameter `$1`) is skipped.
    fn skip_dollar(&mut self) -> bool {
        let start = self.pos;
        let mut end = start + 1;
        // Tag characters as Postgres allows them, bytes >= 0x80 included.
        while matches!(self.s.get(end), Some(c) if c.is_ascii_alphanumeric() || *c == b'_' || *c >= 0x80) {
            end += 1;
        }
        if self.s.get(end) != Some(&b'$') || self.s[start + 1..end].first().is_some_and(u8::is_ascii_digit) {
            self.pos = end;
            return true;
        }
        let tag = &self.s[start..=end];
        let body = end + 1;
        match self.s[body..].windows(tag.len()).position(|w| w == tag) {
            Some(i) => {
                self.pos = body + i + tag.len();
                true
            }
            None => false,
        }
    }
}

/// The prefix of the statement names pgwarden gives server-side statements;
/// client SQL may not mention it.
pub const RESERVED_PREFIX: &[u8] = b"__pgw_";

/// Whether `text` mentions a name with pgwarden's reserved prefix
/// (case-insensitive).
pub fn mentions_reserved_name(text: &[u8]) -> bool {
    // Compare only where an underscore starts a possible match, finding
    // underscores eight bytes at a time.
    let n = RESERVED_PREFIX.len();
    let mut i = 0;
    while let Some(at) = find_underscore(text, i) {
        if text.len() - at < n {
            return false;
        }
        if text[at..at + n].eq_ignore_ascii_case(RESERVED_PREFIX) {
            return true;
        }
        i = at + 1;
    }
    false
}

/// The position of the first `_` in `text` at or after `from`.
fn find_underscore(text: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut i = from;
    while i + 8 <= text.len() {
        let chunk = u64::from_le_bytes(text[i..i + 8].try_into().expect("eight bytes"));
        // A byte of `x` is zero where the chunk holds `_`; the expression
        // below is non-zero exactly when some byte of `x` is zero.
        let x = chunk ^ (ONES * u64::from(b'_'));
        if x.wrapping_sub(ONES) & !x & HIGHS != 0 {
            break;
        }
        i += 8;
    }
    text[i..].iter().position(|&b| b == b'_').map(|off| i + off)
}

/// `contains_ci(word, b"advisory") || contains_ci(word, b"set_config")` in
/// one pass that compares whole windows only where the first two letters
/// match (`| 0x20` lowercases a letter and maps no other byte onto one).
fn names_advisory_or_set_config(word: &[u8]) -> bool {
    const ADVISORY: &[u8] = b"advisory";
    const SET_CONFIG: &[u8] = b"set_config";
    let n = word.len();
    (0..n.saturating_sub(ADVISORY.len() - 1)).any(|i| match (word[i] | 0x20, word[i + 1] | 0x20) {
        (b'a', b'd') => word[i..i + ADVISORY.len()].eq_ignore_ascii_case(ADVISORY),
        (b's', b'e') => {
            n - i >= SET_CONFIG.len() && word[i..i + SET_CONFIG.len()].eq_ignore_ascii_case(SET_CONFIG)
        }
        _ => false,
    })
}

/// Whether running `text` may leave session state behind that no command
/// tag reveals, so the server connection must be `DISCARD ALL`ed before
/// another client uses it: temporary objects (`TEMP`, `TEMPORARY`,
/// `pg_temp`), session advisory locks, `set_config()`, and `DO` blocks
/// (which can do anything). Errs on the side of true: a false positive
/// costs one `DISCARD ALL`, a false negative leaks state.
pub fn may_leave_session_state(text: &[u8]) -> bool {
    // Every query passes here: dispatch on the first letter (words start
    // with an ASCII letter) and on length, so most words cost a compare.
    any_word(text, |word, rest| {
        (word.len() >= b"advisory".len() && names_advisory_or_set_config(word))
            || match word[0] | 0x20 {
                b't' => word_is(word, b"temp") || word_is(word, b"temporary"),
                b'p' => starts_with_ci(word, b"pg_temp") || word_is(word, b"pg_settings"),
                b'u' => word.len() == 1 && rest.first() == Some(&b'&'),
                b'd' => word_is(word, b"do") && do_block_follows(rest),
                _ => false,
            }
    })
}

/// Whether `hit(word, rest)` holds for any word of `text` (quotes and
/// comments included), `rest` being the text after the word.
fn any_word(text: &[u8], hit: impl Fn(&[u8], &[u8]) -> bool) -> bool {
    // A word is a run of identifier bytes that starts with a letter: a run
    // that starts with a digit, `_` or `$` holds no word, since every byte
    // after its first follows an identifier byte.
    let n = text.len();
    let mut i = 0;
    while i < n {
        if !is_ident(text[i]) {
            i += 1;
            continue;
        }
        let start = i;
        i += 1;
        while i < n && is_ident(text[i]) {
            i += 1;
        }
        if text[start].is_ascii_alphabetic() && hit(&text[start..i], &text[i..]) {
            return true;
        }
    }
    false
}

/// Whether `text` could change the session's effective role, for sessions
/// locked to the role a token named: `SET/RESET ROLE`, `SET/RESET SESSION
/// AUTHORIZATION`, `set_config()` (on any setting: its arguments may be
/// computed), writes to `pg_settings`, `DO` blocks, `DISCARD ALL`,
/// Unicode-escaped identifiers, and anything else that names `role` or
/// `session_authorization` as a word. Words inside string literals and
/// comments count too: it errs on the side of refusing, because a false
/// negative hands the client the authenticator's privileges.
pub fn may_change_role(text: &[u8]) -> bool {
    any_word(text, |word, rest| {
        word_is(word, b"role")
            || contains_ci(word, b"authorization")
            // A function, procedure, trigger or rule created now could
            // change the role when it runs later, out of sight.
            || word_is(word, b"function")
            || word_is(word, b"procedure")
            || word_is(word, b"trigger")
            || word_is(word, b"rule")
            // With it off, backslashes in strings escape quotes: the lexer
            // and the grammar would no longer split SQL as the server does.
            || contains_ci(word, b"standard_conforming_strings")
            || contains_ci(word, b"backslash_quote")
            || contains_ci(word, b"set_config")
            || word_is(word, b"pg_settings")
            || (word_is(word, b"u") && rest.first() == Some(&b'&'))
            || (word_is(word, b"do") && do_block_follows(rest))
            || (word_is(word, b"discard") && word_follows(rest, b"all"))
    })
}

/// Whether the next word after blanks and comments is `k`.
fn word_follows(rest: &[u8], k: &[u8]) -> bool {
    let mut lx = Lexer { s: rest, pos: 0, quoted_last: false };
    lx.skip_blank() && starts_word_ci(&rest[lx.pos..], k)
}

/// Words that make a statement a write (or DDL, or a sequence change) for a
/// read-only session, wherever they appear outside literals and comments.
/// `update` and `share` also catch `SELECT ... FOR UPDATE / SHARE`; `into`
/// catches `SELECT ... INTO`.
const WRITE_WORDS: &[&str] = &[
    "insert",
    "update",
    "delete",
    "merge",
    "truncate",
    "create",
    "alter",
    "drop",
    "grant",
    "revoke",
    "comment",
    "reindex",
    "vacuum",
    "cluster",
    "refresh",
    "security",
    "import",
    "reassign",
    "call",
    "lock",
    "nextval",
    "setval",
    "into",
    "share",
    "characteristics",
    "pg_settings",
];

/// Why `text` could write, for a read-only session; `None` if it reads
/// only, as far as its words show. Literals and comments are skipped; an
/// unterminated one makes the answer "could write". Writes hidden inside
/// functions are not visible here: the server's
/// `default_transaction_read_only = on` stops those.
pub fn may_write(text: &[u8]) -> Option<&'static str> {
    let mut toks = Tokens { lx: Lexer { s: text, pos: 0, quoted_last: false } }.peekable();
    let mut depth = 0i32;
    let mut copy_at: Option<i32> = None;
    // `SHOW transaction_read_only` only reads.
    let mut show = false;
    let mut first = true;
    let mut prev_read = false;
    while let Some(t) = toks.next() {
        let Some(t) = t else { return Some("an unterminated literal or comment") };
        let starts = std::mem::replace(&mut first, false);
        let was_read = std::mem::replace(&mut prev_read, false);
        match t {
            Tok::Punct(b'(') => depth += 1,
            Tok::Punct(b')') => depth -= 1,
            Tok::Punct(b';') => {
                copy_at = None;
                depth = 0;
                first = true;
                show = false;
            }
            Tok::Quoted(w) if !show && contains_ci(w, b"read_only") => {
                return Some("a change of transaction_read_only")
            }
            // A function may be called by its quoted name: "nextval"(...).
            Tok::Quoted(w) if w == b"nextval" || w == b"setval" => return Some("nextval/setval"),
            Tok::Quoted(w) if w == b"set_config" => return Some("set_config()"),
            Tok::Word(w) => {
                if starts && word_is(w, b"show") {
                    show = true;
                }
                if let Some(k) = WRITE_WORDS.iter().find(|k| word_is(w, k.as_bytes())) {
                    return Some(k);
                }
                if !show && contains_ci(w, b"read_only") {
                    return Some("a change of transaction_read_only");
                }
                if word_is(w, b"write") && was_read {
                    return Some("READ WRITE");
                }
                prev_read = word_is(w, b"read");
                if word_is(w, b"copy") {
                    copy_at = Some(depth);
                }
                if word_is(w, b"from") && copy_at == Some(depth) {
                    return Some("COPY FROM");
                }
                if contains_ci(w, b"set_config") {
                    // Its arguments may be computed: never allowed read-only.
                    return Some("set_config()");
                }
                if contains_ci(w, b"standard_conforming_strings") || contains_ci(w, b"backslash_quote") {
                    return Some("a change of how strings are read");
                }
                if word_is(w, b"do")
                    && !matches!(toks.peek(), Some(Some(Tok::Word(n))) if word_is(n, b"nothing"))
                {
                    return Some("DO");
                }
                if word_is(w, b"u") && matches!(toks.peek(), Some(Some(Tok::Punct(b'&')))) {
                    return Some("a Unicode-escaped name");
                }
            }
            _ => {}
        }
    }
    None
}

/// Words that keep a statement that writes nothing on the primary: they
/// fail on a hot standby (LISTEN, NOTIFY, SERIALIZABLE, a transaction id),
/// or depend on state of one server session (currval, EXECUTE of a
/// prepared statement whose text is not in view, cursors, two-phase
/// commit).
const PRIMARY_WORDS: &[&str] = &[
    "listen",
    "unlisten",
    "notify",
    "pg_notify",
    "serializable",
    "txid_current",
    "pg_current_xact_id",
    "currval",
    "lastval",
    "execute",
    "prepared",
    "declare",
    "fetch",
    "move",
    "close",
    "checkpoint",
    "analyze",
    "analyse",
];

/// Function name prefixes that write or fail on a hot standby: large
/// objects, WAL and replication control.
const PRIMARY_PREFIXES: &[&str] = &[
    "lo_",
    "pg_create_",
    "pg_drop_",
    "pg_switch_wal",
    "pg_current_wal",
    "pg_logical_emit",
    "pg_replication_origin",
];

/// Whether `text`, though it may write nothing, must still run on the
/// primary: a `BEGIN` or `START TRANSACTION` not marked `READ ONLY` (what
/// follows it is unknown), a word of [`PRIMARY_WORDS`], an advisory lock
/// (it must exclude sessions on the primary), or an unterminated literal.
/// Comments and literals are skipped.
pub fn needs_primary(text: &[u8]) -> bool {
    let toks = Tokens { lx: Lexer { s: text, pos: 0, quoted_last: false } };
    let (mut begins, mut read_only, mut prev_read, mut prev_for) = (false, false, false, false);
    for t in toks {
        let after_for = std::mem::replace(&mut prev_for, false);
        let name = match t {
            None => return true,
            // SET transaction_isolation = 'serializable', and the like.
            Some(Tok::Literal(l)) if contains_ci(l, b"serializable") => return true,
            Some(Tok::Punct(b';')) => {
                if begins && !read_only {
                    return true;
                }
                (begins, read_only, prev_read) = (false, false, false);
                continue;
            }
            Some(Tok::Word(w)) => {
                // A row lock anywhere: FOR UPDATE / NO KEY UPDATE / SHARE /
                // KEY SHARE.
                if after_for && [&b"update"[..], b"share", b"no", b"key"].iter().any(|k| word_is(w, k)) {
                    return true;
                }
                prev_for = word_is(w, b"for");
                if word_is(w, b"begin") || word_is(w, b"start") {
                    begins = true;
                }
                if prev_read && word_is(w, b"only") {
                    read_only = true;
                }
                prev_read = word_is(w, b"read");
                w
            }
            Some(Tok::Quoted(w)) => w,
            Some(_) => continue,
        };
        if PRIMARY_WORDS.iter().any(|k| word_is(name, k.as_bytes()))
            || PRIMARY_PREFIXES.iter().any(|p| starts_with_ci(name, p.as_bytes()))
            || contains_ci(name, b"advisory")
        {
            return true;
        }
    }
    begins && !read_only
}

/// A statement that sets pgwarden's own routing: `SET [SESSION | LOCAL]
/// pgwarden.route {= | TO} 'primary' | 'auto' | DEFAULT`, `RESET
/// pgwarden.route`, and `RESET ALL` / `DISCARD ALL` (which end a pin).
/// Returns `Some(Ok(true))` to pin the session's transactions to the
/// primary, `Some(Ok(false))` to route them again, `Some(Err(value))` for
/// a value pgwarden does not know, `None` when `text` sets none of it.
pub fn route_setting(text: &[u8]) -> Option<Result<bool, String>> {
    let toks: Vec<Tok<'_>> =
        Tokens { lx: Lexer { s: text, pos: 0, quoted_last: false } }.map_while(|t| t).collect();
    let mut found = None;
    for stmt in toks.split(|t| matches!(t, Tok::Punct(b';'))) {
        let words = |i: usize, k: &[u8]| matches!(stmt.get(i), Some(Tok::Word(w)) if word_is(w, k));
        let route_at = |i: usize| {
            (words(i, b"pgwarden") || matches!(stmt.get(i), Some(Tok::Quoted(w)) if *w == b"pgwarden"))
                && matches!(stmt.get(i + 1), Some(Tok::Punct(b'.')))
                && (words(i + 2, b"route")
                    || matches!(stmt.get(i + 2), Some(Tok::Quoted(w)) if *w == b"route"))
        };
        if words(0, b"reset") && (words(1, b"all") || route_at(1)) || words(0, b"discard") && words(1, b"all")
        {
            found = Some(Ok(false));
            continue;
        }
        if !words(0, b"set") {
            continue;
        }
        let at = if words(1, b"session") || words(1, b"local") { 2 } else { 1 };
        if !route_at(at) {
            continue;
        }
        let value = match (stmt.get(at + 3), stmt.get(at + 4), stmt.len()) {
            (Some(Tok::Punct(b'=')), Some(v), n) if n == at + 5 => v,
            (Some(Tok::Word(to)), Some(v), n) if word_is(to, b"to") && n == at + 5 => v,
            _ => return Some(Err(String::new())),
        };
        let v: &[u8] = match value {
            Tok::Word(w) => w,
            Tok::Literal(l) if l.len() >= 2 && l[0] == b'\'' => &l[1..l.len() - 1],
            _ => b"?",
        };
        found = Some(if v.eq_ignore_ascii_case(b"primary") {
            Ok(true)
        } else if v.eq_ignore_ascii_case(b"auto") || v.eq_ignore_ascii_case(b"default") {
            Ok(false)
        } else {
            Err(String::from_utf8_lossy(v).into_owned())
        });
    }
    found
}

/// Where a statement may run, by its words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// It only reads, and needs nothing only the primary has.
    Read,
    Primary,
    /// A query the lexer flagged as a possible write: the grammar decides
    /// (`grammar::write_cleared`, cached per shard).
    AskGrammar,
}

/// The lexical half of read/write routing: a statement mentioning pgwarden
/// (a `/* pgwarden:primary */` hint, `SET pgwarden.route`) or needing the
/// primary ([`needs_primary`]) goes there; one [`may_write`] flags goes
/// there unless it starts like a query the grammar may clear.
pub fn route_of(text: &[u8]) -> Route {
    if contains_ci(text, b"pgwarden") || needs_primary(text) {
        return Route::Primary;
    }
    match may_write(text) {
        None => Route::Read,
        Some(_) if may_be_select(text) => Route::AskGrammar,
        Some(_) => Route::Primary,
    }
}

/// Whether `text` starts like a query the grammar could clear as a read
/// (`SELECT`, `WITH`, `VALUES`, `TABLE`, or a parenthesis), so that other
/// statements the lexer flagged skip the parse.
pub fn may_be_select(text: &[u8]) -> bool {
    let mut toks = Tokens { lx: Lexer { s: text, pos: 0, quoted_last: false } };
    match toks.next() {
        Some(Some(Tok::Word(w))) => {
            word_is(w, b"select") || word_is(w, b"with") || word_is(w, b"values") || word_is(w, b"table")
        }
        Some(Some(Tok::Punct(b'('))) => true,
        _ => false,
    }
}

/// A token of [`Tokens`].
enum Tok<'a> {
    Word(&'a [u8]),
    /// A quoted identifier's contents.
    Quoted(&'a [u8]),
    /// A string literal (dollar-quoted too), quotes included: its contents
    /// never count as words.
    Literal(&'a [u8]),
    /// `$1`.
    Param,
    Punct(u8),
}

/// SQL as words, quoted names, literals, parameters and punctuation,
/// comments skipped, without allocating. Yields `None` (then stops) on an
/// unterminated literal, quoted name or comment.
struct Tokens<'a> {
    lx: Lexer<'a>,
}

impl<'a> Iterator for Tokens<'a> {
    type Item = Option<Tok<'a>>;

    fn next(&mut self) -> Option<Option<Tok<'a>>> {
        let lx = &mut self.lx;
        let text = lx.s;
        if lx.pos > text.len() {
            return None;
        }
        if !lx.skip_blank() {
            lx.pos = text.len() + 1;
            return Some(None);
        }
        let c = lx.peek()?;
        let start = lx.pos;
        let tok = match c {
            b'\'' | b'"' => {
                if !lx.skip_quoted(c) {
                    lx.pos = text.len() + 1;
                    return Some(None);
                }
                if c == b'"' {
                    Tok::Quoted(&text[start + 1..lx.pos - 1])
                } else {
                    Tok::Literal(&text[start..lx.pos])
                }
            }
            b'$' => {
                if !lx.skip_dollar() {
                    lx.pos = text.len() + 1;
                    return Some(None);
                }
                let body = &text[start..lx.pos];
                if body.len() > 1 && body[1..].iter().all(u8::is_ascii_digit) {
                    Tok::Param
                } else {
                    Tok::Literal(body)
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                while matches!(lx.peek(), Some(c) if is_ident(c) || c >= 0x80) {
                    lx.pos += 1;
                }
                Tok::Word(&text[start..lx.pos])
            }
            c => {
                lx.pos += 1;
                Tok::Punct(c)
            }
        };
        Some(Some(tok))
    }
}

fn is_ident(c: u8) -> bool {
    IDENT[c as usize]
}

/// Bytes that continue an identifier: ASCII letters and digits, `_`, `$`.
static IDENT: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || b == b'_' || b == b'$';
        c += 1;
    }
    t
};

fn word_is(w: &[u8], k: &[u8]) -> bool {
    w.eq_ignore_ascii_case(k)
}

fn starts_with_ci(w: &[u8], k: &[u8]) -> bool {
    w.len() >= k.len() && w[..k.len()].eq_ignore_ascii_case(k)
}

/// Whether `w` contains `k`, ASCII case-insensitively.
pub fn contains_ci(w: &[u8], k: &[u8]) -> bool {
    let Some((&first, rest)) = k.split_first() else { return true };
    if w.len() < k.len() {
        return false;
    }
    // Compare whole windows only where the first byte matches.
    let first = first.to_ascii_lowercase();
    (0..=w.len() - k.len())
        .any(|i| w[i].to_ascii_lowercase() == first && w[i + 1..i + k.len()].eq_ignore_ascii_case(rest))
}

/// After the word DO: anything but the NOTHING or UPDATE of `ON CONFLICT
/// DO ...` starts an anonymous code block (comments skipped).
fn do_block_follows(rest: &[u8]) -> bool {
    let mut lx = Lexer { s: rest, pos: 0, quoted_last: false };
    if !lx.skip_blank() {
        return true;
    }
    let next = &rest[lx.pos..];
    !(starts_word_ci(next, b"nothing") || starts_word_ci(next, b"update"))
}

fn starts_word_ci(s: &[u8], k: &[u8]) -> bool {
    starts_with_ci(s, k) && s.get(k.len()).is_none_or(|&c| !is_ident(c))
}

/// A statement that makes the server itself raise `sqlstate` with
/// `message`: the proxy sends it instead of a statement it refuses, so the
/// error arrives in order and the transaction fails as Postgres would fail
/// it.
pub fn raise_sql(sqlstate: &str, message: &str) -> String {
    debug_assert!(sqlstate.len() == 5 && sqlstate.bytes().all(|b| b.is_ascii_alphanumeric()));
    let mut quoted = String::from("E'");
    for c in message.chars() {
        match c {
            '\'' => quoted.push_str("''"),
            '\\' => quoted.push_str("\\\\"),
            '$' => quoted.push_str("\\x24"),
            c => quoted.push(c),
        }
    }
    quoted.push('\'');
    format!("DO $pgw$BEGIN RAISE EXCEPTION USING ERRCODE = '{sqlstate}', MESSAGE = {quoted}; END$pgw$")
}

#[cfg(test)]
mod tests {
    proptest::proptest! {
        #[test]
        fn inspection_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = may_write(&bytes);
            let _ = may_change_role(&bytes);
        }

        /// The per-query scans take shortcuts; they must answer exactly as
        /// the plain versions below, on texts made of the words they look
        /// for, their near misses, quotes, comments and odd bytes.
        #[test]
        fn fast_scans_agree_with_plain_ones(tokens in proptest::collection::vec(0..SCAN_TOKENS.len(), 0..24)) {
            let text: Vec<u8> = tokens.iter().flat_map(|&i| SCAN_TOKENS[i].as_bytes().iter().copied()).collect();
            proptest::prop_assert_eq!(may_leave_session_state(&text), plain_may_leave_session_state(&text));
            proptest::prop_assert_eq!(mentions_reserved_name(&text), plain_mentions_reserved_name(&text));
            proptest::prop_assert_eq!(sql_prepared(&text), plain_sql_prepared(&text));
        }

        /// `any_word` (which `may_change_role` and `may_leave_session_state`
        /// rest on) visits exactly the words, and the rests, that the plain
        /// version does, on any bytes.
        #[test]
        fn any_word_visits_what_the_plain_version_visits(
            tokens in proptest::collection::vec(0..SCAN_TOKENS.len(), 0..24),
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..16),
        ) {
            let mut text: Vec<u8> = tokens.iter().flat_map(|&i| SCAN_TOKENS[i].as_bytes().iter().copied()).collect();
            text.extend_from_slice(&noise);
            type Walk = fn(&[u8], &dyn Fn(&[u8], &[u8]) -> bool) -> bool;
            let visits = |walk: Walk| {
                let seen = std::cell::RefCell::new(Vec::new());
                walk(&text, &|word, rest| {
                    seen.borrow_mut().push((word.to_vec(), rest.len()));
                    false
                });
                seen.into_inner()
            };
            proptest::prop_assert_eq!(visits(|t, f| any_word(t, f)), visits(|t, f| plain_any_word(t, f)));
        }
    }

    const SCAN_TOKENS: &[&str] = &[
        " ",
        "\n",
        "\t",
        ";",
        "(",
        ")",
        ",",
        "'",
        "\"",
        "$$",
        "$x$",
        "/*",
        "*/",
        "--",
        "=",
        "&",
        ".",
        "1",
        "é",
        "\u{a0}",
        "_",
        "__",
        "__pgw_",
        "__PGW_1",
        "_pgw_",
        "prepare",
        "PREPARE",
        "execute",
        "Execute",
        "deallocate",
        "all",
        "ALL",
        "q",
        "as",
        "select",
        "from",
        "temp",
        "TEMP",
        "temporary",
        "temperature",
        "contemp",
        "pg_temp",
        "pg_temp_3",
        "pg_settings",
        "pg_setting",
        "advisory",
        "pg_advisory_lock",
        "ADVISORY",
        "set_config",
        "SET_CONFIG",
        "config",
        "advisor",
        "ad",
        "set_confi",
        "se",
        "abalance",
        "do",
        "DO",
        "d",
        "u",
        "U",
        "nothing",
        "update",
        "on",
        "conflict",
        "x",
        "pgbench_accounts",
    ];

    /// `any_word` as first written: a word starts at a letter that does not
    /// follow an identifier byte.
    fn plain_any_word(text: &[u8], hit: impl Fn(&[u8], &[u8]) -> bool) -> bool {
        let n = text.len();
        let mut i = 0;
        while i < n {
            let starts_word = text[i].is_ascii_alphabetic() && (i == 0 || !is_ident(text[i - 1]));
            if !starts_word {
                i += 1;
                continue;
            }
            let start = i;
            while i < n && is_ident(text[i]) {
                i += 1;
            }
            if hit(&text[start..i], &text[i..]) {
                return true;
            }
        }
        false
    }

    fn plain_may_leave_session_state(text: &[u8]) -> bool {
        plain_any_word(text, |word, rest| {
            word_is(word, b"temp")
                || word_is(word, b"temporary")
                || starts_with_ci(word, b"pg_temp")
                || contains_ci(word, b"advisory")
                || contains_ci(word, b"set_config")
                || word_is(word, b"pg_settings")
                || (word_is(word, b"u") && rest.first() == Some(&b'&'))
                || (word_is(word, b"do") && do_block_follows(rest))
        })
    }

    fn plain_mentions_reserved_name(text: &[u8]) -> bool {
        text.windows(RESERVED_PREFIX.len()).any(|w| w.eq_ignore_ascii_case(RESERVED_PREFIX))
    }

    /// `sql_prepared` without its first-byte shortcut.
    fn plain_sql_prepared(text: &[u8]) -> Option<SqlPrepared> {
        let ws = text.iter().take_while(|b| b.is_ascii_whitespace()).count();
        let mut probe = text.to_vec();
        // Make the first byte one the shortcut lets through, keeping the
        // meaning: a leading space is whitespace to both.
        probe.insert(ws, b' ');
        probe.insert(ws, b'/');
        probe.insert(ws + 1, b'*');
        probe.insert(ws + 2, b'*');
        probe.insert(ws + 3, b'/');
        sql_prepared(&probe)
    }

    #[test]
    fn writes_are_caught() {
        let writes = [
            ("INSERT INTO t VALUES (1)", "insert"),
            ("update t set a = 1", "update"),
            ("DELETE FROM t", "delete"),
            ("MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE", "merge"),
            ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "delete"),
            ("COPY t FROM STDIN", "COPY FROM"),
            ("copy t (a, b) from '/tmp/x'", "COPY FROM"),
            ("CREATE TABLE x (a int)", "create"),
            ("DROP TABLE t", "drop"),
            ("ALTER TABLE t ADD b int", "alter"),
            ("TRUNCATE t", "truncate"),
            ("SELECT * FROM t FOR UPDATE", "update"),
            ("SELECT * FROM t FOR KEY SHARE", "share"),
            ("SELECT * INTO newt FROM t", "into"),
            ("SELECT nextval('s')", "nextval"),
            ("select pg_catalog.setval('s', 1)", "setval"),
            ("CALL p()", "call"),
            ("DO $$ BEGIN NULL; END $$", "DO"),
            ("BEGIN READ WRITE", "READ WRITE"),
            ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE", "READ WRITE"),
            ("SET TRANSACTION READ WRITE", "READ WRITE"),
            ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", "characteristics"),
            ("SET default_transaction_read_only = off", "a change of transaction_read_only"),
            ("RESET transaction_read_only", "a change of transaction_read_only"),
            ("SET \"default_transaction_read_only\" TO off", "a change of transaction_read_only"),
            ("SELECT set_config('default_transaction_read_only', 'off', false)", "set_config()"),
            ("SELECT set_config($1, $2, false)", "set_config()"),
            ("SELECT set_config(concat('default_transaction_rea', 'd_only'), 'off', false)", "set_config()"),
            ("SELECT 1 --\rCOMMIT; BEGIN READ WRITE; DELETE FROM t; COMMIT", "READ WRITE"),
            ("SELECT name'x\\'; DELETE FROM t; --'", "delete"),
            ("SELECT $\u{e9}$ x $\u{e9}$; DELETE FROM t", "delete"),
            ("SET standard_conforming_strings = off", "a change of how strings are read"),
            ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", "insert"),
            ("PREPARE p AS UPDATE t SET a = 1", "update"),
            ("SELECT 1; DELETE FROM t", "delete"),
            ("SELECT 'unterminated", "an unterminated literal or comment"),
            ("SELECT \"nextval\"('s')", "nextval/setval"),
            (
                "SELECT pg_catalog.\"set_config\"('default_transaction_read_only', 'off', false)",
                "set_config()",
            ),
        ];
        for (q, why) in writes {
            assert_eq!(may_write(q.as_bytes()), Some(why), "{q}");
        }
        let reads = [
            "SELECT * FROM t WHERE note = 'please update'",
            "select a, b from t -- delete later\n where a > 1",
            "SELECT /* insert */ 1",
            "SELECT $$ drop table $$",
            "COPY t TO STDOUT",
            "COPY (SELECT * FROM t) TO STDOUT",
            "BEGIN READ ONLY",
            "BEGIN",
            "SHOW default_transaction_read_only",
            "EXPLAIN SELECT 1",
            "SELECT \"Update\" FROM t",
            "SELECT count(*) FROM pgbench_accounts WHERE aid = $1",
        ];
        for q in reads {
            assert_eq!(may_write(q.as_bytes()), None, "{q}");
        }
    }

    #[test]
    fn role_changes_are_caught() {
        let refused = [
            "SET ROLE postgres",
            "set role none",
            "SET LOCAL ROLE x",
            "RESET ROLE",
            "SET SESSION AUTHORIZATION postgres",
            "reset session authorization",
            "SET \"role\" = 'x'",
            "SET session_authorization = 'x'",
            "SELECT set_config('role', 'x', false)",
            "select pg_catalog.set_config($1, $2, false)",
            "UPDATE pg_settings SET setting = 'x' WHERE name = 'role'",
            "DO $$ BEGIN EXECUTE 'SET ROLE x'; END $$",
            "do 'begin null; end'",
            "DISCARD ALL",
            "discard /* c */ all",
            "SELECT 1; SET ROLE x",
            "SET U&\"r\\006Fle\" = 'x'",
            "ALTER DATABASE app SET role = 'x'",
            "select 1 /* role */",
            "CREATE FUNCTION pg_temp.f() RETURNS void LANGUAGE plpgsql AS $$BEGIN EXECUTE 'SET RO'||'LE x'; END$$",
            "CREATE TRIGGER t BEFORE INSERT ON x FOR EACH ROW EXECUTE FUNCTION f()",
            "SET standard_conforming_strings = off",
            "SELECT 1 --\rSET ROLE x",
        ];
        for q in refused {
            assert!(may_change_role(q.as_bytes()), "{q}");
        }
        let allowed = [
            "SELECT rolname FROM pg_roles",
            "SELECT current_user, session_user",
            "INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING",
            "DISCARD PLANS",
            "SET search_path = app",
            "SELECT 'roles'",
            "BEGIN; UPDATE accounts SET balance = 0; COMMIT",
        ];
        for q in allowed {
            assert!(!may_change_role(q.as_bytes()), "{q}");
        }
    }

    use super::*;

    fn p(s: &str) -> Option<SqlPrepared> {
        sql_prepared(s.as_bytes())
    }

    #[test]
    fn recognises_the_three_statements() {
        assert_eq!(p("PREPARE Foo (int) AS select $1"), Some(SqlPrepared::Prepare("foo".into())));
        assert_eq!(p("  -- hi\n prepare \"Foo\" as select ';';  "), Some(SqlPrepared::Prepare("Foo".into())));
        assert_eq!(p("execute foo(1, 'a;b')"), Some(SqlPrepared::Execute("foo".into())));
        assert_eq!(p("EXECUTE foo;"), Some(SqlPrepared::Execute("foo".into())));
        assert_eq!(p("deallocate prepare foo"), Some(SqlPrepared::Deallocate("foo".into())));
        assert_eq!(p("DEALLOCATE foo ;"), Some(SqlPrepared::Deallocate("foo".into())));
        assert_eq!(p("deallocate all"), Some(SqlPrepared::DeallocateAll));
        assert_eq!(p("deallocate \"all\""), Some(SqlPrepared::Deallocate("all".into())));
        assert_eq!(p("prepare q as select $x$ ; $x$"), Some(SqlPrepared::Prepare("q".into())));
    }

    #[test]
    fn session_state_detection() {
        for yes in [
            "create temp table t (x int)",
            "CREATE TEMPORARY TABLE t (x int)",
            "select * from pg_temp.t",
            "select pg_advisory_lock(1)",
            "SELECT set_config('role', 'x', false)",
            "do $$ begin perform 1; end $$",
            "DO LANGUAGE plpgsql 'begin end'",
            "select 1; do $x$ begin end $x$",
            "DO /*x*/ $$BEGIN SET ROLE other; END$$",
            "do\n-- c\n'begin end'",
            "select U&\"set\\005Fconfig\"('a','b',false)",
            "update pg_settings set setting = '1ms' where name = 'statement_timeout'",
        ] {
            assert!(may_leave_session_state(yes.as_bytes()), "{yes}");
        }
        for no in [
            "select temperature from t",
            "insert into t values (1) on conflict do nothing",
            "insert into t values (1) on conflict (x) do update set x = 2",
            "select 1",
            "update contemp set x = 1",
        ] {
            assert!(!may_leave_session_state(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn reserved_names_and_raise() {
        assert!(mentions_reserved_name(b"execute __PGW_3"));
        assert!(!mentions_reserved_name(b"select 1"));
        let s = raise_sql("42501", "it's $1 \\ no");
        assert_eq!(
            s,
            "DO $pgw$BEGIN RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = E'it''s \\x241 \\\\ no'; END$pgw$"
        );
    }

    #[test]
    fn anything_else_or_unsure_is_none() {
        assert_eq!(p("select 1"), None);
        assert_eq!(p("execute foo; select 1"), None);
        assert_eq!(p("prepare q as select 'unterminated"), None);
        assert_eq!(p("prepare q as select 1 /* open"), None);
        assert_eq!(p("deallocate foo bar"), None);
        assert_eq!(p("prepare"), None);
        assert_eq!(p("prepare q as select E'\\'; select 2'"), Some(SqlPrepared::Prepare("q".into())));
        assert_eq!(sql_prepared(&[0xff, 0xfe]), None);
    }

    #[test]
    fn what_needs_the_primary() {
        let primary = [
            "BEGIN",
            "begin isolation level repeatable read",
            "START TRANSACTION",
            "BEGIN READ ONLY; SELECT 1; COMMIT; BEGIN",
            "LISTEN x",
            "SELECT pg_notify('c', 'x')",
            "SELECT currval('s')",
            "EXECUTE q(1)",
            "SELECT pg_advisory_lock(1)",
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",
            "FETCH 10 FROM c",
            "SELECT 'unterminated",
            "SELECT \"lastval\"()",
            "ANALYZE t",
            "SELECT lo_unlink(42)",
            "SELECT pg_create_restore_point('x')",
            "SELECT * FROM (SELECT * FROM t FOR UPDATE) s",
            "SELECT 1 FROM t WHERE id IN (SELECT id FROM u FOR KEY SHARE)",
            "SET transaction_isolation = 'serializable'",
            "SELECT pg_current_wal_lsn()",
        ];
        for q in primary {
            assert!(needs_primary(q.as_bytes()), "{q}");
        }
        let anywhere = [
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "BEGIN READ ONLY",
            "start transaction isolation level repeatable read, read only",
            "SELECT 'begin' -- begin",
            "/* listen */ SELECT 1",
            "SHOW search_path",
            "SET search_path = a",
        ];
        for q in anywhere {
            assert!(!needs_primary(q.as_bytes()), "{q}");
        }
    }

    #[test]
    fn route_settings() {
        let r = |q: &str| route_setting(q.as_bytes());
        assert_eq!(r("SET pgwarden.route = 'primary'"), Some(Ok(true)));
        assert_eq!(r("set session pgwarden.route to primary;"), Some(Ok(true)));
        assert_eq!(r("SET pgwarden.route TO 'auto'"), Some(Ok(false)));
        assert_eq!(r("SET pgwarden.route = DEFAULT"), Some(Ok(false)));
        assert_eq!(r("RESET pgwarden.route"), Some(Ok(false)));
        assert_eq!(r("RESET ALL"), Some(Ok(false)));
        assert_eq!(r("DISCARD ALL"), Some(Ok(false)));
        assert_eq!(r("SET pgwarden.route = 'replica'"), Some(Err("replica".into())));
        assert_eq!(r("SET pgwarden.route 'primary'"), Some(Err(String::new())));
        assert_eq!(r("SELECT 1; SET pgwarden.route = 'primary'"), Some(Ok(true)));
        assert_eq!(r("SET search_path = 'pgwarden.route'"), None);
        assert_eq!(r("SELECT 1 /* pgwarden:primary */"), None);
    }
}
