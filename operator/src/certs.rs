//! The webhook's TLS: a CA and a serving certificate the operator makes itself, kept in a Secret.
//!
//! The CA lives ten years and is only replaced when its key is lost; the serving certificate lives
//! a year and is re-issued by the same CA a month before it expires, so the caBundle the API server
//! trusts does not change on rotation. Expiry instants are stored beside the PEMs, so deciding to
//! rotate needs no certificate parser.

use std::collections::BTreeMap;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// Secret keys of the webhook TLS material.
pub const CA_CERT: &str = "ca.crt";
/// The CA's private key (needed to re-issue the serving certificate).
pub const CA_KEY: &str = "ca.key";
/// Serving certificate.
pub const TLS_CERT: &str = "tls.crt";
/// Serving key.
pub const TLS_KEY: &str = "tls.key";
/// Unix second after which the serving certificate is no longer valid.
pub const TLS_NOT_AFTER: &str = "tls.not-after";

/// Lifetime of the CA.
pub const CA_LIFETIME: Duration = Duration::days(3650);
/// Lifetime of a serving certificate.
pub const SERVING_LIFETIME: Duration = Duration::days(365);
/// A serving certificate is re-issued when less than this is left.
pub const RENEW_BEFORE: Duration = Duration::days(30);

/// Errors of making certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused.
    #[error("generating certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

impl CertError {
    /// Low-cardinality reason for metrics.
    pub fn metric_label(&self) -> &'static str {
        "cert_generate"
    }
}

/// The webhook TLS material as stored in the Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTls {
    /// PEM of the CA certificate (the caBundle).
    pub ca_cert: String,
    /// PEM of the CA key.
    pub ca_key: String,
    /// PEM of the serving certificate.
    pub cert: String,
    /// PEM of the serving key.
    pub key: String,
    /// Unix second the serving certificate expires.
    pub not_after: i64,
}

impl WebhookTls {
    /// Reads the material from Secret data; `None` when anything is missing or unreadable.
    pub fn from_secret(data: &BTreeMap<String, Vec<u8>>) -> Option<Self> {
        let text = |k: &str| data.get(k).and_then(|v| String::from_utf8(v.clone()).ok());
        Some(Self {
            ca_cert: text(CA_CERT)?,
            ca_key: text(CA_KEY)?,
            cert: text(TLS_CERT)?,
            key: text(TLS_KEY)?,
            not_after: text(TLS_NOT_AFTER)?.trim().parse().ok()?,
        })
    }

    /// The Secret data.
    pub fn to_secret(&self) -> BTreeMap<String, Vec<u8>> {
        [
            (CA_CERT, self.ca_cert.clone()),
            (CA_KEY, self.ca_key.clone()),
            (TLS_CERT, self.cert.clone()),
            (TLS_KEY, self.key.clone()),
            (TLS_NOT_AFTER, self.not_after.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_bytes()))
        .collect()
    }
}

/// The serving certificate cert-manager wrote into `dir` (its Secret, mounted: `tls.crt`, `tls.key`, and
/// `ca.crt` when the issuer is a CA), or `None` until both halves are there. The expiry is read from the
/// certificate itself: cert-manager renews it on its own schedule, and the expiry metric must follow (an
/// unreadable certificate counts as expired, so the alert fires).
pub fn from_cert_manager(dir: &std::path::Path) -> Option<WebhookTls> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f));
    let (Ok(cert), Ok(key)) = (read(TLS_CERT), read(TLS_KEY)) else {
        return None;
    };
    Some(WebhookTls {
        ca_cert: read(CA_CERT).unwrap_or_default(),
        ca_key: String::new(),
        not_after: not_after(&cert).unwrap_or(0),
        cert,
        key,
    })
}

/// What to do with the stored material at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertAction {
    /// Keep it.
    Keep,
    /// Issue a new serving certificate from the stored CA.
    Renew,
    /// Make a new CA and serving certificate (nothing usable stored).
    Create,
}

/// Decides what to do with `stored` at `now` (Unix seconds).
pub fn decide(stored: Option<&WebhookTls>, now: i64) -> CertAction {
    match stored {
        None => CertAction::Create,
        Some(tls) if KeyPair::from_pem(&tls.ca_key).is_err() => CertAction::Create,
        Some(tls) if tls.not_after - now < RENEW_BEFORE.whole_seconds() => CertAction::Renew,
        Some(_) => CertAction::Keep,
    }
}

/// Common name of the webhook's CA.
const WEBHOOK_CA_NAME: &str = "mcp-authz webhook CA";

fn ca_params(common_name: &str, now: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + CA_LIFETIME;
    params
}

/// DNS names of the webhook Service.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// A new self-signed CA named `common_name`, valid [`CA_LIFETIME`] from `now`: `(cert PEM, key PEM,
/// not-after Unix second)`.
pub fn new_ca(common_name: &str, now: OffsetDateTime) -> Result<(String, String, i64), CertError> {
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let params = ca_params(common_name, now);
    let ca_cert = params.self_signed(&ca_key)?;
    Ok((
        ca_cert.pem(),
        ca_key.serialize_pem(),
        params.not_after.unix_timestamp(),
    ))
}

/// Makes a new CA and a serving certificate for `names` (DNS names or IP literals).
pub fn create(names: &[String], now: OffsetDateTime) -> Result<WebhookTls, CertError> {
    let (ca_cert, ca_key, _) = new_ca(WEBHOOK_CA_NAME, now)?;
    let (cert, key, not_after) = issue(&ca_key, WEBHOOK_CA_NAME, names, SERVING_LIFETIME, now)?;
    Ok(WebhookTls {
        ca_cert,
        ca_key,
        cert,
        key,
        not_after,
    })
}

/// Issues a serving certificate from the stored CA (the caBundle stays the same).
pub fn renew(
    stored: &WebhookTls,
    names: &[String],
    now: OffsetDateTime,
) -> Result<WebhookTls, CertError> {
    let (cert, key, not_after) = issue(
        &stored.ca_key,
        WEBHOOK_CA_NAME,
        names,
        SERVING_LIFETIME,
        now,
    )?;
    Ok(WebhookTls {
        cert,
        key,
        not_after,
        ..stored.clone()
    })
}

/// Issues a serving certificate for `names`, valid `lifetime` from `now`, from the CA named `ca_name` whose
/// key is `ca_key_pem`: `(cert PEM, key PEM, not-after Unix second)`.
pub fn issue(
    ca_key_pem: &str,
    ca_name: &str,
    names: &[String],
    lifetime: Duration,
    now: OffsetDateTime,
) -> Result<(String, String, i64), CertError> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    // The issuer is rebuilt from the same name and key, so certificates chain to the stored CA.
    let issuer = Issuer::new(ca_params(ca_name, now), ca_key);
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + lifetime;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((
        cert.pem(),
        key.serialize_pem(),
        params.not_after.unix_timestamp(),
    ))
}

/// The not-after instant (Unix seconds) of the first certificate in `pem`, or `None` when there is none
/// or it does not parse. Reads only the DER path to `tbsCertificate.validity.notAfter`; nothing is verified.
pub fn not_after(pem: &str) -> Option<i64> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()?;
    let (_, cert, _) = der_element(der.as_ref())?;
    let (_, tbs, _) = der_element(cert)?;
    let mut rest = tbs;
    // version ([0], optional), serialNumber, signature, issuer, then validity.
    let (tag, _, after) = der_element(rest)?;
    if tag == 0xA0 {
        rest = after;
    }
    for _ in 0..3 {
        rest = der_element(rest)?.2;
    }
    let (_, validity, _) = der_element(rest)?;
    let (_, _, after_not_before) = der_element(validity)?;
    let (tag, value, _) = der_element(after_not_before)?;
    der_time(tag, value)
}

/// One DER element at the start of `input`: `(tag, contents, the rest)`. Single-byte tags only, which is
/// all a certificate's outer structure uses.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        let len = bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b));
        (len, rest)
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// A UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, tag 0x18) in Unix seconds.
fn der_time(tag: u8, value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?.strip_suffix('Z')?;
    let (year, rest) = match (tag, text.len()) {
        (0x17, 12) => {
            let yy: i32 = text.get(..2)?.parse().ok()?;
            // RFC 5280 4.1.2.5.1: YY >= 50 is 19YY.
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        (0x18, 14) => (text.get(..4)?.parse().ok()?, &text[4..]),
        _ => return None,
    };
    let field = |i: usize| -> Option<u8> { rest.get(i..i + 2)?.parse().ok() };
    let date =
        time::Date::from_calendar_date(year, time::Month::try_from(field(0)?).ok()?, field(2)?)
            .ok()?;
    let clock = time::Time::from_hms(field(4)?, field(6)?, field(8)?).ok()?;
    Some(
        time::PrimitiveDateTime::new(date, clock)
            .assume_utc()
            .unix_timestamp(),
    )
}

/// A rustls server config for the serving certificate.
pub fn server_config(tls: &WebhookTls) -> Result<rustls::ServerConfig, String> {
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(tls.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("serving certificate: {e}"))?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(tls.key.as_bytes())
        .map_err(|e| format!("serving key: {e}"))?;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("serving certificate: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        service_names("mcp-authz-webhook", "mcp-authz")
    }

    #[test]
    fn created_material_round_trips_through_a_secret_and_serves_tls() {
        let now = OffsetDateTime::now_utc();
        let tls = create(&names(), now).expect("create");
        assert_eq!(WebhookTls::from_secret(&tls.to_secret()), Some(tls.clone()));
        assert_eq!(tls.not_after, (now + SERVING_LIFETIME).unix_timestamp());
        server_config(&tls).expect("rustls takes it");
        assert_eq!(decide(Some(&tls), now.unix_timestamp()), CertAction::Keep);
    }

    #[test]
    fn rotation_schedule() {
        let now = OffsetDateTime::now_utc();
        let tls = create(&names(), now).expect("create");
        let t = now.unix_timestamp();
        assert_eq!(decide(None, t), CertAction::Create);
        assert_eq!(
            decide(
                Some(&tls),
                t + (SERVING_LIFETIME - RENEW_BEFORE).whole_seconds() - 1
            ),
            CertAction::Keep
        );
        assert_eq!(
            decide(
                Some(&tls),
                t + (SERVING_LIFETIME - RENEW_BEFORE).whole_seconds() + 1
            ),
            CertAction::Renew
        );
        let broken = WebhookTls {
            ca_key: "junk".into(),
            ..tls
        };
        assert_eq!(decide(Some(&broken), t), CertAction::Create);
    }

    #[test]
    fn renewal_keeps_the_ca_and_chains_to_it() {
        let now = OffsetDateTime::now_utc();
        let tls = create(&names(), now).expect("create");
        let later = now + Duration::days(340);
        let renewed = renew(&tls, &names(), later).expect("renew");
        assert_eq!(renewed.ca_cert, tls.ca_cert);
        assert_ne!(renewed.cert, tls.cert);
        assert!(renewed.not_after > tls.not_after);
        // A client trusting only the old caBundle accepts the renewed certificate.
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for ca in rustls_pki_types::CertificateDer::pem_slice_iter(tls.ca_cert.as_bytes()) {
            roots.add(ca.expect("ca pem")).expect("ca");
        }
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            provider,
        )
        .build()
        .expect("verifier");
        let leaf = rustls_pki_types::CertificateDer::from_pem_slice(renewed.cert.as_bytes())
            .expect("leaf");
        let name = rustls_pki_types::ServerName::try_from("mcp-authz-webhook.mcp-authz.svc")
            .expect("name");
        use rustls::client::danger::ServerCertVerifier;
        verifier
            .verify_server_cert(
                &leaf,
                &[],
                &name,
                &[],
                rustls_pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                    u64::try_from(later.unix_timestamp()).expect("after 1970"),
                )),
            )
            .expect("renewed certificate chains to the old CA");
    }

    #[test]
    fn not_after_is_read_from_the_certificate() {
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).expect("ns");
        let tls = create(&names(), now).expect("create");
        assert_eq!(not_after(&tls.cert), Some(tls.not_after));
        assert_eq!(
            not_after(&tls.ca_cert),
            Some((now + CA_LIFETIME).unix_timestamp())
        );
        // A bundle: the first certificate counts.
        assert_eq!(
            not_after(&format!("{}{}", tls.cert, tls.ca_cert)),
            Some(tls.not_after)
        );
        // After 2049 rcgen writes GeneralizedTime.
        let late = OffsetDateTime::from_unix_timestamp(2_600_000_000).expect("2052");
        let (ca, _, ca_not_after) = new_ca("late", late).expect("ca");
        assert_eq!(not_after(&ca), Some(ca_not_after));
        for junk in ["", "not pem", &tls.key] {
            assert_eq!(not_after(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn cert_manager_files_carry_their_certificates_expiry() {
        let dir = tempfile::tempdir().expect("dir");
        assert_eq!(from_cert_manager(dir.path()), None, "nothing written yet");
        let now = OffsetDateTime::now_utc();
        let tls = create(&names(), now).expect("create");
        std::fs::write(dir.path().join(TLS_CERT), &tls.cert).expect("write");
        assert_eq!(from_cert_manager(dir.path()), None, "the key is missing");
        std::fs::write(dir.path().join(TLS_KEY), &tls.key).expect("write");
        let read = from_cert_manager(dir.path()).expect("both halves");
        assert_eq!(
            read.not_after, tls.not_after,
            "not 0: the alert would fire forever"
        );
        assert_eq!(read.ca_cert, "", "a non-CA issuer writes no ca.crt");
        std::fs::write(dir.path().join(CA_CERT), &tls.ca_cert).expect("write");
        assert_eq!(
            from_cert_manager(dir.path()).expect("read").ca_cert,
            tls.ca_cert
        );
        std::fs::write(dir.path().join(TLS_CERT), "garbage").expect("write");
        assert_eq!(
            from_cert_manager(dir.path()).expect("read").not_after,
            0,
            "unreadable counts as expired"
        );
    }

    #[test]
    fn der_times() {
        let cases: &[(u8, &str, Option<i64>)] = &[
            (0x17, "491231235959Z", Some(2_524_607_999)),
            (0x17, "500101000000Z", Some(-631_152_000)),
            (0x18, "20510101000000Z", Some(2_556_143_999 + 1)),
            (0x17, "20510101000000Z", None),
            (0x18, "491231235959Z", None),
            (0x17, "491231235959", None),
            (0x17, "491331235959Z", None),
            (0x04, "491231235959Z", None),
        ];
        for (tag, text, want) in cases {
            assert_eq!(der_time(*tag, text.as_bytes()), *want, "{tag:#x} {text}");
        }
    }

    #[test]
    fn unreadable_secrets_count_as_missing() {
        let mut data = create(&names(), OffsetDateTime::now_utc())
            .expect("create")
            .to_secret();
        data.insert(TLS_NOT_AFTER.into(), b"soon".to_vec());
        assert_eq!(WebhookTls::from_secret(&data), None);
        data.remove(TLS_NOT_AFTER);
        assert_eq!(WebhookTls::from_secret(&data), None);
    }
}
