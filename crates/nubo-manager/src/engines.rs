//! Container engines' client keys: a `docker` partition's `tlsKey` property may hold the key
//! itself (PEM) instead of a file on the hosts. It is sealed before the network partition is
//! stored (bound to the partition), kept across an update that leaves it out, never served, and
//! opened only for a member's launch (through [`Manager::open_engine_key`], which the
//! controller's payloads use: they travel sealed on the bus and are written where the member's
//! workload cannot read them), and sealed again after a rotation of the secrets key.

use nubo_model::{ENGINE_KEY_PROPERTY, SUPER_TENANT_ID, engine_key_in_place};
use serde_json::Value;

use crate::{Manager, ManagerError};

/// The sealing context of a partition's engine key: a sealed key copied onto another partition
/// does not open.
fn context(tenant: i64, network_partition: &str, partition: &str) -> String {
    format!("networkPartition/{tenant}/{network_partition}/{partition}/{ENGINE_KEY_PROPERTY}")
}

/// Each partition's id and property list of a network partition document.
fn partitions(body: &mut Value) -> impl Iterator<Item = (String, &mut Vec<Value>)> {
    body.get_mut("partitions")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(|part| {
            let id = part.get("id")?.as_str()?.to_owned();
            let props = part
                .as_object_mut()?
                .entry("property")
                .or_insert_with(|| Value::Array(Vec::new()))
                .as_array_mut()?;
            Some((id, props))
        })
}

fn is_key(p: &Value) -> bool {
    p.get("name").and_then(Value::as_str) == Some(ENGINE_KEY_PROPERTY)
}

impl Manager {
    /// Seals the engine keys given in place in a network partition document before it is
    /// stored; a partition whose key is left out keeps the stored version's sealed one.
    pub(crate) fn seal_engine_keys(
        &self,
        tenant: i64,
        network_partition: &str,
        body: &mut Value,
        previous: Option<&Value>,
    ) -> Result<(), ManagerError> {
        let mut kept: Vec<(String, Value)> = Vec::new();
        if let Some(mut old) = previous.cloned() {
            for (id, props) in partitions(&mut old) {
                if let Some(k) = props.iter().find(|p| is_key(p)) {
                    kept.push((id, k.clone()));
                }
            }
        }
        for (id, props) in partitions(body) {
            match props.iter_mut().find(|p| is_key(p)) {
                Some(p) => {
                    let plain = p
                        .get("value")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    if engine_key_in_place(&plain) {
                        let sealed = self
                            .secrets_key
                            .seal(&context(tenant, network_partition, &id), &plain)
                            .map_err(|e| {
                                ManagerError::Unavailable(format!(
                                    "cannot seal the engine key of partition `{id}`: {e}"
                                ))
                            })?;
                        p["value"] = Value::String(sealed);
                    }
                }
                None => {
                    if let Some((_, k)) = kept.iter().find(|(k, _)| *k == id) {
                        props.push(k.clone());
                    }
                }
            }
        }
        Ok(())
    }

    /// A partition's engine key, opened from its sealed form (`None`: it does not open, which
    /// is logged). Docker partitions are the platform's (the super tenant's) alone.
    pub fn open_engine_key(
        &self,
        network_partition: &str,
        partition: &str,
        sealed: &str,
    ) -> Option<String> {
        match self.secrets_key.open(
            &context(SUPER_TENANT_ID, network_partition, partition),
            sealed,
        ) {
            Ok((key, _)) => Some(key),
            Err(e) => {
                tracing::error!(network_partition, partition, error = %e, "a partition's engine key does not open");
                None
            }
        }
    }

    /// Seals again with the current secrets key the engine keys still sealed with the previous
    /// one of a rotation; how many (run at each start).
    pub async fn reseal_engine_keys(&self) -> Result<usize, ManagerError> {
        self.reseal_stored::<nubo_model::NetworkPartition>(SUPER_TENANT_ID, |np, body| {
            let mut changed = 0;
            for (id, props) in partitions(body) {
                for p in props.iter_mut().filter(|p| is_key(p)) {
                    if !p["value"].as_str().is_some_and(engine_key_in_place) {
                        continue;
                    }
                    let ctx = context(SUPER_TENANT_ID, np, &id);
                    changed += usize::from(self.reseal_value(&mut p["value"], &ctx).map_err(|e| {
                        ManagerError::Unavailable(format!(
                            "the engine key of network partition `{np}`, partition `{id}` does not open: {e}; start with the key it was sealed with as --secrets-key-previous"
                        ))
                    })?);
                }
            }
            Ok(changed)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use nubo_model::NetworkPartition;
    use serde_json::json;

    use crate::Manager;

    #[tokio::test]
    async fn an_engine_key_given_in_place_is_sealed_kept_and_sealed_again_after_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let manager = |key: [u8; 32], previous: Option<[u8; 32]>| {
            let path = path.clone();
            async move { crate::keyed_manager(&path, "docker", key, previous).await }
        };
        const KEY: &str =
            "-----BEGIN PRIVATE KEY-----\nengine-key-never-shown\n-----END PRIVATE KEY-----\n";
        let t = nubo_model::SUPER_TENANT_ID;
        let body = |props: serde_json::Value| {
            serde_json::to_vec(&json!({"id": "np", "provider": "docker",
                "partitions": [{"id": "p1", "property": props}]}))
            .unwrap()
        };
        let sealed = |m: &Manager| {
            let m = m.store.clone();
            async move {
                let rec = m
                    .get(
                        t,
                        &nubo_store::Key {
                            kind: "networkPartition".into(),
                            id: "np".into(),
                        },
                    )
                    .await
                    .unwrap()
                    .unwrap();
                assert!(!rec.body.to_string().contains("engine-key-never-shown"));
                rec.body["partitions"][0]["property"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["name"] == "tlsKey")
                    .map(|p| p["value"].as_str().unwrap().to_owned())
            }
        };
        let old = manager([1; 32], None).await;
        old.add::<NetworkPartition>(
            t,
            &body(json!([{"name": "endpoint", "value": "tcp://e:2376"},
                {"name": "tlsKey", "value": KEY}])),
        )
        .await
        .unwrap();
        let first = sealed(&old).await.expect("sealed in the store");
        assert_eq!(
            old.open_engine_key("np", "p1", &first).as_deref(),
            Some(KEY)
        );
        // Bound to its partition.
        assert_eq!(old.open_engine_key("np", "p2", &first), None);
        // Not served.
        let mut served: NetworkPartition = old.get(t, "np").await.unwrap();
        nubo_model::Artifact::redact_secrets(&mut served);
        assert!(!serde_json::to_string(&served).unwrap().contains("tlsKey"));
        // An update that leaves it out keeps it.
        old.update::<NetworkPartition>(
            t,
            &body(json!([{"name": "endpoint", "value": "tcp://e:2377"}])),
        )
        .await
        .unwrap();
        assert_eq!(sealed(&old).await.as_deref(), Some(first.as_str()));
        // A rotation: sealed again once, then opened with the new key alone.
        let rotating = manager([2; 32], Some([1; 32])).await;
        assert_eq!(rotating.reseal_engine_keys().await.unwrap(), 1);
        assert_eq!(rotating.reseal_engine_keys().await.unwrap(), 0);
        let new = manager([2; 32], None).await;
        let again = sealed(&new).await.unwrap();
        assert_eq!(
            new.open_engine_key("np", "p1", &again).as_deref(),
            Some(KEY)
        );
    }
}
