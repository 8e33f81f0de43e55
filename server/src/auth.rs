//! Access control's data: the auth file (`--auth-file`), the tokens it lists
//! (stored only as SHA-256 hashes), their roles and stream prefixes, and what
//! changed between two versions of the file. The HTTP side (which route needs
//! which role, 401/403) is `http::auth`.
//!
//! A token is 32 random bytes written as `skald_` and 64 hex digits, so one
//! unsalted SHA-256 is enough to store it: nobody can guess 256 random bits,
//! and the hash only has to stop a reader of the file from using the tokens.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Most tokens one auth file may list (each request compares against all).
pub const MAX_TOKENS: usize = 1000;
/// Most stream prefixes one token may be limited to.
pub const MAX_PREFIXES: usize = 64;
/// What every token starts with.
pub const TOKEN_PREFIX: &str = "skald_";

/// What a token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads, `$all`, long-polls, subscriptions, stream metadata and `/info`.
    Reader,
    /// Reader plus appends.
    Writer,
    /// Everything: deletes, metadata changes, the catalog and, when not limited
    /// to stream prefixes, scavenge, verify, backup, stats and metrics.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }
}

/// Who a token belongs to and what it may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// The stream-name prefixes it is limited to; `None`: every stream.
    pub prefixes: Option<Arc<[String]>>,
}

impl Principal {
    /// Whether `stream` is within this token's prefixes.
    pub fn allows_stream(&self, stream: &str) -> bool {
        self.prefixes
            .as_deref()
            .is_none_or(|prefixes| prefixes.iter().any(|p| stream.starts_with(p.as_str())))
    }

    /// An admin limited to no prefixes: the only one allowed server-wide work.
    pub fn is_server_admin(&self) -> bool {
        self.role == Role::Admin && self.prefixes.is_none()
    }
}

/// Why an auth file was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("cannot read the auth file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the auth file is not valid: {0}")]
    Syntax(String),
    #[error("the auth file lists no tokens: nobody could use the server")]
    Empty,
    #[error("the auth file lists {0} tokens; at most {MAX_TOKENS} are allowed")]
    TooMany(usize),
    #[error("token '{name}': {reason}")]
    Token { name: String, reason: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    tokens: Vec<FileToken>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToken {
    name: String,
    role: Role,
    sha256: String,
    streams: Option<Vec<String>>,
}

/// The tokens of one version of the auth file.
#[derive(Debug, Clone)]
pub struct TokenTable {
    entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    hash: [u8; 32],
    principal: Arc<Principal>,
}

impl TokenTable {
    /// Reads and checks the auth file at `path`.
    pub fn load(path: &Path) -> Result<Self, AuthFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Checks an auth file's text: TOML with one `[[tokens]]` table per token.
    pub fn parse(text: &str) -> Result<Self, AuthFileError> {
        let doc: FileDoc =
            toml::from_str(text).map_err(|e| AuthFileError::Syntax(e.to_string()))?;
        if doc.tokens.is_empty() {
            return Err(AuthFileError::Empty);
        }
        if doc.tokens.len() > MAX_TOKENS {
            return Err(AuthFileError::TooMany(doc.tokens.len()));
        }
        let mut names = HashSet::new();
        let mut hashes = HashSet::new();
        let mut entries = Vec::with_capacity(doc.tokens.len());
        for token in doc.tokens {
            let refuse = |reason: &str| AuthFileError::Token {
                name: token.name.clone(),
                reason: reason.to_owned(),
            };
            if token.name.is_empty()
                || token.name.len() > 128
                || token.name.chars().any(char::is_control)
            {
                return Err(refuse("the name must be 1 to 128 printable characters"));
            }
            if !names.insert(token.name.clone()) {
                return Err(refuse("the name is listed twice"));
            }
            let hash = decode_hash(&token.sha256)
                .ok_or_else(|| refuse("sha256 must be 64 hex digits (from `skald token new`)"))?;
            if !hashes.insert(hash) {
                return Err(refuse("the same token hash is listed twice"));
            }
            let prefixes = match token.streams {
                None => None,
                Some(list) => {
                    if list.is_empty() || list.len() > MAX_PREFIXES {
                        return Err(refuse(&format!(
                            "streams must list 1 to {MAX_PREFIXES} prefixes (leave it out for every stream)"
                        )));
                    }
                    if list.iter().any(String::is_empty) {
                        return Err(refuse(
                            "a stream prefix is empty (leave streams out for every stream)",
                        ));
                    }
                    Some(Arc::from(list))
                }
            };
            entries.push(Entry {
                hash,
                principal: Arc::new(Principal {
                    name: token.name,
                    role: token.role,
                    prefixes,
                }),
            });
        }
        Ok(Self { entries })
    }

    /// How many tokens the table holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The token's owner, or `None` for an unknown token. Compares the hash
    /// with every entry in constant time, whichever matches.
    pub fn authenticate(&self, token: &str) -> Option<Arc<Principal>> {
        let hash = hash_token(token);
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.hash.ct_eq(&hash)) {
                found = Some(Arc::clone(&entry.principal));
            }
        }
        found
    }

    /// What changed from `self` to `newer`, one line per token, naming tokens
    /// and never showing them or their hashes.
    pub fn changes(&self, newer: &TokenTable) -> Vec<String> {
        fn by_name(table: &TokenTable) -> BTreeMap<&str, &Entry> {
            table
                .entries
                .iter()
                .map(|e| (e.principal.name.as_str(), e))
                .collect()
        }
        let (old, new) = (by_name(self), by_name(newer));
        let mut changes = Vec::new();
        for (name, entry) in &new {
            let p = &entry.principal;
            match old.get(name) {
                None => changes.push(format!(
                    "added token '{name}' ({})",
                    describe(p.role, &p.prefixes)
                )),
                Some(before) => {
                    let q = &before.principal;
                    if (q.role, &q.prefixes) != (p.role, &p.prefixes) {
                        changes.push(format!(
                            "token '{name}' changed from {} to {}",
                            describe(q.role, &q.prefixes),
                            describe(p.role, &p.prefixes)
                        ));
                    }
                    if before.hash != entry.hash {
                        changes.push(format!("token '{name}' has a new secret"));
                    }
                }
            }
        }
        for name in old.keys().filter(|name| !new.contains_key(*name)) {
            changes.push(format!("removed token '{name}'"));
        }
        changes
    }
}

/// The auth file in force, reloaded on SIGHUP.
#[derive(Debug)]
pub struct Authenticator {
    path: std::path::PathBuf,
    table: std::sync::RwLock<Arc<TokenTable>>,
}

impl Authenticator {
    /// Loads the auth file at `path`.
    pub fn open(path: &Path) -> Result<Self, AuthFileError> {
        Ok(Self {
            path: path.to_owned(),
            table: std::sync::RwLock::new(Arc::new(TokenTable::load(path)?)),
        })
    }

    /// The tokens in force.
    pub fn current(&self) -> Arc<TokenTable> {
        Arc::clone(
            &self
                .table
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Reads the file again; a valid one replaces the tokens in force, an
    /// invalid one leaves them as they were. Returns what changed.
    pub fn reload(&self) -> Result<Vec<String>, AuthFileError> {
        let newer = Arc::new(TokenTable::load(&self.path)?);
        let mut table = self
            .table
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changes = table.changes(&newer);
        *table = newer;
        Ok(changes)
    }
}

fn describe(role: Role, prefixes: &Option<Arc<[String]>>) -> String {
    match prefixes {
        None => format!("{}, every stream", role.as_str()),
        Some(list) => format!("{}, streams {:?}", role.as_str(), &list[..]),
    }
}

/// The SHA-256 of a token, as the auth file stores it (hex).
pub fn hash_token_hex(token: &str) -> String {
    hex(&hash_token(token))
}

fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh random token: `skald_` and 64 hex digits (256 bits from the
/// operating system's random source).
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("{TOKEN_PREFIX}{}", hex(&bytes)))
}

/// The auth file's entry for `token`: what `skald token new` prints to paste
/// into the file.
pub fn file_entry(name: &str, role: Role, prefixes: &[String], token: &str) -> String {
    let quote = |text: &str| serde_json::Value::from(text).to_string();
    let mut entry = format!(
        "[[tokens]]\nname = {}\nrole = \"{}\"\nsha256 = \"{}\"\n",
        quote(name),
        role.as_str(),
        hash_token_hex(token)
    );
    if !prefixes.is_empty() {
        let list: Vec<String> = prefixes.iter().map(|p| quote(p)).collect();
        entry.push_str(&format!("streams = [{}]\n", list.join(", ")));
    }
    entry
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn decode_hash(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(entries: &[(&str, &str, &str, Option<&[&str]>)]) -> String {
        entries
            .iter()
            .map(|(name, role, token, streams)| {
                let streams = streams.map_or(String::new(), |s| format!("streams = {s:?}\n"));
                format!(
                    "[[tokens]]\nname = {name:?}\nrole = {role:?}\nsha256 = {:?}\n{streams}",
                    hash_token_hex(token)
                )
            })
            .collect()
    }

    #[test]
    fn a_listed_token_authenticates_as_its_owner_and_others_do_not() {
        let table = TokenTable::parse(&file(&[
            ("ops", "admin", "skald_a", None),
            (
                "orders",
                "writer",
                "skald_b",
                Some(&["orders-", "billing-"]),
            ),
        ]))
        .expect("valid");
        let ops = table.authenticate("skald_a").expect("known");
        assert_eq!((ops.name.as_str(), ops.role), ("ops", Role::Admin));
        assert!(ops.is_server_admin() && ops.allows_stream("anything"));
        let orders = table.authenticate("skald_b").expect("known");
        assert_eq!(orders.role, Role::Writer);
        assert!(orders.allows_stream("orders-1") && orders.allows_stream("billing-"));
        assert!(!orders.allows_stream("order") && !orders.allows_stream("users-1"));
        assert!(table.authenticate("skald_c").is_none());
        assert!(table.authenticate("").is_none());
        // The hash itself is not a token.
        assert!(table.authenticate(&hash_token_hex("skald_a")).is_none());
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let cases: [(String, &str); 8] = [
            ("tokens = []".into(), "no tokens"),
            (
                "[[tokens]]\nname = \"x\"\nrole = \"root\"\nsha256 = \"00\"".into(),
                "unknown variant",
            ),
            (
                "[[tokens]]\nname = \"x\"\nrole = \"reader\"\nsha256 = \"00\"".into(),
                "64 hex",
            ),
            (
                file(&[("x", "reader", "a", None), ("x", "admin", "b", None)]),
                "listed twice",
            ),
            (
                file(&[("x", "reader", "a", None), ("y", "admin", "a", None)]),
                "hash is listed twice",
            ),
            (file(&[("x", "reader", "a", Some(&[]))]), "1 to 64 prefixes"),
            (
                file(&[("x", "reader", "a", Some(&[""]))]),
                "prefix is empty",
            ),
            (
                format!("{}secret = 1\n", file(&[("x", "reader", "a", None)])),
                "unknown field",
            ),
        ];
        for (text, expected) in cases {
            let err = TokenTable::parse(&text).expect_err(&text).to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn new_tokens_are_random_and_hash_to_what_the_file_stores() {
        let a = new_token().expect("random");
        let b = new_token().expect("random");
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        let table = TokenTable::parse(&file(&[("x", "reader", &a, None)])).expect("valid");
        assert!(table.authenticate(&a).is_some() && table.authenticate(&b).is_none());
        assert_eq!(decode_hash(&hash_token_hex(&a)), Some(hash_token(&a)));
    }

    #[test]
    fn a_printed_entry_parses_back_to_its_token() {
        let token = new_token().expect("random");
        let prefixes = ["orders-".to_owned(), "quote\"and\\slash\n".to_owned()];
        let entry = file_entry("ci \"bot\"", Role::Writer, &prefixes, &token);
        let table = TokenTable::parse(&entry).expect(&entry);
        let principal = table.authenticate(&token).expect("known");
        assert_eq!(principal.name, "ci \"bot\"");
        assert_eq!(principal.role, Role::Writer);
        assert_eq!(principal.prefixes.as_deref(), Some(&prefixes[..]));
        let open = file_entry("ops", Role::Admin, &[], &token);
        let table = TokenTable::parse(&open).expect(&open);
        assert!(table.authenticate(&token).expect("known").is_server_admin());
    }

    #[test]
    fn changes_name_tokens_and_never_show_secrets() {
        let old = TokenTable::parse(&file(&[
            ("keep", "reader", "skald_1", None),
            ("gone", "admin", "skald_2", None),
            ("demote", "admin", "skald_3", None),
            ("rotate", "writer", "skald_4", None),
        ]))
        .expect("valid");
        let new = TokenTable::parse(&file(&[
            ("keep", "reader", "skald_1", None),
            ("demote", "reader", "skald_3", Some(&["a-"])),
            ("rotate", "writer", "skald_5", None),
            ("fresh", "writer", "skald_6", None),
        ]))
        .expect("valid");
        let mut changes = old.changes(&new);
        changes.sort();
        assert_eq!(
            changes,
            [
                "added token 'fresh' (writer, every stream)",
                "removed token 'gone'",
                "token 'demote' changed from admin, every stream to reader, streams [\"a-\"]",
                "token 'rotate' has a new secret",
            ]
        );
        assert!(old.changes(&old).is_empty());
    }
}
