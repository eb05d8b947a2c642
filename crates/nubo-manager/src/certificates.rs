//! Tenants' certificates for their mapped domains: given with a domain mapping or put on it
//! later, checked (PEM, the key is the certificate's, the certificate names the domain, its
//! dates), the private key sealed with the secrets key before it is stored (bound to its
//! domain), never served; the load balancers get them opened, on the bus, sealed there too.
//!
//! ACME (certificates obtained from a CA by the platform) would put its certificates here, on
//! the same mapping, through [`Manager::set_domain_certificate`]'s path: nothing else changes.

use std::time::{SystemTime, UNIX_EPOCH};

use nubo_model::{FieldError, Kind, SUPER_TENANT_ID};
use nubo_store::{Key, Write};
use serde::{Deserialize, Serialize};

use crate::signups::MappedDomain;
use crate::{Manager, ManagerError, store_err};

/// How long an ACME challenge is answered (an ACME client validates within minutes).
pub const ACME_CHALLENGE_FOR: std::time::Duration = std::time::Duration::from_secs(3600);

/// Longest certificate chain accepted (PEM).
pub const MAX_CHAIN: usize = 64 * 1024;
/// Longest private key accepted (PEM).
pub const MAX_KEY: usize = 16 * 1024;

/// A domain's certificate as stored on its mapping: the chain in clear, the key sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MappedTls {
    /// The certificate chain (PEM).
    pub certificate: String,
    /// The private key, sealed (empty in what is served).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sealed_key: String,
    /// SHA-256 of the domain's certificate (DER), hex.
    pub fingerprint: String,
    /// Valid from (RFC 3339).
    pub not_before: String,
    /// Valid until (RFC 3339).
    pub not_after: String,
}

/// A domain's certificate with its key opened, for the load balancers.
#[derive(Clone, PartialEq, Eq)]
pub struct DomainCertificate {
    /// The domain.
    pub domain: String,
    /// The chain (PEM).
    pub certificate: String,
    /// The private key (PEM).
    pub private_key: String,
}

impl std::fmt::Debug for DomainCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainCertificate")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

/// What `PUT …/domainMappings/{domain}/certificate` takes.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateBody {
    /// The certificate chain (PEM, the domain's certificate first).
    pub certificate: String,
    /// Its private key (PEM).
    pub private_key: String,
}

/// The sealing context of a domain's key: a sealed key copied onto another domain does not open.
fn context(domain: &str) -> String {
    format!("domainMapping/{}/privateKey", domain.to_ascii_lowercase())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Checks a certificate and key for `domain` at `now` (seconds since the epoch); the problem
/// names `certificate` or `privateKey` under `field`.
pub fn check(
    field: &str,
    domain: &str,
    chain_pem: &str,
    key_pem: &str,
    now: u64,
) -> Result<MappedTls, Vec<FieldError>> {
    let cert_field = format!("{field}certificate");
    let key_field = format!("{field}privateKey");
    let bad = |f: &str, reason: String| {
        vec![FieldError {
            field: f.to_owned(),
            reason,
        }]
    };
    if chain_pem.len() > MAX_CHAIN {
        return Err(bad(&cert_field, format!("longer than {MAX_CHAIN} bytes")));
    }
    if key_pem.len() > MAX_KEY {
        return Err(bad(&key_field, format!("longer than {MAX_KEY} bytes")));
    }
    let chain = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&cert_field, format!("not a PEM certificate chain: {e}")))?;
    let Some(leaf) = chain.first().cloned() else {
        return Err(bad(
            &cert_field,
            "no certificate (a PEM `BEGIN CERTIFICATE` block) was given".into(),
        ));
    };
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| bad(&key_field, format!("not a PEM private key: {e}")))?
        .ok_or_else(|| {
            bad(
                &key_field,
                "no private key (a PEM `BEGIN PRIVATE KEY` block) was given".into(),
            )
        })?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).map_err(|e| {
        bad(
            &key_field,
            format!("not a usable key (RSA, ECDSA or Ed25519): {e}"),
        )
    })?;
    let ck = rustls::sign::CertifiedKey::new(chain, signing);
    if ck.keys_match().is_err() {
        return Err(bad(
            &key_field,
            "is not the certificate's key (the chain's first certificate must be the domain's)"
                .into(),
        ));
    }
    // rustls' SNI resolver accepts a certificate for a name only if it is valid for it.
    let mut names = rustls::server::ResolvesServerCertUsingSni::new();
    if names.add(domain, ck).is_err() {
        return Err(bad(
            &cert_field,
            format!("is not valid for `{domain}` (none of its names, wildcards included, is it)"),
        ));
    }
    let (from, until) = validity(&leaf).ok_or_else(|| {
        bad(
            &cert_field,
            "its validity dates cannot be read (not an X.509 certificate?)".into(),
        )
    })?;
    if until <= now {
        return Err(bad(
            &cert_field,
            format!("expired on {}", crate::tokens::rfc3339(until)),
        ));
    }
    if from > now + 300 {
        return Err(bad(
            &cert_field,
            format!("not valid before {}", crate::tokens::rfc3339(from)),
        ));
    }
    use sha2::Digest;
    Ok(MappedTls {
        certificate: chain_pem.to_owned(),
        sealed_key: String::new(),
        fingerprint: hex::encode(sha2::Sha256::digest(leaf.as_ref())),
        not_before: crate::tokens::rfc3339(from),
        not_after: crate::tokens::rfc3339(until),
    })
}

/// One DER element: its tag, its content, and what follows it.
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)?;
    let (len, head) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = head.checked_add(len)?;
    Some((tag, b.get(head..end)?, b.get(end..)?))
}

/// A certificate's validity (not before, not after), in seconds since the epoch.
fn validity(cert: &[u8]) -> Option<(u64, u64)> {
    let (_, cert, _) = der(cert)?;
    let (_, tbs, _) = der(cert)?;
    let (tag, _, after) = der(tbs)?;
    // [0] version, when present; then the serial number, the signature algorithm, the issuer.
    let mut rest = if tag == 0xa0 { after } else { tbs };
    for _ in 0..3 {
        rest = der(rest)?.2;
    }
    let (_, validity, _) = der(rest)?;
    let (t1, from, rest) = der(validity)?;
    let (t2, until, _) = der(rest)?;
    Some((asn1_time(t1, from)?, asn1_time(t2, until)?))
}

/// An ASN.1 UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn asn1_time(tag: u8, b: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(b).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if s.len() == 12 => {
            let yy: i32 = s[..2].parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &s[2..])
        }
        0x18 if s.len() == 14 => (s[..4].parse().ok()?, &s[4..]),
        _ => return None,
    };
    let n = |i: usize| rest.get(i..i + 2)?.parse::<u8>().ok();
    let month = time::Month::try_from(n(0)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, n(2)?).ok()?;
    let t = time::Time::from_hms(n(4)?, n(6)?, n(8)?).ok()?;
    u64::try_from(
        time::PrimitiveDateTime::new(date, t)
            .assume_utc()
            .unix_timestamp(),
    )
    .ok()
}

impl MappedDomain {
    /// The mapping as it is served: without its sealed key.
    pub fn served(mut self) -> MappedDomain {
        if let Some(t) = &mut self.tls {
            t.sealed_key.clear();
        }
        self
    }
}

impl Manager {
    /// A checked certificate with its key sealed for `domain`.
    pub(crate) fn sealed_certificate(
        &self,
        field: &str,
        domain: &str,
        chain: &str,
        key: &str,
    ) -> Result<MappedTls, ManagerError> {
        let mut tls = check(field, domain, chain, key, now_secs()).map_err(|errors| {
            ManagerError::Invalid {
                kind: Kind::DomainMapping,
                errors,
            }
        })?;
        tls.sealed_key = self
            .secrets_key
            .seal(&context(domain), key)
            .map_err(|e| ManagerError::Unavailable(format!("cannot seal the private key: {e}")))?;
        Ok(tls)
    }

    /// A tenant's mapping of `domain` on application `id`, with its version (404 for another
    /// tenant's, as for none).
    async fn own_mapping(
        &self,
        tenant: i64,
        id: &str,
        domain: &str,
    ) -> Result<(MappedDomain, i64), ManagerError> {
        let not_found = || ManagerError::NotFound {
            kind: Kind::DomainMapping,
            id: domain.to_owned(),
        };
        match self.mapping(domain).await? {
            Some((m, version)) if m.tenant_id == tenant && m.application_id == id => {
                Ok((m, version))
            }
            _ => Err(not_found()),
        }
    }

    /// The mapping of `domain`, with its version.
    async fn mapping(&self, domain: &str) -> Result<Option<(MappedDomain, i64)>, ManagerError> {
        let rec = self
            .store
            .get(
                SUPER_TENANT_ID,
                &Key::new(Kind::DomainMapping.as_str(), domain),
            )
            .await
            .map_err(|e| store_err(Kind::DomainMapping, e))?;
        Ok(rec.and_then(|r| {
            serde_json::from_value::<MappedDomain>(r.body)
                .ok()
                .map(|m| (m, r.version))
        }))
    }

    async fn store_mapping(&self, m: &MappedDomain, version: i64) -> Result<(), ManagerError> {
        let write = Write {
            tenant: SUPER_TENANT_ID,
            key: Key::new(Kind::DomainMapping.as_str(), &m.domain_name),
            body: serde_json::to_value(m).map_err(|e| ManagerError::Unavailable(e.to_string()))?,
            refs: Vec::new(),
        };
        self.store
            .update_if(write, version)
            .await
            .map(|_| ())
            .map_err(|e| match e {
                nubo_store::StoreError::Stale { .. } => ManagerError::StateConflict(format!(
                    "domain mapping `{}` changed meanwhile: try again",
                    m.domain_name
                )),
                e => store_err(Kind::DomainMapping, e),
            })
    }

    /// Puts a certificate (`{"certificate": PEM, "privateKey": PEM}`) on a tenant's mapped
    /// domain, replacing any; the mapping as served.
    pub async fn set_domain_certificate(
        &self,
        tenant: i64,
        id: &str,
        domain: &str,
        body: &[u8],
    ) -> Result<MappedDomain, ManagerError> {
        let (mut m, version) = self.own_mapping(tenant, id, domain).await?;
        let b: CertificateBody =
            nubo_model::json::from_slice(body).map_err(|error| ManagerError::Parse {
                kind: Kind::DomainMapping,
                error,
            })?;
        m.tls = Some(self.sealed_certificate("", domain, &b.certificate, &b.private_key)?);
        self.store_mapping(&m, version).await?;
        tracing::info!(tenant, domain, "domain certificate set");
        Ok(m.served())
    }

    /// Removes the certificate of a tenant's mapped domain (the load balancers' default one is
    /// presented for it again).
    pub async fn remove_domain_certificate(
        &self,
        tenant: i64,
        id: &str,
        domain: &str,
    ) -> Result<(), ManagerError> {
        let (mut m, version) = self.own_mapping(tenant, id, domain).await?;
        if m.tls.take().is_none() {
            return Err(ManagerError::NotFound {
                kind: Kind::DomainMapping,
                id: format!("{domain} (it has no certificate)"),
            });
        }
        self.store_mapping(&m, version).await?;
        tracing::info!(tenant, domain, "domain certificate removed");
        Ok(())
    }

    /// Puts an ACME HTTP-01 challenge on a tenant's mapped domain: the load balancers answer
    /// `GET /.well-known/acme-challenge/<token>` for the domain (over plain HTTP too) with
    /// `key_authorization`, for [`ACME_CHALLENGE_FOR`]; an ACME client (certbot's manual hook,
    /// lego's exec provider, …) then puts the certificate it obtained with
    /// [`Manager::set_domain_certificate`].
    pub async fn set_acme_challenge(
        &self,
        tenant: i64,
        id: &str,
        domain: &str,
        token: &str,
        key_authorization: &str,
    ) -> Result<MappedDomain, ManagerError> {
        let bad = |field: &str, reason: &str| ManagerError::Invalid {
            kind: Kind::DomainMapping,
            errors: vec![FieldError {
                field: field.to_owned(),
                reason: reason.to_owned(),
            }],
        };
        let b64url = |t: &str| {
            t.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        };
        if token.is_empty() || token.len() > 128 || !b64url(token) {
            return Err(bad(
                "token",
                "1 to 128 characters of base64url (letters, digits, `-`, `_`)",
            ));
        }
        let ka = key_authorization.trim();
        let ok = ka
            .split_once('.')
            .is_some_and(|(t, thumb)| t == token && !thumb.is_empty() && b64url(thumb));
        if !ok || ka.len() > 512 {
            return Err(bad(
                "keyAuthorization",
                "`<token>.<base64url thumbprint of the account key>` (RFC 8555 §8.1)",
            ));
        }
        let (mut m, version) = self.own_mapping(tenant, id, domain).await?;
        let now = now_secs() * 1000;
        m.acme_challenges.retain(|_, (_, until)| *until > now);
        if m.acme_challenges.len() >= 16 && !m.acme_challenges.contains_key(token) {
            return Err(bad("token", "16 challenges at once at most for a domain"));
        }
        m.acme_challenges.insert(
            token.to_owned(),
            (ka.to_owned(), now + ACME_CHALLENGE_FOR.as_millis() as u64),
        );
        self.store_mapping(&m, version).await?;
        Ok(m.served())
    }

    /// Removes an ACME challenge of a tenant's mapped domain (404 when it has none of that
    /// token).
    pub async fn remove_acme_challenge(
        &self,
        tenant: i64,
        id: &str,
        domain: &str,
        token: &str,
    ) -> Result<(), ManagerError> {
        let (mut m, version) = self.own_mapping(tenant, id, domain).await?;
        if m.acme_challenges.remove(token).is_none() {
            return Err(ManagerError::NotFound {
                kind: Kind::DomainMapping,
                id: format!("{domain} (no ACME challenge {token})"),
            });
        }
        self.store_mapping(&m, version).await
    }

    /// A mapping's certificate with its key opened (`None`: none, or it does not open, logged).
    fn opened(&self, m: &MappedDomain) -> Option<DomainCertificate> {
        let tls = m.tls.as_ref()?;
        match self
            .secrets_key
            .open(&context(&m.domain_name), &tls.sealed_key)
        {
            Ok((key, _)) => Some(DomainCertificate {
                domain: m.domain_name.clone(),
                certificate: tls.certificate.clone(),
                private_key: key,
            }),
            Err(e) => {
                tracing::error!(domain = %m.domain_name, error = %e, "a domain's private key does not open: the load balancers present their default certificate for it");
                None
            }
        }
    }

    /// Every mapped domain's certificate, keys opened (for the load balancers).
    pub async fn domain_certificates(&self) -> Result<Vec<DomainCertificate>, ManagerError> {
        Ok(self
            .all_domain_mappings()
            .await?
            .iter()
            .filter_map(|m| self.opened(m))
            .collect())
    }

    /// One domain's certificate, key opened (`None`: not mapped, or without one).
    pub async fn domain_certificate(
        &self,
        domain: &str,
    ) -> Result<Option<DomainCertificate>, ManagerError> {
        Ok(self
            .mapping(domain)
            .await?
            .and_then(|(m, _)| self.opened(&m)))
    }

    /// Seals again with the current secrets key the domains' keys still sealed with the
    /// previous one of a rotation; how many (run at each start).
    pub async fn reseal_domain_certificates(&self) -> Result<usize, ManagerError> {
        let mut resealed = 0;
        for rec in self
            .store
            .list(SUPER_TENANT_ID, Kind::DomainMapping.as_str())
            .await
            .map_err(|e| store_err(Kind::DomainMapping, e))?
        {
            let Ok(mut m) = serde_json::from_value::<MappedDomain>(rec.body) else {
                continue;
            };
            let ctx = context(&m.domain_name);
            let Some(tls) = m.tls.as_mut() else {
                continue;
            };
            match self.secrets_key.reseal(&ctx, &tls.sealed_key) {
                Ok(Some(again)) => tls.sealed_key = again,
                Ok(None) => continue,
                Err(e) => {
                    return Err(ManagerError::Unavailable(format!(
                        "the private key of domain `{}` does not open: {e}; start with the key it was sealed with as --secrets-key-previous",
                        m.domain_name
                    )));
                }
            }
            match self.store_mapping(&m, rec.version).await {
                Ok(()) => resealed += 1,
                Err(ManagerError::StateConflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(resealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_and_generalized_times_read() {
        assert_eq!(asn1_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(asn1_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(asn1_time(0x18, b"20261206120000Z"), Some(1_796_558_400));
        assert_eq!(asn1_time(0x17, b"2612061200Z"), None);
        assert_eq!(asn1_time(0x18, b"20261306120000Z"), None);
    }

    fn pair(names: &[&str]) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        (c.cert.pem(), c.key_pair.serialize_pem())
    }

    #[test]
    fn a_certificate_is_checked_for_its_domain_key_and_dates() {
        let now = now_secs();
        let (c, k) = pair(&["shop.a.example", "*.b.example"]);
        let (_, other_key) = pair(&["x.example"]);
        let tls = check("m.", "shop.a.example", &c, &k, now).unwrap();
        assert_eq!(tls.fingerprint.len(), 64);
        assert!(tls.not_before < tls.not_after, "{tls:?}");
        assert!(tls.not_after.starts_with("4096-"), "{tls:?}");
        assert!(check("", "blog.b.example", &c, &k, now).is_ok());
        let e = check("m.", "shop.c.example", &c, &k, now).unwrap_err();
        assert_eq!(e[0].field, "m.certificate");
        assert!(
            e[0].reason.contains("not valid for `shop.c.example`"),
            "{e:?}"
        );
        let e = check("m.", "shop.a.example", &c, &other_key, now).unwrap_err();
        assert_eq!(e[0].field, "m.privateKey");
        let e = check("", "shop.a.example", "x", &k, now).unwrap_err();
        assert!(e[0].reason.contains("no certificate"), "{e:?}");
        // rcgen's certificates run 1975–4096.
        let e = check("", "shop.a.example", &c, &k, 420_000_000_000).unwrap_err();
        assert!(e[0].reason.starts_with("expired on 4096-"), "{e:?}");
        let e = check("", "shop.a.example", &c, &k, 0).unwrap_err();
        assert!(e[0].reason.starts_with("not valid before 1975-"), "{e:?}");
    }

    #[test]
    fn der_lengths_out_of_bounds_are_refused() {
        assert!(der(&[0x30, 0x05, 1, 2]).is_none());
        assert!(der(&[0x30, 0x85, 0, 0, 0, 0, 1]).is_none());
        assert!(der(&[0x30, 0x82, 0xff]).is_none());
        assert_eq!(
            der(&[0x30, 0x01, 7, 9]),
            Some((0x30, &[7u8][..], &[9u8][..]))
        );
        assert!(validity(&[]).is_none());
        assert!(validity(&[0x30, 0x00]).is_none());
    }
}
