//! The metadata service's store (Stratos' `/metadata/api`): per application, and per cluster of
//! it, keys with lists of values, written and read by the application's members (with their
//! token) and by the tenant's users. One document per application (kind `metadata`, in the
//! application's tenant), changed by optimistic read-modify-write, and removed when the
//! application is undeployed or deleted.
//!
//! The changes are pure functions over [`MetadataDoc`], bounded: a hostile member or user can
//! neither grow a document without limit nor write a key or value that breaks a reader.

use std::collections::BTreeMap;

use nubo_model::FieldError;
use nubo_store::{Key, StoreError, Write};
use serde::{Deserialize, Serialize};

use crate::{Manager, ManagerError};

/// The store kind of metadata documents.
pub const KIND: &str = "metadata";
/// Most keys in one scope (the application, or one cluster).
pub const MAX_KEYS: usize = 256;
/// Most values under one key.
pub const MAX_VALUES: usize = 100;
/// Longest key (bytes).
pub const MAX_KEY_LEN: usize = 256;
/// Longest value (bytes).
pub const MAX_VALUE_LEN: usize = 4096;
/// Most clusters with metadata in one application.
pub const MAX_CLUSTERS: usize = 256;

/// One key and its values, as Stratos' metadata service writes it (`{"key": …, "values": […]}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Property {
    /// The key.
    pub key: String,
    /// Its values, in the order they were first added.
    pub values: Vec<String>,
}

/// Where a property lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// The application's own properties.
    Application,
    /// One cluster's.
    Cluster(&'a str),
}

/// An application's metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataDoc {
    /// The application's properties.
    #[serde(default)]
    pub properties: BTreeMap<String, Vec<String>>,
    /// Each cluster's properties.
    #[serde(default)]
    pub clusters: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

fn field(field: &str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// Checks a key or value: not empty where a key, bounded, no control characters (a reader
/// writes them into environment variables and logs).
fn check_text(name: &str, text: &str, max: usize, errors: &mut Vec<FieldError>) {
    if text.len() > max {
        errors.push(field(name, format!("longer than {max} bytes")));
    }
    if text.chars().any(char::is_control) {
        errors.push(field(name, "contains a control character"));
    }
}

impl MetadataDoc {
    /// The properties of `scope` (`None`: nothing there, as Stratos answers 404).
    pub fn properties(&self, scope: Scope<'_>) -> Option<Vec<Property>> {
        let map = match scope {
            Scope::Application => &self.properties,
            Scope::Cluster(c) => self.clusters.get(c)?,
        };
        if map.is_empty() {
            return None;
        }
        Some(
            map.iter()
                .map(|(key, values)| Property {
                    key: key.clone(),
                    values: values.clone(),
                })
                .collect(),
        )
    }

    /// Adds `p`'s values to its key in `scope`, as Stratos does: values already there are kept,
    /// repeated ones skipped. Refuses, changing nothing, what breaks a bound.
    pub fn add(&mut self, scope: Scope<'_>, p: &Property) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if p.key.is_empty() {
            errors.push(field("key", "is empty"));
        }
        check_text("key", &p.key, MAX_KEY_LEN, &mut errors);
        if p.values.is_empty() {
            errors.push(field("values", "is empty: give at least one value"));
        }
        for (i, v) in p.values.iter().enumerate() {
            check_text(&format!("values[{i}]"), v, MAX_VALUE_LEN, &mut errors);
        }
        if let Scope::Cluster(c) = scope {
            check_text("cluster", c, MAX_KEY_LEN, &mut errors);
            if !self.clusters.contains_key(c) && self.clusters.len() >= MAX_CLUSTERS {
                errors.push(field(
                    "cluster",
                    format!("the application has metadata for {MAX_CLUSTERS} clusters already"),
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let empty = BTreeMap::new();
        let map = match scope {
            Scope::Application => &self.properties,
            Scope::Cluster(c) => self.clusters.get(c).unwrap_or(&empty),
        };
        if !map.contains_key(&p.key) && map.len() >= MAX_KEYS {
            return Err(vec![field(
                "key",
                format!("this scope has {MAX_KEYS} keys already: delete one first"),
            )]);
        }
        let mut values = map.get(&p.key).cloned().unwrap_or_default();
        for v in &p.values {
            if !values.contains(v) {
                values.push(v.clone());
            }
        }
        if values.len() > MAX_VALUES {
            return Err(vec![field(
                "values",
                format!("the key would have more than {MAX_VALUES} values: delete some first"),
            )]);
        }
        let map = match scope {
            Scope::Application => &mut self.properties,
            Scope::Cluster(c) => self.clusters.entry(c.to_owned()).or_default(),
        };
        map.insert(p.key.clone(), values);
        Ok(())
    }

    /// Removes a key of the application's properties, or one value of it; whether anything was
    /// there.
    pub fn remove(&mut self, key: &str, value: Option<&str>) -> bool {
        match value {
            None => self.properties.remove(key).is_some(),
            Some(v) => {
                let Some(values) = self.properties.get_mut(key) else {
                    return false;
                };
                let before = values.len();
                values.retain(|x| x != v);
                let removed = values.len() != before;
                if values.is_empty() {
                    self.properties.remove(key);
                }
                removed
            }
        }
    }
}

fn key(application_id: &str) -> Key {
    Key {
        kind: KIND.to_owned(),
        id: application_id.to_owned(),
    }
}

fn unavailable(e: StoreError) -> ManagerError {
    ManagerError::Unavailable(e.to_string())
}

impl Manager {
    /// An application's metadata (empty when none was written).
    pub async fn metadata(
        &self,
        tenant: i64,
        application_id: &str,
    ) -> Result<MetadataDoc, ManagerError> {
        match self
            .store
            .get(tenant, &key(application_id))
            .await
            .map_err(unavailable)?
        {
            Some(rec) => serde_json::from_value(rec.body).map_err(|e| {
                ManagerError::Unavailable(format!(
                    "the stored metadata of `{application_id}` is unreadable: {e}"
                ))
            }),
            None => Ok(MetadataDoc::default()),
        }
    }

    /// Changes an application's metadata with `change`, as one read-modify-write: a concurrent
    /// change makes it read and apply `change` again, so that no writer's values are lost.
    /// Returns what `change` returned.
    pub async fn edit_metadata<R>(
        &self,
        tenant: i64,
        application_id: &str,
        change: impl Fn(&mut MetadataDoc) -> Result<R, Vec<FieldError>>,
    ) -> Result<R, ManagerError> {
        const ATTEMPTS: usize = 16;
        let k = key(application_id);
        for _ in 0..ATTEMPTS {
            let current = self.store.get(tenant, &k).await.map_err(unavailable)?;
            let mut doc: MetadataDoc = match &current {
                Some(rec) => serde_json::from_value(rec.body.clone()).map_err(|e| {
                    ManagerError::Unavailable(format!(
                        "the stored metadata of `{application_id}` is unreadable: {e}"
                    ))
                })?,
                None => MetadataDoc::default(),
            };
            let out = change(&mut doc).map_err(|errors| ManagerError::BadRequest {
                message: format!(
                    "the metadata of `{application_id}` was not changed: {}",
                    errors
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                errors,
            })?;
            let body =
                serde_json::to_value(&doc).map_err(|e| ManagerError::Unavailable(e.to_string()))?;
            let write = Write {
                tenant,
                key: k.clone(),
                body,
                refs: Vec::new(),
            };
            let written = match &current {
                Some(rec) => self.store.update_if(write, rec.version).await,
                None => self.store.create(write).await,
            };
            match written {
                Ok(_) => return Ok(out),
                Err(StoreError::Stale { .. } | StoreError::Conflict(_)) => continue,
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(ManagerError::Unavailable(format!(
            "the metadata of `{application_id}` kept changing: retry"
        )))
    }

    /// Removes an application's metadata (undeployed or deleted, as Stratos clears it);
    /// whether there was any.
    pub async fn clear_metadata(
        &self,
        tenant: i64,
        application_id: &str,
    ) -> Result<bool, ManagerError> {
        match self.store.delete(tenant, &key(application_id)).await {
            Ok(()) => Ok(true),
            Err(StoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(unavailable(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prop(key: &str, values: &[&str]) -> Property {
        Property {
            key: key.into(),
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        }
    }

    #[test]
    fn adding_keeps_values_and_skips_repeats_as_stratos_does() {
        let mut d = MetadataDoc::default();
        assert_eq!(d.properties(Scope::Application), None);
        d.add(Scope::Application, &prop("db", &["10.0.0.1"]))
            .unwrap();
        d.add(Scope::Application, &prop("db", &["10.0.0.2", "10.0.0.1"]))
            .unwrap();
        assert_eq!(
            d.properties(Scope::Application),
            Some(vec![prop("db", &["10.0.0.1", "10.0.0.2"])])
        );
        d.add(Scope::Cluster("c1"), &prop("port", &["3306"]))
            .unwrap();
        assert_eq!(
            d.properties(Scope::Cluster("c1")),
            Some(vec![prop("port", &["3306"])])
        );
        assert_eq!(d.properties(Scope::Cluster("c2")), None);
        assert!(d.remove("db", Some("10.0.0.1")));
        assert!(!d.remove("db", Some("10.0.0.9")));
        assert_eq!(
            d.properties(Scope::Application),
            Some(vec![prop("db", &["10.0.0.2"])])
        );
        assert!(d.remove("db", Some("10.0.0.2")), "the last value");
        assert_eq!(
            d.properties(Scope::Application),
            None,
            "the key goes with it"
        );
        assert!(!d.remove("db", None));
    }

    #[test]
    fn bounds_are_kept_and_a_refusal_changes_nothing() {
        let mut d = MetadataDoc::default();
        let refused = |d: &mut MetadataDoc, p: Property, field: &str| {
            let before = d.clone();
            let errors = d.add(Scope::Application, &p).unwrap_err();
            assert!(errors.iter().any(|e| e.field == field), "{errors:?}");
            assert_eq!(*d, before);
        };
        refused(&mut d, prop("", &["x"]), "key");
        refused(&mut d, prop("k", &[]), "values");
        refused(&mut d, prop(&"k".repeat(MAX_KEY_LEN + 1), &["x"]), "key");
        refused(
            &mut d,
            prop("k", &["ok", &"v".repeat(MAX_VALUE_LEN + 1)]),
            "values[1]",
        );
        refused(&mut d, prop("k\n", &["x"]), "key");
        refused(&mut d, prop("k", &["a\u{0}b"]), "values[0]");
        for i in 0..MAX_KEYS {
            d.add(Scope::Application, &prop(&format!("k{i}"), &["v"]))
                .unwrap();
        }
        refused(&mut d, prop("one-more", &["v"]), "key");
        // An existing key still takes values, up to the bound.
        let many: Vec<String> = (0..MAX_VALUES).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        d.add(Scope::Application, &prop("k0", &many[1..])).unwrap();
        refused(&mut d, prop("k0", &["101st"]), "values");
    }
}
