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
    #[error("generating webhook certificate: {0}")]
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

fn ca_params(now: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "mcp-authz webhook CA");
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

/// Makes a new CA and a serving certificate for `names` (DNS names or IP literals).
pub fn create(names: &[String], now: OffsetDateTime) -> Result<WebhookTls, CertError> {
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let ca_cert = ca_params(now).self_signed(&ca_key)?;
    let ca_key_pem = ca_key.serialize_pem();
    let (cert, key, not_after) = issue(&ca_key_pem, names, now)?;
    Ok(WebhookTls {
        ca_cert: ca_cert.pem(),
        ca_key: ca_key_pem,
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
    let (cert, key, not_after) = issue(&stored.ca_key, names, now)?;
    Ok(WebhookTls {
        cert,
        key,
        not_after,
        ..stored.clone()
    })
}

fn issue(
    ca_key_pem: &str,
    names: &[String],
    now: OffsetDateTime,
) -> Result<(String, String, i64), CertError> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    // The issuer is rebuilt from the same name and key, so certificates chain to the stored CA.
    let issuer = Issuer::new(ca_params(now), ca_key);
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
    params.not_after = now + SERVING_LIFETIME;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((
        cert.pem(),
        key.serialize_pem(),
        params.not_after.unix_timestamp(),
    ))
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
