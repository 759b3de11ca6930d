//! Who may do what: roles, and the HTTP API's bearer tokens.
//!
//! Three roles, each including the one before: `read` (status, list, wait,
//! result, events, stats, workers), `submit` (read + submit, cancel, retry)
//! and `admin` (everything, shutdown included). A token is stored only as
//! its SHA-256 (`[[http.tokens]] sha256 = "…"`); a request's bearer token is
//! hashed and compared with every stored hash in constant time, so neither
//! the token nor which entry matched leaks through timing. Pure but for
//! [`new_token`], which reads the kernel's randomness.

use std::fmt;
use std::net::SocketAddr;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// One `[[http.tokens]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who it is, for logs (never the token).
    pub name: String,
    /// SHA-256 of the token, 64 hex digits.
    pub sha256: String,
    /// What it may do.
    pub role: Role,
}

/// What a caller may do. Ordered: a higher role may do all a lower one may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Status, list, wait, result, events, stats, workers.
    Read,
    /// Read, and submit, cancel, retry.
    Submit,
    /// Everything, shutdown included.
    Admin,
}

impl Role {
    /// Its name in the config and in errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Submit => "submit",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Role::Read),
            "submit" => Ok(Role::Submit),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("unknown role {s:?} (read, submit, admin)")),
        }
    }
}

/// The address `[http] listen` names. A non-loopback one is refused without
/// TLS (the caller passes `true` when `[http.tls]` is set), unless
/// `allow_plaintext` says the operator accepts tokens and jobs travelling
/// in clear.
///
/// # Errors
/// What is wrong with it.
pub fn listen_addr(listen: &str, allow_plaintext: bool) -> Result<SocketAddr, String> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| format!("{listen:?} is not host:port (e.g. \"127.0.0.1:8910\")"))?;
    if !addr.ip().is_loopback() && !allow_plaintext {
        return Err(format!(
            "{addr} is not a loopback address, and the API would take tokens in clear text: \
             listen on 127.0.0.1, configure [http.tls], or set http.allow_plaintext = true"
        ));
    }
    Ok(addr)
}

/// Checks one configured token.
///
/// # Errors
/// What is wrong with it.
pub fn check_token_config(t: &TokenConfig) -> Result<(), String> {
    if t.name.is_empty() || t.name.len() > 128 || t.name.chars().any(char::is_control) {
        return Err("name must be 1 to 128 printable bytes".into());
    }
    parse_sha256(&t.sha256).map(|_| ())
}

fn parse_sha256(hex: &str) -> Result<[u8; 32], String> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return Err("sha256 must be 64 hex digits (jobvisor token new prints it)".into());
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        match (digit(pair[0]), digit(pair[1])) {
            (Some(h), Some(l)) => out[i] = h << 4 | l,
            _ => return Err("sha256 must be 64 hex digits".into()),
        }
    }
    Ok(out)
}

/// The SHA-256 of `token`, in hex: what `[[http.tokens]] sha256` holds.
pub fn sha256_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fresh token: `jv_` and 32 random bytes in hex.
///
/// # Errors
/// If the kernel's randomness cannot be read.
pub fn new_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(format!(
        "jv_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// The configured tokens, as hashes.
#[derive(Debug, Clone, Default)]
pub struct Tokens(Vec<(String, [u8; 32], Role)>);

impl Tokens {
    /// From `[[http.tokens]]` (already validated; a bad entry is skipped).
    pub fn new(config: &[TokenConfig]) -> Self {
        Tokens(
            config
                .iter()
                .filter_map(|t| Some((t.name.clone(), parse_sha256(&t.sha256).ok()?, t.role)))
                .collect(),
        )
    }

    /// How many are configured.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The name and role of the token `presented`, if it is one of ours.
    /// Every stored hash is compared, in constant time, whatever matches.
    pub fn check(&self, presented: &str) -> Option<(&str, Role)> {
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (name, stored, role) in &self.0 {
            if constant_time_eq(&hash, stored) && found.is_none() {
                found = Some((name.as_str(), *role));
            }
        }
        found
    }
}

/// `a == b`, taking the same time wherever they differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use TokenConfig;

    #[test]
    fn roles_are_ordered_and_named() {
        assert!(Role::Read < Role::Submit && Role::Submit < Role::Admin);
        for r in [Role::Read, Role::Submit, Role::Admin] {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn a_token_is_known_by_its_hash_only() {
        let token = new_token().unwrap();
        assert!(token.starts_with("jv_") && token.len() == 67, "{token}");
        assert_ne!(new_token().unwrap(), token);
        let hash = sha256_hex(&token);
        // The well-known SHA-256 of "abc".
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let cfg = [
            TokenConfig {
                name: "ci".into(),
                sha256: hash.to_uppercase(),
                role: Role::Submit,
            },
            TokenConfig {
                name: "ops".into(),
                sha256: sha256_hex("other"),
                role: Role::Admin,
            },
        ];
        for t in &cfg {
            check_token_config(t).unwrap();
        }
        let tokens = Tokens::new(&cfg);
        assert_eq!(tokens.check(&token), Some(("ci", Role::Submit)));
        assert_eq!(tokens.check("other"), Some(("ops", Role::Admin)));
        assert_eq!(tokens.check(&hash), None, "the hash itself is not a token");
        assert_eq!(tokens.check(""), None);
    }

    #[test]
    fn bad_token_entries_and_addresses_are_refused() {
        let t = |sha256: &str| TokenConfig {
            name: "x".into(),
            sha256: sha256.into(),
            role: Role::Read,
        };
        assert!(check_token_config(&t("abc")).is_err());
        assert!(check_token_config(&t(&"g".repeat(64))).is_err());
        assert!(listen_addr("127.0.0.1:8910", false).is_ok());
        assert!(listen_addr("[::1]:8910", false).is_ok());
        let e = listen_addr("0.0.0.0:8910", false).unwrap_err();
        assert!(e.contains("allow_plaintext"), "{e}");
        assert!(listen_addr("0.0.0.0:8910", true).is_ok());
        assert!(listen_addr("localhost", false).is_err());
    }
}
