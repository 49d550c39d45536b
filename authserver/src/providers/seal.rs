//! Provider tokens at rest: AES-256-GCM under a key of the server's key file, the key's id stored beside the
//! ciphertext, and the person, the provider and the field (access or refresh token) as associated data, so a
//! value copied to another person, another provider or the other field of its row does not open.
//!
//! Format v2 (the only one written) stores the key reference as `v2:<key id>`. Version 1 (written from 2026-12-03
//! until v2) stored the bare key id and left the field out of the associated data: someone able to write the
//! database could swap a row's two values, and the refresh token went to an MCP server as a bearer. A v1 value is
//! never handed out (see [`SealError::Legacy`]). The version sits in the key reference, not in the ciphertext,
//! because a key id never holds `:`: a replica of the release before v2 sees a key it does not know and waits
//! (its rule for a key file not read yet) instead of deleting rows it cannot open.
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
        "a sealed provider token does not open: altered, or sealed for another person, provider or field"
    )]
    Opening,
    /// Sealed in format v1, whose associated data does not say which field the value is.
    #[error("a provider token sealed in format v1, which this server no longer hands out")]
    Legacy,
}

/// Which of a connection's two tokens a sealed value is. Its label is part of the associated data and is the
/// RFC 7009 `token_type_hint` when the token is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Access,
    Refresh,
}

impl Field {
    pub fn hint(self) -> &'static str {
        match self {
            Field::Access => "access_token",
            Field::Refresh => "refresh_token",
        }
    }

    pub fn from_hint(hint: &str) -> Option<Self> {
        match hint {
            "access_token" => Some(Field::Access),
            "refresh_token" => Some(Field::Refresh),
            _ => None,
        }
    }
}

/// The stored key reference of format v2; a key id never holds `:`.
const V2: &str = "v2:";

/// Whether a row's stored key reference is of the format handed out (v2): a v1 row counts as not connected.
pub fn is_current(key_ref: &str) -> bool {
    key_ref.starts_with(V2)
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

    /// Seals `plain` as `field` of `subject`'s connection at `provider` under the first key, in format v2:
    /// `(key reference, nonce ‖ ciphertext ‖ tag)`.
    pub fn seal(
        &self,
        subject: &str,
        provider: &str,
        field: Field,
        plain: &str,
    ) -> (String, String) {
        (
            format!("{V2}{}", self.active),
            self.seal_under_active(&associated(subject, provider, Some(field)), plain),
        )
    }

    /// `nonce ‖ ciphertext ‖ tag` of `plain` under the first key with associated data `aad`, in base64url.
    fn seal_under_active(&self, aad: &[u8], plain: &str) -> String {
        let key = self
            .key(&self.active)
            .expect("the active key is one of the keys");
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("the system random generator works");
        let mut out = plain.as_bytes().to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out,
        )
        .expect("AES-GCM seals any length a token has");
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&out);
        URL_SAFE_NO_PAD.encode(sealed)
    }

    /// Opens what [`Sealer::seal`] gave for the same subject, provider and field; a v1 value is
    /// [`SealError::Legacy`].
    pub fn open(
        &self,
        key_ref: &str,
        sealed: &str,
        subject: &str,
        provider: &str,
        field: Field,
    ) -> Result<String, SealError> {
        let key_id = key_ref.strip_prefix(V2).ok_or(SealError::Legacy)?;
        self.open_with(key_id, sealed, &associated(subject, provider, Some(field)))
    }

    /// Opens a value to revoke it at its provider, v1 as well as v2: the token then goes only to its own
    /// provider's revocation endpoint, where a swapped v1 pair does no harm.
    pub fn open_for_revocation(
        &self,
        key_ref: &str,
        sealed: &str,
        subject: &str,
        provider: &str,
        field: Field,
    ) -> Result<String, SealError> {
        match key_ref.strip_prefix(V2) {
            Some(key_id) => {
                self.open_with(key_id, sealed, &associated(subject, provider, Some(field)))
            }
            None => self.open_with(key_ref, sealed, &associated(subject, provider, None)),
        }
    }

    /// Seals in format v1, as releases before v2 did: for tests of how such rows are treated.
    #[doc(hidden)]
    pub fn seal_v1_for_tests(
        &self,
        subject: &str,
        provider: &str,
        plain: &str,
    ) -> (String, String) {
        (
            self.active.clone(),
            self.seal_under_active(&associated(subject, provider, None), plain),
        )
    }

    fn open_with(&self, key_id: &str, sealed: &str, aad: &[u8]) -> Result<String, SealError> {
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
            .open_in_place(nonce, Aad::from(aad), &mut body)
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

/// The associated data: a purpose label, then the person, the provider and (v2) the field, each length-prefixed
/// so that no two triples give the same bytes (`("a b", "c")` and `("a", "b c")` differ). `None` is v1's.
fn associated(subject: &str, provider: &str, field: Option<Field>) -> Vec<u8> {
    let (label, parts): (&[u8], Vec<&str>) = match field {
        None => (b"mcp-authz provider token v1", vec![subject, provider]),
        Some(f) => (
            b"mcp-authz provider token v2",
            vec![subject, provider, f.hint()],
        ),
    };
    let mut aad = label.to_vec();
    for part in parts {
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
        let (kid, sealed) = sealer.seal("alice", "github", Field::Refresh, "gho_secret");
        assert_eq!(kid, "v2:k1");
        assert!(!sealed.contains("gho_secret"));
        assert_eq!(
            sealer
                .open(&kid, &sealed, "alice", "github", Field::Refresh)
                .as_deref(),
            Ok("gho_secret")
        );
        let mut altered = URL_SAFE_NO_PAD.decode(&sealed).expect("base64");
        let last = altered.len() - 1;
        altered[last] ^= 1;
        let altered = URL_SAFE_NO_PAD.encode(altered);
        let v1 = sealer.seal_v1_for_tests("alice", "github", "gho_secret");
        // (key reference, sealed, subject, provider, outcome)
        let cases = [
            (
                kid.as_str(),
                sealed.as_str(),
                "bob",
                "github",
                Err(SealError::Opening),
            ),
            (
                kid.as_str(),
                sealed.as_str(),
                "alice",
                "gitlab",
                Err(SealError::Opening),
            ),
            // The length prefix keeps ("alice", "github") apart from ("alicegit", "hub") and the like.
            (
                kid.as_str(),
                sealed.as_str(),
                "alicegit",
                "hub",
                Err(SealError::Opening),
            ),
            (
                kid.as_str(),
                altered.as_str(),
                "alice",
                "github",
                Err(SealError::Opening),
            ),
            (
                kid.as_str(),
                "short",
                "alice",
                "github",
                Err(SealError::Opening),
            ),
            (
                kid.as_str(),
                "not base64!",
                "alice",
                "github",
                Err(SealError::Opening),
            ),
            (
                "v2:k9",
                sealed.as_str(),
                "alice",
                "github",
                Err(SealError::UnknownKey("k9".into())),
            ),
            // Format v1 is not handed out, whatever its key.
            (
                "k1",
                v1.1.as_str(),
                "alice",
                "github",
                Err(SealError::Legacy),
            ),
            (
                "k1",
                sealed.as_str(),
                "alice",
                "github",
                Err(SealError::Legacy),
            ),
        ];
        for (kid, sealed, subject, provider, want) in cases {
            assert_eq!(
                sealer.open(kid, sealed, subject, provider, Field::Refresh),
                want,
                "{kid} {subject} {provider}"
            );
        }
        // Two seals of one token differ (a fresh nonce each).
        assert_ne!(
            sealer.seal("alice", "github", Field::Access, "t").1,
            sealer.seal("alice", "github", Field::Access, "t").1
        );
    }

    #[test]
    fn a_rotated_file_seals_with_its_first_key_and_still_opens_the_old() {
        let old = Sealer::parse(&key_line("k1", 1)).expect("keys");
        let (kid, sealed) = old.seal("alice", "github", Field::Refresh, "refresh-1");
        let rotated =
            Sealer::parse(&format!("{}{}", key_line("k2", 2), key_line("k1", 1))).expect("keys");
        assert_eq!(rotated.active_key(), "k2");
        assert_eq!(
            rotated
                .open(&kid, &sealed, "alice", "github", Field::Refresh)
                .as_deref(),
            Ok("refresh-1")
        );
        assert_eq!(
            rotated.seal("alice", "github", Field::Refresh, "x").0,
            "v2:k2"
        );
        let generated = Sealer::parse(&Sealer::generate("g1")).expect("a generated file loads");
        assert_eq!(generated.active_key(), "g1");
    }

    /// A row's two values swapped by someone who can write the database: neither opens as the other field, so a
    /// refresh token is never handed out as an access token.
    #[test]
    fn a_value_opens_only_as_the_field_it_was_sealed_for() {
        let sealer = Sealer::parse(&key_line("k1", 1)).expect("keys");
        let (kid, access) = sealer.seal("alice", "github", Field::Access, "at");
        let (_, refresh) = sealer.seal("alice", "github", Field::Refresh, "rt");
        // (sealed, opened as, outcome)
        for (sealed, field, want) in [
            (&access, Field::Access, Ok("at".to_owned())),
            (&refresh, Field::Refresh, Ok("rt".to_owned())),
            (&refresh, Field::Access, Err(SealError::Opening)),
            (&access, Field::Refresh, Err(SealError::Opening)),
        ] {
            assert_eq!(sealer.open(&kid, sealed, "alice", "github", field), want);
        }
        for field in [Field::Access, Field::Refresh] {
            assert_eq!(Field::from_hint(field.hint()), Some(field));
        }
        assert_eq!(Field::from_hint("id_token"), None);
    }

    /// A v1 value still opens to be revoked at its provider (and only there), and a v2 one as its own field.
    #[test]
    fn revocation_opens_v1_and_v2_values() {
        let sealer = Sealer::parse(&key_line("k1", 1)).expect("keys");
        let (v1_kid, v1) = sealer.seal_v1_for_tests("alice", "github", "old-refresh");
        assert_eq!(v1_kid, "k1");
        let (v2_kid, v2) = sealer.seal("alice", "github", Field::Access, "at");
        // (key reference, sealed, subject, field, outcome)
        for (kid, sealed, subject, field, want) in [
            (
                "k1",
                &v1,
                "alice",
                Field::Refresh,
                Ok("old-refresh".to_owned()),
            ),
            (
                "k1",
                &v1,
                "alice",
                Field::Access,
                Ok("old-refresh".to_owned()),
            ),
            ("k1", &v1, "bob", Field::Refresh, Err(SealError::Opening)),
            (
                "k2",
                &v1,
                "alice",
                Field::Refresh,
                Err(SealError::UnknownKey("k2".into())),
            ),
            (
                v2_kid.as_str(),
                &v2,
                "alice",
                Field::Access,
                Ok("at".to_owned()),
            ),
            (
                v2_kid.as_str(),
                &v2,
                "alice",
                Field::Refresh,
                Err(SealError::Opening),
            ),
        ] {
            assert_eq!(
                sealer.open_for_revocation(kid, sealed, subject, "github", field),
                want,
                "{kid} {subject} {field:?}"
            );
        }
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
