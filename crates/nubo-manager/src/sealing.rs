//! The key that seals the platform's stored secrets (the bus key, the broker's password, and the
//! repository passwords and certificate keys of later features): AES-256-GCM, a random nonce per
//! value, the secret's tenant and name as associated data (a sealed value copied under another
//! name does not open).
//!
//! The key lives outside the store, in a file of the platform's (`<data-dir>/secrets.key` unless
//! `--secrets-key` names one; every server sharing a store is given the same file), so that a copy
//! of the store (a backup, a dump, a read of the database) holds no usable secret. A sealed value
//! is `v1:<key id>:<base64 of nonce and ciphertext>`; the key id (the first 8 bytes of the key's
//! SHA-256, in hex) tells a server started with the wrong key what is wrong.
//!
//! Rotation: start servers with the new key and `--secrets-key-previous` naming the old one; the
//! first to start seals every secret again with the new key, and both keys open values meanwhile.

use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// What can go wrong with the secrets key or a sealed value.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key file cannot be read, written or parsed.
    #[error("secrets key {path}: {reason}")]
    KeyFile {
        /// The file.
        path: String,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// A value was sealed with a key this process does not hold.
    #[error(
        "a stored secret is sealed with the secrets key {found}, and this server holds {held}: give every server of the platform the same key file (--secrets-key), and during a rotation the old one as --secrets-key-previous"
    )]
    WrongKey {
        /// The id of the key the value was sealed with.
        found: String,
        /// The ids of the keys held.
        held: String,
    },
    /// The cryptographic library refused an operation.
    #[error("sealing secrets failed: {0}")]
    Crypto(String),
    /// The value is not a sealed value, or it was tampered with.
    #[error("a stored secret is damaged or was tampered with: {0}")]
    Damaged(String),
}

struct Sealer {
    id: String,
    key: LessSafeKey,
}

impl Sealer {
    fn new(bytes: &[u8; 32]) -> Result<Sealer, SealError> {
        let digest = Sha256::digest(bytes);
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let unbound = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| SealError::Crypto("the AES-256-GCM key was refused".into()))?;
        Ok(Sealer {
            id,
            key: LessSafeKey::new(unbound),
        })
    }
}

/// The key that seals stored secrets, and during a rotation the previous one (opening only).
pub struct SecretsKey {
    current: Sealer,
    previous: Option<Sealer>,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsKey")
            .field("id", &self.current.id)
            .field("previous", &self.previous.as_ref().map(|p| &p.id))
            .finish()
    }
}

impl SecretsKey {
    /// A key of these bytes, with the previous one during a rotation.
    pub fn from_bytes(
        current: [u8; 32],
        previous: Option<[u8; 32]>,
    ) -> Result<SecretsKey, SealError> {
        Ok(SecretsKey {
            current: Sealer::new(&current)?,
            previous: previous.as_ref().map(Sealer::new).transpose()?,
        })
    }

    /// A new random key (tests).
    pub fn random() -> Result<SecretsKey, SealError> {
        SecretsKey::from_bytes(random_key(), None)
    }

    /// The key in `path` (64 hex digits), created (`0600`, random) when the file does not exist
    /// and `may_create`; with the previous key of a rotation from `previous`, which must exist.
    pub fn load_or_create(
        path: &Path,
        previous: Option<&Path>,
        may_create: bool,
    ) -> Result<SecretsKey, SealError> {
        let current = match read_key(path) {
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_create => {
                let k = random_key();
                write_key(path, &k)?;
                tracing::info!(file = %path.display(), "created the key that seals the platform's stored secrets: keep it with the store's backups, and give every server sharing the store the same file");
                k
            }
            Err(e) => return Err(key_file(path, e.to_string())),
        };
        let previous = match previous {
            Some(p) => Some(read_key(p).map_err(|e| key_file(p, e.to_string()))?),
            None => None,
        };
        SecretsKey::from_bytes(current, previous)
    }

    /// The current key's id.
    pub fn id(&self) -> &str {
        &self.current.id
    }

    /// Seals `plain` with the current key, bound to `context` (the secret's tenant and name).
    pub fn seal(&self, context: &str, plain: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut data = plain.as_bytes().to_vec();
        self.current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .map_err(|_| SealError::Crypto("AES-256-GCM refused to seal".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(format!("v1:{}:{}", self.current.id, STANDARD.encode(out)))
    }

    /// The value sealed again with the current key when it was sealed with the previous one of
    /// a rotation (`None`: current already); an error when neither key opens it.
    pub fn reseal(&self, context: &str, sealed: &str) -> Result<Option<String>, SealError> {
        match self.open(context, sealed)? {
            (plain, true) => self.seal(context, &plain).map(Some),
            (_, false) => Ok(None),
        }
    }

    /// Opens a value [`Self::seal`] made, with the current or the previous key. Also says whether
    /// it should be sealed again (it was sealed with the previous key).
    pub fn open(&self, context: &str, sealed: &str) -> Result<(String, bool), SealError> {
        let mut parts = sealed.splitn(3, ':');
        let (Some("v1"), Some(id), Some(data)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SealError::Damaged(
                "not a sealed value (v1:<key>:<data>)".into(),
            ));
        };
        let (sealer, stale) = if id == self.current.id {
            (&self.current, false)
        } else if let Some(p) = self.previous.as_ref().filter(|p| p.id == id) {
            (p, true)
        } else {
            return Err(SealError::WrongKey {
                found: id.to_owned(),
                held: std::iter::once(self.current.id.as_str())
                    .chain(self.previous.as_ref().map(|p| p.id.as_str()))
                    .collect::<Vec<_>>()
                    .join(" and "),
            });
        };
        let bytes = STANDARD
            .decode(data)
            .map_err(|e| SealError::Damaged(e.to_string()))?;
        if bytes.len() < NONCE_LEN {
            return Err(SealError::Damaged("too short".into()));
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| SealError::Damaged("bad nonce".into()))?;
        let mut buf = ciphertext.to_vec();
        let plain = sealer
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| {
                SealError::Damaged(format!(
                    "it does not open under key {id} for `{context}` (changed, or copied from another secret)"
                ))
            })?;
        let plain =
            String::from_utf8(plain.to_vec()).map_err(|_| SealError::Damaged("not text".into()))?;
        Ok((plain, stale))
    }
}

/// The id of the key a sealed value was sealed with.
pub(crate) fn sealed_with(sealed: &str) -> Option<&str> {
    let mut parts = sealed.splitn(3, ':');
    (parts.next() == Some("v1")).then(|| parts.next()).flatten()
}

fn random_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut k);
    k
}

fn key_file(path: &Path, reason: String) -> SealError {
    SealError::KeyFile {
        path: path.display().to_string(),
        reason,
    }
}

fn read_key(path: &Path) -> std::io::Result<[u8; 32]> {
    let text = std::fs::read_to_string(path)?;
    let hex = text.trim();
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "expected 64 hexadecimal digits (32 random bytes, for example from `openssl rand -hex 32`)",
        )
    };
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(k)
}

fn write_key(path: &Path, key: &[u8; 32]) -> Result<(), SealError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| key_file(path, e.to_string()))?;
    f.write_all(format!("{hex}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| key_file(path, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_context() {
        let k = SecretsKey::from_bytes([7; 32], None).unwrap();
        let sealed = k.seal("-1234/bus-key", "hello").unwrap();
        assert!(sealed.starts_with(&format!("v1:{}:", k.id())));
        assert!(!sealed.contains("hello"));
        assert_ne!(
            sealed,
            k.seal("-1234/bus-key", "hello").unwrap(),
            "a nonce per value"
        );
        assert_eq!(
            k.open("-1234/bus-key", &sealed).unwrap(),
            ("hello".into(), false)
        );
        assert!(matches!(
            k.open("-1234/broker-password", &sealed),
            Err(SealError::Damaged(_))
        ));
        let mut tampered = sealed.clone();
        tampered.replace_range(sealed.len() - 3..sealed.len() - 2, "A");
        assert!(k.open("-1234/bus-key", &tampered).is_err());
        let other = SecretsKey::from_bytes([8; 32], None).unwrap();
        assert!(matches!(
            other.open("-1234/bus-key", &sealed),
            Err(SealError::WrongKey { .. })
        ));
        // During a rotation both open; the old one's values are to be sealed again.
        let rotating = SecretsKey::from_bytes([8; 32], Some([7; 32])).unwrap();
        assert_eq!(
            rotating.open("-1234/bus-key", &sealed).unwrap(),
            ("hello".into(), true)
        );
        assert!(k.open("x", "plain").is_err());
    }

    #[test]
    fn the_key_file_is_created_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        assert!(SecretsKey::load_or_create(&path, None, false).is_err());
        let a = SecretsKey::load_or_create(&path, None, true).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = SecretsKey::load_or_create(&path, None, false).unwrap();
        assert_eq!(a.id(), b.id());
        std::fs::write(dir.path().join("bad"), "xyz").unwrap();
        assert!(SecretsKey::load_or_create(&dir.path().join("bad"), None, true).is_err());
        assert!(
            SecretsKey::load_or_create(&path, Some(&dir.path().join("missing")), true).is_err(),
            "a previous key must exist"
        );
    }
}
