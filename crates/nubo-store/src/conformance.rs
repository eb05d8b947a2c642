//! The behaviour every [`Store`] must have. Each implementation's tests call [`run_all`].

use serde_json::json;

use crate::{Key, Store, StoreError, Write};

fn w(tenant: i64, kind: &str, id: &str, body: serde_json::Value, refs: &[(&str, &str)]) -> Write {
    Write {
        tenant,
        key: Key::new(kind, id),
        body,
        refs: refs.iter().map(|(k, i)| Key::new(*k, *i)).collect(),
    }
}

/// Runs every check against an empty store.
pub async fn run_all(store: &dyn Store) {
    create_get_list(store).await;
    conflicts_and_not_found(store).await;
    references_are_enforced(store).await;
    tenants_are_separate(store).await;
    concurrent_creates_of_one_key(store).await;
}

async fn create_get_list(s: &dyn Store) {
    let r = s
        .create(w(
            1,
            "cartridge",
            "php",
            json!({"type": "php", "n": [1, 2]}),
            &[],
        ))
        .await
        .unwrap();
    assert_eq!(r.version, 1);
    s.create(w(1, "cartridge", "apache", json!({"type": "apache"}), &[]))
        .await
        .unwrap();
    let got = s
        .get(1, &Key::new("cartridge", "php"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.body, json!({"type": "php", "n": [1, 2]}));
    let ids: Vec<String> = s
        .list(1, "cartridge")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.key.id)
        .collect();
    assert_eq!(ids, ["apache", "php"], "list is ordered by id");
    let up = s
        .update(w(
            1,
            "cartridge",
            "php",
            json!({"type": "php", "v": 2}),
            &[],
        ))
        .await
        .unwrap();
    assert_eq!(up.version, 2);
    assert_eq!(up.created_at, r.created_at);
    let got = s
        .get(1, &Key::new("cartridge", "php"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((got.version, got.body), (2, json!({"type": "php", "v": 2})));
    assert!(s.list(1, "nothing").await.unwrap().is_empty());
    // upsert creates, then replaces.
    assert_eq!(
        s.upsert(w(1, "cartridge", "new", json!({"n": 1}), &[]))
            .await
            .unwrap()
            .version,
        1
    );
    assert_eq!(
        s.upsert(w(1, "cartridge", "new", json!({"n": 2}), &[]))
            .await
            .unwrap()
            .version,
        2
    );
    s.delete(1, &Key::new("cartridge", "new")).await.unwrap();
    s.delete(1, &Key::new("cartridge", "apache")).await.unwrap();
    s.delete(1, &Key::new("cartridge", "php")).await.unwrap();
    assert!(
        s.get(1, &Key::new("cartridge", "php"))
            .await
            .unwrap()
            .is_none()
    );
}

async fn conflicts_and_not_found(s: &dyn Store) {
    s.create(w(1, "np", "a", json!({}), &[])).await.unwrap();
    assert!(matches!(
        s.create(w(1, "np", "a", json!({"other": 1}), &[])).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.get(1, &Key::new("np", "a")).await.unwrap().unwrap().body,
        json!({}),
        "a refused create changes nothing"
    );
    assert!(matches!(
        s.update(w(1, "np", "zz", json!({}), &[])).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.delete(1, &Key::new("np", "zz")).await,
        Err(StoreError::NotFound(_))
    ));
    s.delete(1, &Key::new("np", "a")).await.unwrap();
}

async fn references_are_enforced(s: &dyn Store) {
    let missing = s.create(w(1, "dp", "d1", json!({}), &[("np", "n1")])).await;
    assert!(
        matches!(missing, Err(StoreError::MissingReference(ref k)) if k.id == "n1"),
        "{missing:?}"
    );
    assert!(
        s.get(1, &Key::new("dp", "d1")).await.unwrap().is_none(),
        "a refused create writes nothing"
    );
    s.create(w(1, "np", "n1", json!({}), &[])).await.unwrap();
    s.create(w(1, "np", "n2", json!({}), &[])).await.unwrap();
    s.create(w(1, "dp", "d1", json!({}), &[("np", "n1")]))
        .await
        .unwrap();
    s.create(w(1, "dp", "d2", json!({}), &[("np", "n1"), ("np", "n2")]))
        .await
        .unwrap();
    match s.delete(1, &Key::new("np", "n1")).await {
        Err(StoreError::InUse { by, .. }) => {
            assert_eq!(by, vec![Key::new("dp", "d1"), Key::new("dp", "d2")])
        }
        other => panic!("expected InUse, got {other:?}"),
    }
    assert_eq!(
        s.referrers(1, &Key::new("np", "n2")).await.unwrap(),
        vec![Key::new("dp", "d2")]
    );
    // An update replaces the references.
    s.update(w(1, "dp", "d2", json!({}), &[("np", "n1")]))
        .await
        .unwrap();
    assert!(
        s.referrers(1, &Key::new("np", "n2"))
            .await
            .unwrap()
            .is_empty()
    );
    s.delete(1, &Key::new("np", "n2")).await.unwrap();
    // An update to a missing reference is refused and keeps the old document.
    assert!(matches!(
        s.update(w(1, "dp", "d1", json!({"x": 1}), &[("np", "gone")]))
            .await,
        Err(StoreError::MissingReference(_))
    ));
    assert_eq!(
        s.get(1, &Key::new("dp", "d1")).await.unwrap().unwrap().body,
        json!({})
    );
    s.delete(1, &Key::new("dp", "d1")).await.unwrap();
    s.delete(1, &Key::new("dp", "d2")).await.unwrap();
    s.delete(1, &Key::new("np", "n1")).await.unwrap();
}

async fn tenants_are_separate(s: &dyn Store) {
    s.create(w(1, "app", "a", json!({"t": 1}), &[]))
        .await
        .unwrap();
    s.create(w(2, "app", "a", json!({"t": 2}), &[]))
        .await
        .unwrap();
    assert_eq!(
        s.get(2, &Key::new("app", "a")).await.unwrap().unwrap().body,
        json!({"t": 2})
    );
    assert_eq!(s.list(1, "app").await.unwrap().len(), 1);
    assert!(matches!(
        s.create(w(2, "x", "y", json!({}), &[("app", "b")])).await,
        Err(StoreError::MissingReference(_))
    ));
    s.delete(1, &Key::new("app", "a")).await.unwrap();
    assert!(s.get(2, &Key::new("app", "a")).await.unwrap().is_some());
    s.delete(2, &Key::new("app", "a")).await.unwrap();
}

async fn concurrent_creates_of_one_key(s: &dyn Store) {
    let results = futures_join(s).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(
        ok, 1,
        "exactly one of the concurrent creates wins: {results:?}"
    );
    s.delete(1, &Key::new("race", "r")).await.unwrap();
}

async fn futures_join(s: &dyn Store) -> Vec<Result<(), String>> {
    let mut out = Vec::new();
    let (a, b, c) = tokio::join!(
        s.create(w(1, "race", "r", json!({"n": 1}), &[])),
        s.create(w(1, "race", "r", json!({"n": 2}), &[])),
        s.create(w(1, "race", "r", json!({"n": 3}), &[])),
    );
    for r in [a, b, c] {
        out.push(r.map(|_| ()).map_err(|e| e.to_string()));
    }
    out
}
