//! Users and authentication: HTTP Basic credentials checked against argon2 hashes in the store.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use nubo_model::{Kind, SUPER_TENANT_ID, User};
use nubo_store::{Key, Ref, Write};
use rand::Rng;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::{Manager, ManagerError, store_err};

/// The store kind holding password hashes (never served by the API).
const CREDENTIAL: &str = "credential";

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything in its tenant (and, in the super tenant, the platform).
    Admin,
    /// Ordinary user.
    User,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Tenant of the caller.
    pub tenant_id: i64,
    /// User name.
    pub user: String,
    /// Role.
    pub role: Role,
}

/// How long a verified password is taken on trust without a new verification (as long as the
/// stored hash does not change).
pub const CACHE_TTL: Duration = Duration::from_secs(300);
/// Password verifications a client may start in a burst; then [`VERIFY_REFILL`] per second.
pub const VERIFY_BURST: f64 = 20.0;
/// Password verifications per second a client gets back.
pub const VERIFY_REFILL: f64 = 2.0;
/// Verifications waiting for the pool beyond which the next is refused (429).
pub const VERIFY_QUEUE: usize = 64;
/// Clients remembered by the rate limit (the least recently seen are forgotten beyond).
const CLIENTS: usize = 10_000;

struct Cached {
    hash: String,
    digest: [u8; 32],
    at: Instant,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The authentication's state: the cache of verified passwords, the bounded pool of
/// verifications and the per-client rate limit.
pub(crate) struct AuthState {
    /// A key of this process, so that the cached digests are no unsalted hashes of passwords.
    key: [u8; 32],
    cache: Mutex<HashMap<(i64, String), Cached>>,
    pool: tokio::sync::Semaphore,
    waiting: AtomicUsize,
    clients: Mutex<HashMap<String, Bucket>>,
    dummy: tokio::sync::OnceCell<String>,
    /// The rate limit: burst and tokens back per second.
    limit: (f64, f64),
}

impl AuthState {
    pub(crate) fn new() -> Self {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        AuthState {
            key: rand::thread_rng().r#gen(),
            cache: Mutex::new(HashMap::new()),
            pool: tokio::sync::Semaphore::new(workers),
            waiting: AtomicUsize::new(0),
            clients: Mutex::new(HashMap::new()),
            dummy: tokio::sync::OnceCell::new(),
            limit: (VERIFY_BURST, VERIFY_REFILL),
        }
    }

    fn digest(&self, tenant: i64, user: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update(tenant.to_be_bytes());
        h.update((user.len() as u64).to_be_bytes());
        h.update(user.as_bytes());
        h.update(password.as_bytes());
        h.finalize().into()
    }

    fn cached(&self, key: &(i64, String), hash: &str, digest: &[u8; 32]) -> bool {
        self.cache.lock().is_ok_and(|c| {
            c.get(key).is_some_and(|e| {
                e.at.elapsed() < CACHE_TTL
                    && constant_time_eq(e.hash.as_bytes(), hash.as_bytes())
                    && constant_time_eq(&e.digest, digest)
            })
        })
    }

    fn remember(&self, key: (i64, String), hash: String, digest: [u8; 32]) {
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= CLIENTS {
                c.retain(|_, e| e.at.elapsed() < CACHE_TTL);
            }
            c.insert(
                key,
                Cached {
                    hash,
                    digest,
                    at: Instant::now(),
                },
            );
        }
    }

    pub(crate) fn forget(&self, tenant: i64, user: &str) {
        if let Ok(mut c) = self.cache.lock() {
            c.retain(|(t, u), _| !(*t == tenant && u == user));
        }
    }

    pub(crate) fn forget_tenant(&self, tenant: i64) {
        if let Ok(mut c) = self.cache.lock() {
            c.retain(|(t, _), _| *t != tenant);
        }
    }

    /// A hash of a random password with the parameters of real ones.
    async fn dummy_hash(&self) -> Result<String, ManagerError> {
        self.dummy
            .get_or_try_init(|| async {
                let random: [u8; 16] = rand::thread_rng().r#gen();
                hash_password(format!("{random:?}")).await
            })
            .await
            .cloned()
    }

    /// Takes a token of the client's bucket, or says in how many seconds one comes back.
    fn take_token(&self, client: &str) -> Result<(), u64> {
        let (burst, refill) = self.limit;
        let Ok(mut clients) = self.clients.lock() else {
            return Ok(());
        };
        let now = Instant::now();
        if clients.len() >= CLIENTS && !clients.contains_key(client) {
            // Full buckets carry nothing worth keeping.
            clients
                .retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * refill < burst);
        }
        let b = clients.entry(client.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * refill).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / refill).ceil().clamp(1.0, 3600.0) as u64)
        }
    }

    /// One password verification for `client`: rate-limited per client, run in the bounded
    /// pool, refused when too many wait for it.
    async fn verify(
        &self,
        client: &str,
        password: String,
        hash: String,
    ) -> Result<bool, ManagerError> {
        if let Err(secs) = self.take_token(client) {
            return Err(ManagerError::TooManyRequests {
                message: "too many password attempts from this client: wait before trying again"
                    .into(),
                retry_after_secs: secs,
            });
        }
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= VERIFY_QUEUE {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(ManagerError::TooManyRequests {
                message: "the server is busy verifying passwords: try again in a moment".into(),
                retry_after_secs: 1,
            });
        }
        let waiting = Waiting(&self.waiting);
        let _permit = self
            .pool
            .acquire()
            .await
            .map_err(|e| ManagerError::Unavailable(e.to_string()))?;
        drop(waiting);
        verify_password(password, hash).await
    }
}

/// Compares two byte strings in a time that depends on their lengths only.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl Manager {
    /// Makes sure the super tenant's `admin` user exists. On first start it takes `password`, or
    /// generates one and returns it so the caller can print it once.
    pub async fn ensure_admin(
        &self,
        password: Option<&str>,
    ) -> Result<Option<String>, ManagerError> {
        let tenant = SUPER_TENANT_ID;
        let cred_key = Key::new(CREDENTIAL, "admin");
        if self
            .store
            .get(tenant, &cred_key)
            .await
            .map_err(|e| store_err(Kind::User, e))?
            .is_some()
        {
            return Ok(None);
        }
        let (password, generated) = match password {
            Some(p) if !p.is_empty() => (p.to_owned(), false),
            _ => (
                rand::thread_rng()
                    .sample_iter(&rand::distributions::Alphanumeric)
                    .take(24)
                    .map(char::from)
                    .collect::<String>(),
                true,
            ),
        };
        let hash = hash_password(password.clone()).await?;
        let user = User {
            user_name: "admin".into(),
            credential: None,
            role: Some("admin".into()),
            first_name: None,
            last_name: None,
            email: None,
            profile_name: None,
            extra: Default::default(),
        };
        if self
            .store
            .get(tenant, &Key::new(Kind::User.as_str(), "admin"))
            .await
            .map_err(|e| store_err(Kind::User, e))?
            .is_none()
        {
            self.store
                .create(Write {
                    tenant,
                    key: Key::new(Kind::User.as_str(), "admin"),
                    body: serde_json::to_value(&user)
                        .map_err(|e| ManagerError::Unavailable(e.to_string()))?,
                    refs: vec![],
                })
                .await
                .map_err(|e| store_err(Kind::User, e))?;
        }
        self.store
            .create(Write {
                tenant,
                key: cred_key,
                body: json!({ "passwordHash": hash }),
                refs: vec![Ref::new(tenant, Key::new(Kind::User.as_str(), "admin"))],
            })
            .await
            .map_err(|e| store_err(Kind::User, e))?;
        tracing::info!(user = "admin", "admin user created");
        Ok(generated.then_some(password))
    }

    /// Checks a user name (`admin`, or `user@tenant.domain` once tenants exist) and password,
    /// for a client (its address: the key of the rate limit on password verifications).
    ///
    /// Every refusal costs one password verification, whether the tenant or the user exists or
    /// not, and says the same thing; a deactivated tenant is named only to a caller whose
    /// password is right. A verification runs only when the stored hash or the password differs
    /// from the last one verified for the user (within [`CACHE_TTL`]): a password changed or a
    /// user deleted on another server sharing the store takes effect at the next request.
    pub async fn authenticate(
        &self,
        client: &str,
        user: &str,
        password: &str,
    ) -> Result<Principal, ManagerError> {
        let denied = || ManagerError::Unauthenticated("wrong user name or password".into());
        let (name, tenant, tenant_state) = match user.rsplit_once('@') {
            None => (user, Some(SUPER_TENANT_ID), None),
            Some((name, "carbon.super")) => (name, Some(SUPER_TENANT_ID), None),
            Some((name, domain)) => match self
                .get::<nubo_model::Tenant>(SUPER_TENANT_ID, domain)
                .await
            {
                Ok(t) => (
                    name,
                    Some(t.tenant_id.unwrap_or(0)),
                    Some((domain, t.active != Some(false))),
                ),
                Err(ManagerError::NotFound { .. }) => (name, None, None),
                Err(e) => return Err(e),
            },
        };
        let stored = match tenant {
            Some(t) => self
                .store
                .get(t, &Key::new(CREDENTIAL, name))
                .await
                .map_err(|e| store_err(Kind::User, e))?
                .and_then(|rec| {
                    rec.body
                        .get("passwordHash")
                        .and_then(|v| v.as_str())
                        .map(str::to_owned)
                }),
            None => None,
        };
        let (Some(tenant), Some(hash)) = (tenant, stored) else {
            // The same work as a wrong password, so that the answer's time says nothing.
            let dummy = self.auth.dummy_hash().await?;
            self.auth.verify(client, password.to_owned(), dummy).await?;
            return Err(denied());
        };
        let cache_key = (tenant, name.to_owned());
        let d = self.auth.digest(tenant, name, password);
        let cached = self.auth.cached(&cache_key, &hash, &d);
        if !cached {
            if !self
                .auth
                .verify(client, password.to_owned(), hash.clone())
                .await?
            {
                return Err(denied());
            }
            self.auth.remember(cache_key, hash, d);
        }
        if let Some((domain, false)) = tenant_state {
            return Err(ManagerError::Unauthenticated(format!(
                "tenant `{domain}` is deactivated: ask the platform administrator to activate it"
            )));
        }
        let role = match self.get::<User>(tenant, name).await {
            Ok(u) if u.role.as_deref() == Some("admin") => Role::Admin,
            _ => Role::User,
        };
        Ok(Principal {
            tenant_id: tenant,
            user: name.to_owned(),
            role,
        })
    }
}

impl Manager {
    /// Stores (or replaces) a user's password hash and forgets cached logins of that user.
    pub(crate) async fn set_password(
        &self,
        tenant: i64,
        user: &str,
        password: &str,
    ) -> Result<(), ManagerError> {
        let hash = hash_password(password.to_owned()).await?;
        let w = Write {
            tenant,
            key: Key::new(CREDENTIAL, user),
            body: json!({ "passwordHash": hash }),
            refs: vec![Ref::new(tenant, Key::new(Kind::User.as_str(), user))],
        };
        let r = self.store.upsert(w).await;
        r.map_err(|e| store_err(Kind::User, e))?;
        self.auth.forget(tenant, user);
        Ok(())
    }

    /// Forgets a user's password.
    pub(crate) async fn drop_password(&self, tenant: i64, user: &str) -> Result<(), ManagerError> {
        match self.store.delete(tenant, &Key::new(CREDENTIAL, user)).await {
            Ok(()) | Err(nubo_store::StoreError::NotFound(_)) => {}
            Err(e) => return Err(store_err(Kind::User, e)),
        }
        self.auth.forget(tenant, user);
        Ok(())
    }
}

async fn hash_password(password: String) -> Result<String, ManagerError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| ManagerError::Unavailable(format!("cannot hash password: {e}")))
    })
    .await
    .map_err(|e| ManagerError::Unavailable(e.to_string()))?
}

async fn verify_password(password: String, hash: String) -> Result<bool, ManagerError> {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .map_err(|e| ManagerError::Unavailable(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use nubo_store::SqliteStore;

    use super::*;

    #[tokio::test]
    async fn admin_is_created_once_and_authenticates() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("db")).await.unwrap());
        let m = Manager::new(
            store,
            vec!["local".into()],
            crate::SecretsKey::random().unwrap(),
        );
        let generated = m
            .ensure_admin(None)
            .await
            .unwrap()
            .expect("a generated password");
        assert_eq!(generated.len(), 24);
        assert_eq!(
            m.ensure_admin(Some("other")).await.unwrap(),
            None,
            "second start keeps the first password"
        );
        let p = m.authenticate("c", "admin", &generated).await.unwrap();
        assert_eq!((p.tenant_id, p.role), (SUPER_TENANT_ID, Role::Admin));
        assert!(
            m.authenticate("c", "admin@carbon.super", &generated)
                .await
                .is_ok()
        );
        assert!(matches!(
            m.authenticate("c", "admin", "other").await,
            Err(ManagerError::Unauthenticated(_))
        ));
        assert!(matches!(
            m.authenticate("c", "nobody", "x").await,
            Err(ManagerError::Unauthenticated(_))
        ));
    }

    #[tokio::test]
    async fn a_password_changed_by_another_server_takes_effect_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let one = Manager::new(
            Arc::new(SqliteStore::open(&path).await.unwrap()),
            vec!["local".into()],
            crate::SecretsKey::random().unwrap(),
        );
        let two = Manager::new(
            Arc::new(SqliteStore::open(&path).await.unwrap()),
            vec!["local".into()],
            crate::SecretsKey::random().unwrap(),
        );
        one.ensure_admin(Some("first")).await.unwrap();
        assert!(one.authenticate("c", "admin", "first").await.is_ok());
        // Cached on `one`; changed through `two`.
        two.set_password(SUPER_TENANT_ID, "admin", "second")
            .await
            .unwrap();
        assert!(matches!(
            one.authenticate("c", "admin", "first").await,
            Err(ManagerError::Unauthenticated(_))
        ));
        assert!(one.authenticate("c", "admin", "second").await.is_ok());
        // Deleted through `two`: refused on `one` too.
        two.drop_password(SUPER_TENANT_ID, "admin").await.unwrap();
        assert!(matches!(
            one.authenticate("c", "admin", "second").await,
            Err(ManagerError::Unauthenticated(_))
        ));
    }

    #[tokio::test]
    async fn password_guessing_is_rate_limited_per_client_whether_the_user_exists_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("db")).await.unwrap());
        let mut m = Manager::new(
            store,
            vec!["local".into()],
            crate::SecretsKey::random().unwrap(),
        );
        // Tokens come back slowly enough that the test's own pace does not matter.
        m.auth.limit = (VERIFY_BURST, 0.01);
        m.ensure_admin(Some("right")).await.unwrap();
        // Wrong passwords and unknown users (of a known or unknown tenant) cost the same: each
        // is a verification and takes a token.
        for i in 0..VERIFY_BURST as usize {
            let user = match i % 3 {
                0 => "admin".to_owned(),
                1 => format!("nobody{i}"),
                _ => format!("x@no-such-tenant{i}.org"),
            };
            assert!(matches!(
                m.authenticate("10.0.0.1", &user, "wrong").await,
                Err(ManagerError::Unauthenticated(_))
            ));
        }
        let Err(ManagerError::TooManyRequests {
            retry_after_secs, ..
        }) = m.authenticate("10.0.0.1", "admin", "right").await
        else {
            panic!("the next attempt is refused before any verification");
        };
        assert!(retry_after_secs >= 1);
        // Another client is not held back.
        assert!(m.authenticate("10.0.0.2", "admin", "right").await.is_ok());
        // A verified password is not verified again (no token spent) for its client.
        let client = "10.0.0.2";
        for _ in 0..(VERIFY_BURST as usize * 2) {
            assert!(m.authenticate(client, "admin", "right").await.is_ok());
        }
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
