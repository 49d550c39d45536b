//! Provider tokens at rest: AES-256-GCM under a key of the server's key file, the key's id stored beside the
//! ciphertext, and the person and the provider as associated data, so a row copied to another person or another
//! provider does not open.
//!
//! The key file (a mounted Secret, kept with the signing keys) holds one key a line, `<id> <32 bytes base64>`;
//! the first line seals, every line opens. Rotating is: put a new line first, and drop the old one once every
//! connection has been written since (each refresh re-seals under the first key).

use std::collections::HashMap;
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// Why a key file cannot be used, or a sealed value cannot be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("provider token key file {0}")]
    KeyFile(String),
    #[error("no key {0:?} in the provider token key file")]
    UnknownKey(String),
    #[error(
        "a sealed provider token does not open: altered, or sealed for another person or provider"
    )]
    Opening,
}

/// The keys of one key file.
#[derive(Clone)]
pub struct Sealer {
    active: String,
    keys: HashMap<String, [u8; 32]>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("active", &self.active)
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl PartialEq for Sealer {
    fn eq(&self, other: &Self) -> bool {
        self.active == other.active && self.keys == other.keys
    }
}

/// A key id: short, and of characters that need no quoting anywhere it is written.
fn valid_key_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl Sealer {
    /// Reads the key lines (`#` comments and blank lines skipped).
    pub fn parse(text: &str) -> Result<Self, SealError> {
        let mut active = None;
        let mut keys = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| SealError::KeyFile(format!("line {}: {why}", n + 1));
            let (id, key) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| bad("expected `<key id> <key in base64>`"))?;
            if !valid_key_id(id) {
                return Err(bad("a key id is 1 to 64 letters, digits, '-', '_' or '.'"));
            }
            let key: [u8; 32] = STANDARD
                .decode(key.trim())
                .ok()
                .and_then(|k| k.try_into().ok())
                .ok_or_else(|| bad("the key must be 32 bytes in base64"))?;
            if keys.insert(id.to_owned(), key).is_some() {
                return Err(bad("the key id is used twice"));
            }
            active.get_or_insert_with(|| id.to_owned());
        }
        let active = active.ok_or_else(|| SealError::KeyFile("holds no key".into()))?;
        Ok(Sealer { active, keys })
    }

    pub fn load(path: &Path) -> Result<Self, SealError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SealError::KeyFile(format!("{}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| match e {
            SealError::KeyFile(m) => SealError::KeyFile(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// A new key file's text: one fresh key under `id`.
    pub fn generate(id: &str) -> String {
        let mut key = [0u8; 32];
        aws_lc_rs::rand::fill(&mut key).expect("the system random generator works");
        format!("{id} {}\n", STANDARD.encode(key))
    }

    /// The id of the key that seals.
    pub fn active_key(&self) -> &str {
        &self.active
    }

    /// Seals `plain` for `subject` at `provider` under the first key: `(key id, nonce ‖ ciphertext ‖ tag)`.
    pub fn seal(&self, subject: &str, provider: &str, plain: &str) -> (String, String) {
        let key = self
            .key(&self.active)
            .expect("the active key is one of the keys");
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("the system random generator works");
        let mut out = plain.as_bytes().to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(associated(subject, provider)),
            &mut out,
        )
        .expect("AES-GCM seals any length a token has");
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&out);
        (self.active.clone(), URL_SAFE_NO_PAD.encode(sealed))
    }

    /// Opens what [`Sealer::seal`] gave for the same subject and provider.
    pub fn open(
        &self,
        key_id: &str,
        sealed: &str,
        subject: &str,
        provider: &str,
    ) -> Result<String, SealError> {
        let key = self
            .key(key_id)
            .ok_or_else(|| SealError::UnknownKey(key_id.to_owned()))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(sealed)
            .map_err(|_| SealError::Opening)?;
        if bytes.len() < NONCE_LEN {
            return Err(SealError::Opening);
        }
        let (nonce, body) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Opening)?;
        let mut body = body.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(associated(subject, provider)), &mut body)
            .map_err(|_| SealError::Opening)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::Opening)
    }

    fn key(&self, id: &str) -> Option<LessSafeKey> {
        let bytes = self.keys.get(id)?;
        Some(LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, bytes).expect("32 bytes is an AES-256 key"),
        ))
    }
}

/// The associated data: a purpose label, then the person and the provider, each length-prefixed so that no
/// two pairs give the same bytes (`("a b", "c")` and `("a", "b c")` differ).
fn associated(subject: &str, provider: &str) -> Vec<u8> {
    let mut aad = b"mcp-authz provider token v1".to_vec();
    for part in [subject, provider] {
        aad.extend_from_slice(&(part.len() as u64).to_be_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_line(id: &str, byte: u8) -> String {
        format!("{id} {}\n", STANDARD.encode([byte; 32]))
    }

    #[test]
    fn a_sealed_token_opens_only_for_its_person_and_provider() {
        let sealer = Sealer::parse(&key_line("k1", 1)).expect("keys");
        let (kid, sealed) = sealer.seal("alice", "github", "gho_secret");
        assert_eq!(kid, "k1");
        assert!(!sealed.contains("gho_secret"));
        assert_eq!(
            sealer.open(&kid, &sealed, "alice", "github").as_deref(),
            Ok("gho_secret")
        );
        let mut altered = URL_SAFE_NO_PAD.decode(&sealed).expect("base64");
        let last = altered.len() - 1;
        altered[last] ^= 1;
        let altered = URL_SAFE_NO_PAD.encode(altered);
        // (key id, sealed, subject, provider, outcome)
        let cases = [
            (
                "k1",
                sealed.as_str(),
                "bob",
                "github",
                Err(SealError::Opening),
            ),
            (
                "k1",
                sealed.as_str(),
                "alice",
                "gitlab",
                Err(SealError::Opening),
            ),
            // The length prefix keeps ("alice", "github") apart from ("alicegit", "hub") and the like.
            (
                "k1",
                sealed.as_str(),
                "alicegit",
                "hub",
                Err(SealError::Opening),
            ),
            (
                "k1",
                altered.as_str(),
                "alice",
                "github",
                Err(SealError::Opening),
            ),
            ("k1", "short", "alice", "github", Err(SealError::Opening)),
            (
                "k1",
                "not base64!",
                "alice",
                "github",
                Err(SealError::Opening),
            ),
            (
                "k9",
                sealed.as_str(),
                "alice",
                "github",
                Err(SealError::UnknownKey("k9".into())),
            ),
        ];
        for (kid, sealed, subject, provider, want) in cases {
            assert_eq!(
                sealer.open(kid, sealed, subject, provider),
                want,
                "{kid} {subject} {provider}"
            );
        }
        // Two seals of one token differ (a fresh nonce each).
        assert_ne!(
            sealer.seal("alice", "github", "t").1,
            sealer.seal("alice", "github", "t").1
        );
    }

    #[test]
    fn a_rotated_file_seals_with_its_first_key_and_still_opens_the_old() {
        let old = Sealer::parse(&key_line("k1", 1)).expect("keys");
        let (kid, sealed) = old.seal("alice", "github", "refresh-1");
        let rotated =
            Sealer::parse(&format!("{}{}", key_line("k2", 2), key_line("k1", 1))).expect("keys");
        assert_eq!(rotated.active_key(), "k2");
        assert_eq!(
            rotated.open(&kid, &sealed, "alice", "github").as_deref(),
            Ok("refresh-1")
        );
        assert_eq!(rotated.seal("alice", "github", "x").0, "k2");
        let generated = Sealer::parse(&Sealer::generate("g1")).expect("a generated file loads");
        assert_eq!(generated.active_key(), "g1");
    }

    #[test]
    fn key_files_that_cannot_be_used_are_refused_with_the_line() {
        let short = format!("k1 {}", STANDARD.encode([1u8; 16]));
        let twice = format!("{}{}", key_line("k1", 1), key_line("k1", 2));
        let cases = [
            ("", "provider token key file holds no key"),
            ("# only a comment\n", "provider token key file holds no key"),
            (
                "k1",
                "provider token key file line 1: expected `<key id> <key in base64>`",
            ),
            (
                short.as_str(),
                "provider token key file line 1: the key must be 32 bytes in base64",
            ),
            (
                "k/1 AAAA",
                "provider token key file line 1: a key id is 1 to 64 letters, digits, '-', '_' or '.'",
            ),
            (
                twice.as_str(),
                "provider token key file line 2: the key id is used twice",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(
                Sealer::parse(text).expect_err(text).to_string(),
                want,
                "{text:?}"
            );
        }
    }
}
