//! The platform's secrets in the store: random values created once, shared by every process of
//! the platform that uses the store, never served by the API (their kind, `secret`, has no
//! route). The store itself is the root of trust: its file is the platform's alone (`0600`), and
//! a PostgreSQL store is protected by its own credentials.

use nubo_model::{Kind, SUPER_TENANT_ID};
use nubo_store::{Key, StoreError, Write};
use rand::Rng;
use serde_json::json;

use crate::{Manager, ManagerError, store_err};

/// The store kind of the platform's secrets.
const SECRET: &str = "secret";

/// 32 random bytes, in hex.
fn random_secret() -> String {
    let bytes: [u8; 32] = rand::thread_rng().r#gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Manager {
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
                && let Some(v) = doc.body.get("value").and_then(|v| v.as_str())
            {
                return Ok(v.to_owned());
            }
            let value = seed.map_or_else(random_secret, str::to_owned);
            match self
                .store
                .create(Write {
                    tenant: SUPER_TENANT_ID,
                    key: key.clone(),
                    body: json!({ "value": value }),
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

/// The platform's bus key.
pub const BUS_KEY: &str = "bus-key";
/// While the bus key rotates: the previous one, still accepted until it is forgotten.
pub const BUS_KEY_PREVIOUS: &str = "bus-key-previous";

impl Manager {
    /// A secret, when it exists (never created here).
    pub async fn platform_secret_if_any(&self, name: &str) -> Result<Option<String>, ManagerError> {
        Ok(self
            .store
            .get(SUPER_TENANT_ID, &Key::new(SECRET, name))
            .await
            .map_err(|e| store_err(Kind::User, e))?
            .and_then(|d| {
                d.body
                    .get("value")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            }))
    }

    /// Rotates the platform's bus key: a new one signs from each process's next start, and the
    /// current one becomes the previous, still accepted until [`Self::forget_previous_bus_key`].
    /// Refused while a previous key is still kept (a rotation at a time).
    pub async fn rotate_bus_key(&self) -> Result<(), ManagerError> {
        if self
            .platform_secret_if_any(BUS_KEY_PREVIOUS)
            .await?
            .is_some()
        {
            return Err(ManagerError::StateConflict(
                "a rotation of the bus key is under way: restart every process of the platform, then forget the previous key (DELETE /api/platform/busKey/previous) before rotating again".into(),
            ));
        }
        let current = self.platform_secret(BUS_KEY).await?;
        for (name, value) in [(BUS_KEY_PREVIOUS, current), (BUS_KEY, random_secret())] {
            self.store
                .upsert(Write {
                    tenant: SUPER_TENANT_ID,
                    key: Key::new(SECRET, name),
                    body: json!({ "value": value }),
                    refs: vec![],
                })
                .await
                .map_err(|e| store_err(Kind::User, e))?;
        }
        tracing::warn!("the platform's bus key was rotated: restart every process of the platform");
        Ok(())
    }

    /// Ends a rotation: the previous bus key is no longer accepted (from each process's next
    /// start). `false` when there was none.
    pub async fn forget_previous_bus_key(&self) -> Result<bool, ManagerError> {
        match self
            .store
            .delete(SUPER_TENANT_ID, &Key::new(SECRET, BUS_KEY_PREVIOUS))
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

    use crate::Manager;

    #[tokio::test]
    async fn a_secret_is_created_once_and_shared() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let one = Manager::new(Arc::new(SqliteStore::open(&path).await.unwrap()), vec![]);
        let two = Manager::new(Arc::new(SqliteStore::open(&path).await.unwrap()), vec![]);
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
        one.rotate_bus_key().await.unwrap();
        assert_eq!(
            two.platform_secret_if_any(super::BUS_KEY_PREVIOUS)
                .await
                .unwrap(),
            Some(before.clone())
        );
        assert_ne!(two.platform_secret(super::BUS_KEY).await.unwrap(), before);
        assert!(
            one.rotate_bus_key().await.is_err(),
            "one rotation at a time"
        );
        assert!(two.forget_previous_bus_key().await.unwrap());
        assert!(!two.forget_previous_bus_key().await.unwrap());
        assert_eq!(
            one.platform_secret_if_any(super::BUS_KEY_PREVIOUS)
                .await
                .unwrap(),
            None
        );
    }
}
