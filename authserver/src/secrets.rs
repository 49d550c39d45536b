//! Random identifiers and the hashes they are stored under.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// 256 random bits, base64url (43 characters).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    // aws-lc-rs draws from the OS; failing here means the machine has no randomness at all.
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random generator works");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The key of a row written on every token (a grant's id, an access token's `jti`): 128 random bits behind the
/// time in milliseconds, in characters that sort as the time does. Keys that grow with time are appended to the
/// last page of their index, so a batch of tokens dirties a page or two per index instead of one per token;
/// random keys made each token's rows a random page write to the log and to the disk. The time it shows is
/// no secret (the token's `iat` says as much), and the random half alone keeps two keys apart.
pub fn record_id() -> String {
    record_id_at(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    )
}

fn record_id_at(millis: u64) -> String {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random generator works");
    // Twelve hex digits hold milliseconds until the year 10889; hex sorts as numbers do, base64url does not.
    format!(
        "{:012x}{}",
        millis & 0xffff_ffff_ffff,
        URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// SHA-256, hex: how codes, refresh tokens and session ids are stored.
pub fn hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// RFC 7636 S256: `BASE64URL(SHA256(verifier)) == challenge`, with the verifier's syntax checked
/// (43 to 128 characters of `[A-Za-z0-9-._~]`).
pub fn pkce_s256_matches(verifier: &str, challenge: &str) -> bool {
    valid_pkce_string(verifier)
        && URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) == challenge
}

/// The syntax shared by verifiers, and what an S256 challenge must look like (43 base64url characters).
pub fn valid_pkce_string(s: &str) -> bool {
    (43..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// Compares secrets without leaking where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_appendix_b_vector() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert!(pkce_s256_matches(
            verifier,
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        ));
        assert!(!pkce_s256_matches(
            verifier,
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cN"
        ));
        assert!(!pkce_s256_matches("short", "x"));
        assert!(!pkce_s256_matches(&format!("{verifier}!"), "x"));
    }

    #[test]
    fn record_ids_sort_by_time_and_stay_distinct() {
        let cases = [
            (0, 1),
            (1_700_000_000_000, 1_700_000_000_001),
            (1_799_999_999_999, 1_800_000_000_000),
            (0xfff_ffff_ffff, 0x1000_0000_0000),
        ];
        for (earlier, later) in cases {
            let (a, b) = (record_id_at(earlier), record_id_at(later));
            assert!(a < b, "{a} sorts before {b}");
            assert_eq!((a.len(), b.len()), (34, 34));
        }
        assert_ne!(record_id_at(5), record_id_at(5));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let shown = u64::from_str_radix(&record_id()[..12], 16).unwrap();
        assert!(shown.abs_diff(now) < 60_000, "{shown} is about {now}");
    }

    #[test]
    fn tokens_are_distinct_and_hashes_stable() {
        assert_ne!(random_token(), random_token());
        assert_eq!(random_token().len(), 43);
        assert_eq!(
            hash("a"),
            "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"
        );
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
    }
}
