//! Single-use join tokens, each bound to one identity, for a workload's
//! first certificate.
//!
//! A token is 32 random bytes (base64url). Only its SHA-256 is stored, as a
//! file named after the hash in the CA directory's `tokens/` folder (mode
//! 0600), holding the identity and the expiry. Redeeming renames the file
//! away before reading it: a rename succeeds once, so a token works once
//! even with `mesh-ca token` and `mesh-ca serve` in different processes.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use mesh_core::identity::SpiffeId;
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::CaError;
use crate::manager::unix_secs;
use crate::store::{create_private_dir, write_file};

/// Why a join token was not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No such token: never issued, or already used.
    #[error("unknown or already used join token")]
    Unknown,
    /// The token expired before it was used.
    #[error("the join token expired")]
    Expired,
    /// The token store is unreadable.
    #[error("token store: {0}")]
    Store(String),
}

/// The join tokens of one CA directory.
#[derive(Debug, Clone)]
pub struct TokenStore {
    dir: PathBuf,
}

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64url(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + 3);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(B64URL[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl TokenStore {
    /// The token store of the CA directory `ca_dir`.
    pub fn new(ca_dir: &Path) -> Self {
        Self {
            dir: ca_dir.join("tokens"),
        }
    }

    fn path_of(&self, token: &str) -> PathBuf {
        self.dir
            .join(hex(digest(&SHA256, token.as_bytes()).as_ref()))
    }

    /// Creates a token for `id`, valid for `ttl`; returns the token.
    pub fn create(&self, id: &SpiffeId, ttl: Duration) -> Result<String, CaError> {
        // Never one starting with `-`, which command lines would take for a
        // flag (one token in 64 did, and broke `--token "$T"` in scripts).
        let token = loop {
            let mut raw = [0u8; 32];
            SystemRandom::new()
                .fill(&mut raw)
                .map_err(|_| CaError::Random)?;
            let token = base64url(&raw);
            if !token.starts_with('-') {
                break token;
            }
        };
        create_private_dir(&self.dir)?;
        let expires = unix_secs(SystemTime::now() + ttl);
        write_file(
            &self.path_of(&token),
            format!("{id}\n{expires}\n").as_bytes(),
            0o600,
        )?;
        Ok(token)
    }

    /// Redeems a token: returns its identity and forgets it.
    pub fn redeem(&self, token: &str) -> Result<SpiffeId, TokenError> {
        if token.is_empty() || token.len() > 128 || !token.bytes().all(|b| B64URL.contains(&b)) {
            return Err(TokenError::Unknown);
        }
        let path = self.path_of(token);
        let mut claim = [0u8; 8];
        SystemRandom::new()
            .fill(&mut claim)
            .map_err(|_| TokenError::Store("random source failed".into()))?;
        let claimed = path.with_extension(format!("used-{}", hex(&claim)));
        match fs::rename(&path, &claimed) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(TokenError::Unknown),
            Err(e) => return Err(TokenError::Store(e.to_string())),
        }
        let content = fs::read_to_string(&claimed).map_err(|e| TokenError::Store(e.to_string()));
        let _ = fs::remove_file(&claimed);
        let content = content?;
        let mut lines = content.lines();
        let id = lines
            .next()
            .and_then(|l| SpiffeId::parse(l).ok())
            .ok_or_else(|| TokenError::Store("corrupt token file".into()))?;
        let expires: u64 = lines
            .next()
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| TokenError::Store("corrupt token file".into()))?;
        if unix_secs(SystemTime::now()) >= expires {
            return Err(TokenError::Expired);
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_token_starts_like_a_flag() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        let id = SpiffeId::parse("spiffe://td/ns/a/sa/b").unwrap();
        // One in 64 would without the guard: 1,000 tries miss that with a
        // chance of about 1 in 10^7.
        for _ in 0..1000 {
            let token = store.create(&id, Duration::from_secs(60)).unwrap();
            assert!(!token.starts_with('-'), "{token}");
        }
    }

    #[test]
    fn a_token_works_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        let id = SpiffeId::parse("spiffe://td/ns/a/sa/b").unwrap();
        let token = store.create(&id, Duration::from_secs(60)).unwrap();
        assert_eq!(token.len(), 43);
        assert_eq!(store.redeem(&token).unwrap(), id);
        assert!(matches!(store.redeem(&token), Err(TokenError::Unknown)));
        assert!(matches!(
            store.redeem("../../etc/passwd"),
            Err(TokenError::Unknown)
        ));
        let expired = store.create(&id, Duration::ZERO).unwrap();
        assert!(matches!(store.redeem(&expired), Err(TokenError::Expired)));
        assert!(matches!(store.redeem(&expired), Err(TokenError::Unknown)));
    }

    #[test]
    fn base64url_lengths() {
        assert_eq!(base64url(&[0xff]), "_w");
        assert_eq!(base64url(&[0, 0, 0]), "AAAA");
        assert_eq!(base64url(b"hi!"), "aGkh");
    }
}
