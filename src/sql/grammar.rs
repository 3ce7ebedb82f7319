//! The second look, with the real Postgres grammar (pg_query), at statements
//! the lexer flagged. The lexer errs toward refusing: any role change or
//! write needs one of its words, so a statement it lets through is never
//! parsed. Here a flagged statement is cleared only when its parse tree
//! proves the flag was a false alarm: a plain query that merely names a
//! column `role`, or a string that says `update`. Anything else, including a
//! statement pg_query cannot parse, stays refused.

use pg_query::protobuf::{Node, SelectStmt};
use pg_query::NodeEnum;

use super::contains_ci;

/// Functions that could change the role or read-only state, or write,
/// wherever they are called; a statement naming one is never cleared.
const DANGEROUS_NAMES: [&[u8]; 4] = [b"set_config", b"pg_settings", b"nextval", b"setval"];

fn names_dangerous(text: &str) -> bool {
    let b = text.as_bytes();
    DANGEROUS_NAMES.iter().any(|n| contains_ci(b, n)) || contains_ci(b, b"u&")
}

fn statements(text: &str) -> Option<Vec<NodeEnum>> {
    let parsed = pg_query::parse(text, 0).ok()?;
    let mut out = Vec::with_capacity(parsed.protobuf.stmts.len());
    for raw in parsed.protobuf.stmts {
        out.push(raw.stmt?.node?);
    }
    (!out.is_empty()).then_some(out)
}

/// A statement the lexer flagged for a role change is a false alarm: every
/// statement is plain DML or a query, with no role-changing function.
pub fn role_change_cleared(text: &str) -> bool {
    if names_dangerous(text) {
        return false;
    }
    let Some(stmts) = statements(text) else { return false };
    stmts.iter().all(|s| {
        matches!(
            s,
            NodeEnum::SelectStmt(_)
                | NodeEnum::InsertStmt(_)
                | NodeEnum::UpdateStmt(_)
                | NodeEnum::DeleteStmt(_)
                | NodeEnum::MergeStmt(_)
        )
    })
}

/// A statement the lexer flagged as a write in a read-only session is a
/// false alarm: every statement is a SELECT with no INTO, no FOR
/// UPDATE/SHARE and no data-modifying WITH, and no writing function is named.
pub fn write_cleared(text: &str) -> bool {
    if names_dangerous(text) {
        return false;
    }
    let Some(stmts) = statements(text) else { return false };
    stmts.iter().all(|s| matches!(s, NodeEnum::SelectStmt(sel) if read_only_select(sel)))
}

fn read_only_select(s: &SelectStmt) -> bool {
    if s.into_clause.is_some() || !s.locking_clause.is_empty() {
        return false;
    }
    let ctes_read = s.with_clause.as_ref().is_none_or(|w| w.ctes.iter().all(cte_reads));
    let left = s.larg.as_deref().is_none_or(read_only_select);
    let right = s.rarg.as_deref().is_none_or(read_only_select);
    ctes_read && left && right
}

fn cte_reads(node: &Node) -> bool {
    match &node.node {
        Some(NodeEnum::CommonTableExpr(cte)) => match cte.ctequery.as_deref().and_then(|q| q.node.as_ref()) {
            Some(NodeEnum::SelectStmt(sel)) => read_only_select(sel),
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_false_alarms_are_cleared_and_nothing_else() {
        for q in [
            "SELECT role FROM users WHERE id = 1",
            "UPDATE users SET role = 'admin' WHERE id = $1",
            "SELECT 'role' AS x; SELECT 1",
            "INSERT INTO audit (what) VALUES ('SET ROLE attempt')",
        ] {
            assert!(role_change_cleared(q), "{q}");
        }
        for q in [
            "SET ROLE postgres",
            "RESET ROLE",
            "SET SESSION AUTHORIZATION x",
            "SELECT set_config('role', 'x', false)",
            "SELECT 1; SET ROLE x",
            "DO $$ BEGIN EXECUTE 'SET ROLE x'; END $$",
            "DISCARD ALL",
            "ALTER DATABASE app SET role = 'x'",
            "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ SET ROLE x $$",
            "UPDATE pg_settings SET setting = 'x' WHERE name = 'role'",
            "SELECT role FROM", // does not parse
            "PREPARE p AS SELECT set_config('role', 'x', false)",
        ] {
            assert!(!role_change_cleared(q), "{q}");
        }
    }

    #[test]
    fn write_false_alarms_are_cleared_and_nothing_else() {
        for q in [
            "SELECT comment, share FROM notes",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "SELECT a FROM t UNION SELECT b FROM u",
        ] {
            assert!(write_cleared(q), "{q}");
        }
        for q in [
            "INSERT INTO t VALUES (1)",
            "SELECT * INTO t2 FROM t",
            "SELECT * FROM t FOR UPDATE",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "SELECT 1 UNION (SELECT * FROM t FOR SHARE)",
            "SELECT nextval('s')",
            "SELECT set_config('default_transaction_read_only', 'off', false)",
            "COMMENT ON TABLE t IS 'x'",
            "SELECT comment FROM", // does not parse
        ] {
            assert!(!write_cleared(q), "{q}");
        }
    }
}
