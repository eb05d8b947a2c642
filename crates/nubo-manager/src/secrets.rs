//! The platform's secrets in the store: random values created once, shared by every process of
//! the platform that uses the store, never served by the API (their kind, `secret`, has no
//! route), and sealed with the secrets key ([`crate::SecretsKey`]), which lives outside the store:
//! a copy of the store holds no usable secret. A value stored before sealing existed is sealed
//! when it is first read, or by [`Manager::reseal_secrets`] at a server's start.

use nubo_model::{Kind, SUPER_TENANT_ID};
use nubo_store::{Key, Record, StoreError, Write};
use rand::Rng;
use serde_json::json;

use crate::{Manager, ManagerError, sealing::SealError, store_err};

/// The store kind of the platform's secrets.
const SECRET: &str = "secret";

/// 32 random bytes, in hex.
fn random_secret() -> String {
    let bytes: [u8; 32] = rand::thread_rng().r#gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn seal_err(e: SealError) -> ManagerError {
    ManagerError::Unavailable(e.to_string())
}

fn context(name: &str) -> String {
    format!("{SUPER_TENANT_ID}/{name}")
}

impl Manager {
    /// The stored document of a secret, sealed.
    fn sealed_body(&self, name: &str, value: &str) -> Result<serde_json::Value, ManagerError> {
        let sealed = self
            .secrets_key
            .seal(&context(name), value)
            .map_err(seal_err)?;
        Ok(json!({ "sealed": sealed }))
    }

    /// The value of a stored secret, and whether it should be sealed again (stored plain, or
    /// sealed with the previous key of a rotation).
    fn unseal(&self, name: &str, doc: &Record) -> Result<Option<(String, bool)>, ManagerError> {
        if let Some(sealed) = doc.body.get("sealed").and_then(|v| v.as_str()) {
            return self
                .secrets_key
                .open(&context(name), sealed)
                .map(Some)
                .map_err(seal_err);
        }
        Ok(doc
            .body
            .get("value")
            .and_then(|v| v.as_str())
            .map(|v| (v.to_owned(), true)))
    }

    /// Seals a stored secret again with the current key, unless someone changed it meanwhile.
    async fn reseal(&self, name: &str, value: &str, doc: &Record) -> Result<(), ManagerError> {
        let write = Write {
            tenant: SUPER_TENANT_ID,
            key: Key::new(SECRET, name),
            body: self.sealed_body(name, value)?,
            refs: vec![],
        };
        match self.store.update_if(write, doc.version).await {
            Ok(_) => {
                tracing::info!(
                    secret = name,
                    key = self.secrets_key.id(),
                    "secret sealed with the current key"
                );
                Ok(())
            }
            Err(StoreError::Stale { .. } | StoreError::NotFound(_)) => Ok(()),
            Err(e) => Err(store_err(Kind::User, e)),
        }
    }

    /// Seals again every platform secret not sealed with the current key (stored before sealing,
    /// or with the previous key of a rotation). Fails, saying what to do, when one is sealed with
    /// a key this server does not hold. Returns how many were sealed again.
    pub async fn reseal_secrets(&self) -> Result<usize, ManagerError> {
        let docs = self
            .store
            .list(SUPER_TENANT_ID, SECRET)
            .await
            .map_err(|e| store_err(Kind::User, e))?;
        let mut resealed = 0;
        for doc in docs {
            let name = doc.key.id.clone();
            if let Some((value, true)) = self.unseal(&name, &doc)? {
                self.reseal(&name, &value, &doc).await?;
                resealed += 1;
            }
        }
        Ok(resealed)
    }

    /// The secret `name`: 32 random bytes in hex, created by whichever process asks first.
    pub async fn platform_secret(&self, name: &str) -> Result<String, ManagerError> {
        self.platform_secret_or(name, None).await
    }

    /// The secret `name`; when the store has none yet, `seed` becomes it (else a random one).
    /// A store holding another value than `seed` is an error: two platforms' secrets mixed.
    pub async fn platform_secret_or(
        &self,
        name: &str,
        seed: Option<&str>,
    ) -> Result<String, ManagerError> {
        let value = self.secret_or_create(name, seed).await?;
        match seed {
            Some(s) if s != value => Err(ManagerError::StateConflict(format!(
                "the store holds another `{name}` than the one given: these credentials belong to another platform"
            ))),
            _ => Ok(value),
        }
    }

    async fn secret_or_create(
        &self,
        name: &str,
        seed: Option<&str>,
    ) -> Result<String, ManagerError> {
        let key = Key::new(SECRET, name);
        for _ in 0..3 {
            if let Some(doc) = self
                .store
                .get(SUPER_TENANT_ID, &key)
                .await
                .map_err(|e| store_err(Kind::User, e))?
                && let Some((v, stale)) = self.unseal(name, &doc)?
            {
                if stale {
                    self.reseal(name, &v, &doc).await?;
                }
                return Ok(v);
            }
            let value = seed.map_or_else(random_secret, str::to_owned);
            match self
                .store
                .create(Write {
                    tenant: SUPER_TENANT_ID,
                    key: key.clone(),
                    body: self.sealed_body(name, &value)?,
                    refs: vec![],
                })
                .await
            {
                Ok(_) => {
                    tracing::info!(secret = name, "platform secret created");
                    return Ok(value);
                }
                // Another process created it first: read theirs.
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(store_err(Kind::User, e)),
            }
        }
        Err(ManagerError::Unavailable(format!(
            "cannot read or create the platform secret `{name}`"
        )))
    }
}

/// The id of the secrets key the store's platform secrets are sealed with, if any is sealed: a
/// server without a key file must not make a new key for a store whose secrets another opens.
pub async fn sealed_with(store: &dyn nubo_store::Store) -> Result<Option<String>, StoreError> {
    Ok(store
        .list(SUPER_TENANT_ID, SECRET)
        .await?
        .iter()
        .find_map(|d| {
            let sealed = d.body.get("sealed")?.as_str()?;
            crate::sealing::sealed_with(sealed).map(str::to_owned)
        }))
}

/// The platform's bus key.
pub const BUS_KEY: &str = "bus-key";
/// While the bus key rotates: the previous one, still accepted until it is forgotten.
pub const BUS_KEY_PREVIOUS: &str = "bus-key-previous";
/// The embedded broker's password (user `nubo`).
pub const BROKER_PASSWORD: &str = "broker-password";
/// While the broker's password rotates: the previous one, still accepted until it is forgotten.
pub const BROKER_PASSWORD_PREVIOUS: &str = "broker-password-previous";

/// A platform secret that rotates: a new value is used from each process's next start, the
/// previous one is still accepted until it is forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotating {
    /// The key that proves every message on the bus.
    BusKey,
    /// The embedded broker's password.
    BrokerPassword,
}

impl Rotating {
    /// The names of its current and previous values.
    pub fn names(self) -> (&'static str, &'static str) {
        match self {
            Rotating::BusKey => (BUS_KEY, BUS_KEY_PREVIOUS),
            Rotating::BrokerPassword => (BROKER_PASSWORD, BROKER_PASSWORD_PREVIOUS),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Rotating::BusKey => "the bus key",
            Rotating::BrokerPassword => "the broker's password",
        }
    }

    /// Its path in the API (`/api/platform/<path>/rotate`).
    pub fn path(self) -> &'static str {
        match self {
            Rotating::BusKey => "busKey",
            Rotating::BrokerPassword => "brokerPassword",
        }
    }
}

impl Manager {
    /// A secret, when it exists (never created here).
    pub async fn platform_secret_if_any(&self, name: &str) -> Result<Option<String>, ManagerError> {
        let doc = self
            .store
            .get(SUPER_TENANT_ID, &Key::new(SECRET, name))
            .await
            .map_err(|e| store_err(Kind::User, e))?;
        match doc {
            Some(d) => Ok(self.unseal(name, &d)?.map(|(v, _)| v)),
            None => Ok(None),
        }
    }

    /// Rotates a platform secret: a new value is used from each process's next start, and the
    /// current one becomes the previous, still accepted until [`Self::forget_previous`].
    /// Refused while a previous value is still kept (a rotation at a time).
    pub async fn rotate(&self, which: Rotating) -> Result<(), ManagerError> {
        let (name_now, name_before) = which.names();
        if self.platform_secret_if_any(name_before).await?.is_some() {
            return Err(ManagerError::StateConflict(format!(
                "a rotation of {} is under way: restart every process of the platform, then forget the previous value (DELETE /api/platform/{}/previous) before rotating again",
                which.label(),
                which.path()
            )));
        }
        let current = self.platform_secret(name_now).await?;
        for (name, value) in [(name_before, current), (name_now, random_secret())] {
            self.store
                .upsert(Write {
                    tenant: SUPER_TENANT_ID,
                    key: Key::new(SECRET, name),
                    body: self.sealed_body(name, &value)?,
                    refs: vec![],
                })
                .await
                .map_err(|e| store_err(Kind::User, e))?;
        }
        tracing::warn!(
            secret = name_now,
            "a platform secret was rotated: restart every process of the platform"
        );
        Ok(())
    }

    /// Ends a rotation: the previous value is no longer accepted (from each process's next
    /// start). `false` when there was none.
    pub async fn forget_previous(&self, which: Rotating) -> Result<bool, ManagerError> {
        match self
            .store
            .delete(SUPER_TENANT_ID, &Key::new(SECRET, which.names().1))
            .await
        {
            Ok(()) => Ok(true),
            Err(StoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(store_err(Kind::User, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use nubo_store::SqliteStore;

    use nubo_store::{Key, Store};

    use crate::{Manager, SecretsKey};

    #[tokio::test]
    async fn a_secret_is_created_once_and_shared() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let manager = |key: [u8; 32], previous: Option<[u8; 32]>| {
            let path = path.clone();
            async move {
                Manager::new(
                    Arc::new(SqliteStore::open(&path).await.unwrap()),
                    vec![],
                    SecretsKey::from_bytes(key, previous).unwrap(),
                )
            }
        };
        let one = manager([1; 32], None).await;
        let two = manager([1; 32], None).await;
        let a = one.platform_secret("bus-key").await.unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(two.platform_secret("bus-key").await.unwrap(), a);
        assert_ne!(one.platform_secret("broker-password").await.unwrap(), a);
        // A seed: taken when there is none yet, checked against the store's otherwise.
        let seed = "ab".repeat(32);
        assert_eq!(
            one.platform_secret_or("k", Some(&seed)).await.unwrap(),
            seed
        );
        assert_eq!(two.platform_secret("k").await.unwrap(), seed);
        assert!(
            two.platform_secret_or("k", Some(&"cd".repeat(32)))
                .await
                .is_err()
        );
        // Rotating the bus key: the current one becomes the previous, once at a time.
        let before = one.platform_secret(super::BUS_KEY).await.unwrap();
        one.rotate(super::Rotating::BusKey).await.unwrap();
        assert_eq!(
            two.platform_secret_if_any(super::BUS_KEY_PREVIOUS)
                .await
                .unwrap(),
            Some(before.clone())
        );
        assert_ne!(two.platform_secret(super::BUS_KEY).await.unwrap(), before);
        assert!(
            one.rotate(super::Rotating::BusKey).await.is_err(),
            "one rotation at a time"
        );
        assert!(two.forget_previous(super::Rotating::BusKey).await.unwrap());
        assert!(!two.forget_previous(super::Rotating::BusKey).await.unwrap());
        assert_eq!(
            one.platform_secret_if_any(super::BUS_KEY_PREVIOUS)
                .await
                .unwrap(),
            None
        );
        // Sealed in the store: no value in the clear.
        let store = SqliteStore::open(&path).await.unwrap();
        let doc = store
            .get(-1234, &Key::new("secret", super::BUS_KEY))
            .await
            .unwrap()
            .unwrap();
        let bus_key = one.platform_secret(super::BUS_KEY).await.unwrap();
        assert!(doc.body.get("value").is_none() && !doc.body.to_string().contains(&bus_key));
        // Another key opens nothing, and says so.
        let stranger = manager([9; 32], None).await;
        let e = stranger.platform_secret(super::BUS_KEY).await.unwrap_err();
        assert!(e.to_string().contains("--secrets-key"), "{e}");
        assert!(stranger.reseal_secrets().await.is_err());
        // Rotation: the new key with the previous one reseals everything, then needs no previous.
        let rotating = manager([2; 32], Some([1; 32])).await;
        assert_eq!(rotating.reseal_secrets().await.unwrap(), 3);
        let rotated = manager([2; 32], None).await;
        assert_eq!(
            rotated.platform_secret(super::BUS_KEY).await.unwrap(),
            bus_key
        );
        assert_eq!(rotated.reseal_secrets().await.unwrap(), 0);
        assert!(one.platform_secret(super::BUS_KEY).await.is_err());
    }

    #[tokio::test]
    async fn a_secret_stored_in_the_clear_is_sealed_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("db")).await.unwrap());
        store
            .create(nubo_store::Write {
                tenant: -1234,
                key: Key::new("secret", "bus-key"),
                body: serde_json::json!({"value": "old"}),
                refs: vec![],
            })
            .await
            .unwrap();
        let m = Manager::new(store.clone(), vec![], SecretsKey::random().unwrap());
        assert_eq!(m.reseal_secrets().await.unwrap(), 1);
        assert_eq!(m.platform_secret("bus-key").await.unwrap(), "old");
        let doc = store
            .get(-1234, &Key::new("secret", "bus-key"))
            .await
            .unwrap()
            .unwrap();
        assert!(doc.body.get("sealed").is_some() && doc.body.get("value").is_none());
    }
}
