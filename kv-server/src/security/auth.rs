//! Tokens and roles: the `--auth-file` format, the table a node loads from it, and what each
//! role may do. Pure data and decisions, no I/O past reading the file.
//!
//! The file has one token per line: `TOKEN NAME GRANTS`, where GRANTS is a comma-separated list
//! of `admin` (everything: keyspace creation, fault injection, membership, every keyspace),
//! `read:KEYSPACE` or `write:KEYSPACE` (write includes read; `*` is every keyspace). Blank
//! lines and lines starting with `#` are skipped.

use std::path::Path;

/// Shortest token accepted: a guessable token is no authentication.
pub const MIN_TOKEN_BYTES: usize = 16;
/// Most tokens one auth file may hold (every request compares against each).
pub const MAX_TOKENS: usize = 1024;

/// One grant of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Everything.
    Admin,
    /// Reads of a keyspace (`None`: every keyspace).
    Read(Option<String>),
    /// Reads and writes of a keyspace (`None`: every keyspace).
    Write(Option<String>),
}

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// Read a key of this keyspace.
    Read(&'a str),
    /// Write (put, delete, compare-and-swap) a key of this keyspace.
    Write(&'a str),
    /// Create keyspaces, inject faults, change membership.
    Admin,
}

impl std::fmt::Display for Action<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Read(ks) => write!(f, "read keyspace {ks:?} (needs read:{ks})"),
            Action::Write(ks) => write!(f, "write keyspace {ks:?} (needs write:{ks})"),
            Action::Admin => write!(f, "do this (needs admin)"),
        }
    }
}

/// Who a token belongs to and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The name given in the auth file (for messages and logs; never the token).
    pub name: String,
    /// Its grants.
    pub grants: Vec<Grant>,
}

impl Principal {
    /// True when one of its grants covers `action`.
    pub fn may(&self, action: Action<'_>) -> bool {
        let covers = |ks: &Option<String>, want: &str| ks.as_deref().is_none_or(|k| k == want);
        self.grants.iter().any(|g| match (g, action) {
            (Grant::Admin, _) => true,
            (Grant::Write(ks), Action::Read(want) | Action::Write(want)) => covers(ks, want),
            (Grant::Read(ks), Action::Read(want)) => covers(ks, want),
            _ => false,
        })
    }

    /// Its grants as written in the auth file.
    pub fn grants_text(&self) -> String {
        self.grants
            .iter()
            .map(|g| match g {
                Grant::Admin => "admin".to_string(),
                Grant::Read(ks) => format!("read:{}", ks.as_deref().unwrap_or("*")),
                Grant::Write(ks) => format!("write:{}", ks.as_deref().unwrap_or("*")),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A malformed auth file, naming the file, the line and what to fix.
#[derive(Debug, thiserror::Error)]
#[error("auth file {path}: {reason}")]
pub struct AuthFileError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// The tokens a node accepts.
#[derive(Debug, Clone, Default)]
pub struct AuthTable {
    entries: Vec<(String, Principal)>,
}

impl AuthTable {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<AuthTable, AuthFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| AuthFileError {
            path: path.display().to_string(),
            reason: format!("cannot be read: {e}"),
        })?;
        AuthTable::parse(&text).map_err(|reason| AuthFileError {
            path: path.display().to_string(),
            reason,
        })
    }

    /// Parses the text of an auth file (format in the module doc).
    pub fn parse(text: &str) -> Result<AuthTable, String> {
        let mut entries: Vec<(String, Principal)> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let n = n + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [token, name, grants] = fields[..] else {
                return Err(format!(
                    "line {n}: expected `TOKEN NAME GRANTS` (e.g. `<32 random hex digits> app write:orders,read:*`), found {} fields",
                    fields.len()
                ));
            };
            if token.len() < MIN_TOKEN_BYTES {
                return Err(format!(
                    "line {n} ({name}): the token has {} bytes; at least {MIN_TOKEN_BYTES} are needed (e.g. `openssl rand -hex 16`)",
                    token.len()
                ));
            }
            if entries.iter().any(|(t, _)| t == token) {
                return Err(format!("line {n} ({name}): this token is listed twice"));
            }
            let grants = grants
                .split(',')
                .map(|g| parse_grant(g).map_err(|e| format!("line {n} ({name}): {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            entries.push((
                token.to_string(),
                Principal {
                    name: name.to_string(),
                    grants,
                },
            ));
            if entries.len() > MAX_TOKENS {
                return Err(format!("more than {MAX_TOKENS} tokens"));
            }
        }
        if entries.is_empty() {
            return Err("no tokens: with no token nobody could use the node".into());
        }
        Ok(AuthTable { entries })
    }

    /// The principal of `token`, if it is listed. Compares against every token without
    /// stopping early, so the time taken says nothing about which bytes matched.
    pub fn principal(&self, token: &str) -> Option<&Principal> {
        let mut found = None;
        for (t, p) in &self.entries {
            if constant_time_eq(t.as_bytes(), token.as_bytes()) {
                found = Some(p);
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_grant(text: &str) -> Result<Grant, String> {
    let keyspace = |ks: &str| (ks != "*").then(|| ks.to_string());
    match text.split_once(':') {
        None if text == "admin" => Ok(Grant::Admin),
        Some(("read", ks)) if !ks.is_empty() => Ok(Grant::Read(keyspace(ks))),
        Some(("write", ks)) if !ks.is_empty() => Ok(Grant::Write(keyspace(ks))),
        _ => Err(format!(
            "unknown grant {text:?}: expected admin, read:KEYSPACE or write:KEYSPACE (KEYSPACE may be *)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# token name grants\n\
        0123456789abcdef0123456789abcdef ops admin\n\
        \n\
        aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa app write:orders,read:*\n\
        bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb viewer read:orders\n";

    #[test]
    fn roles_allow_what_they_name_and_nothing_else() {
        let table = AuthTable::parse(FILE).unwrap();
        let ops = table.principal("0123456789abcdef0123456789abcdef").unwrap();
        assert!(ops.may(Action::Admin) && ops.may(Action::Write("x")));
        let app = table.principal("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").unwrap();
        assert!(app.may(Action::Write("orders")) && app.may(Action::Read("orders")));
        assert!(app.may(Action::Read("users")));
        assert!(!app.may(Action::Write("users")));
        assert!(!app.may(Action::Admin));
        let viewer = table.principal("bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb").unwrap();
        assert!(viewer.may(Action::Read("orders")));
        assert!(!viewer.may(Action::Write("orders")));
        assert!(!viewer.may(Action::Read("users")));
        assert_eq!(app.grants_text(), "write:orders,read:*");
        assert!(table.principal("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").is_none());
        assert!(table.principal("").is_none());
    }

    #[test]
    fn a_malformed_file_is_refused_naming_the_line() {
        for (text, want) in [
            ("short app admin\n", "line 1 (app): the token has 5 bytes"),
            (
                "aaaaaaaaaaaaaaaaaaaa app admin\naaaaaaaaaaaaaaaaaaaa b admin\n",
                "line 2 (b): this token is listed twice",
            ),
            ("aaaaaaaaaaaaaaaaaaaa app root\n", "unknown grant \"root\""),
            ("aaaaaaaaaaaaaaaaaaaa app read:\n", "unknown grant"),
            ("aaaaaaaaaaaaaaaaaaaa app\n", "expected `TOKEN NAME GRANTS`"),
            ("# nothing\n", "no tokens"),
        ] {
            let err = AuthTable::parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
