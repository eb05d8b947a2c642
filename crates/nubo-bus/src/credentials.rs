//! The credentials file other processes of the platform join its bus with.

use nubo_envelope::{BusAuth, BusKey};

/// What another process of the platform needs to join its bus: the broker's URL (with its
/// credentials) and the platform's key. `nubo server` writes it to `<data-dir>/bus.json`, readable
/// by its owner only; `nubo lb` and `nubo node` read it (`--bus-credentials FILE`).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct BusCredentials {
    /// The bus URL, with the broker's user name and password when it wants them.
    pub url: String,
    /// The platform's key (64 hex digits).
    pub key: String,
    /// While the key rotates: the previous key, still accepted.
    #[serde(
        rename = "previousKey",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub previous_key: Option<String>,
}

impl std::fmt::Debug for BusCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusCredentials")
            .field("url", &crate::redact_url(&self.url))
            .finish_non_exhaustive()
    }
}

impl BusCredentials {
    /// Reads a credentials file.
    pub fn read(path: &std::path::Path) -> Result<Self, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let c: BusCredentials = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not a bus credentials file: {e}", path.display()))?;
        if BusKey::from_hex(&c.key).is_none() {
            return Err(format!("{}: `key` is not 64 hex digits", path.display()));
        }
        Ok(c)
    }

    /// Writes it, readable by its owner only.
    pub fn write(&self, path: &std::path::Path) -> std::io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt;
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&text)?;
        drop(f);
        std::fs::rename(&tmp, path)
    }

    /// How a platform component holding these credentials speaks on the bus.
    pub fn auth(&self) -> BusAuth {
        let previous = self.previous_key.as_deref().and_then(BusKey::from_hex);
        match (BusKey::from_hex(&self.key), previous) {
            (Some(current), Some(previous)) => BusAuth::PlatformRotating { current, previous },
            (Some(k), None) => BusAuth::Platform(k),
            // `read` refuses such a file.
            (None, _) => BusAuth::Platform(BusKey::generate()),
        }
    }
}
