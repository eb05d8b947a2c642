//! The behaviour every [`Store`] must have. Each implementation's tests call [`run_all`], and
//! [`run_shared`] with two handles on one database when several processes may share it.
//! [`TempPostgres`] gives a test a fresh PostgreSQL database of its own.

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
    strings_and_bodies_come_back_as_written(store).await;
    concurrent_creates_of_one_key(store).await;
}

/// Runs the checks of two writers on one database, each with its own connections (as two
/// processes would be): `a` and `b` are two stores opened on the same, empty, database.
pub async fn run_shared(a: &dyn Store, b: &dyn Store) {
    one_create_wins_across_handles(a, b).await;
    delete_and_new_reference_never_dangle(a, b).await;
    no_update_is_lost_across_handles(a, b).await;
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

async fn strings_and_bodies_come_back_as_written(s: &dyn Store) {
    // Ids are opaque: ordered bytewise whatever the database's collation, quotes and non-ASCII kept.
    let ids = [
        "b",
        "B",
        "a",
        "_x",
        "Z1",
        "e",
        "\u{e9}t\u{e9}",
        "it's",
        "50%",
        "a b",
    ];
    for id in ids {
        s.create(w(1, "str", id, json!({ "id": id }), &[]))
            .await
            .unwrap();
    }
    let listed: Vec<String> = s
        .list(1, "str")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.key.id)
        .collect();
    let mut bytewise: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    bytewise.sort();
    assert_eq!(listed, bytewise, "list is ordered by id, bytewise");
    for (id, refs) in [
        ("r", &[("str", "it's"), ("str", "B")][..]),
        ("Q", &[("str", "B")][..]),
        ("a", &[("str", "B")][..]),
    ] {
        s.create(w(1, "str-ref", id, json!({}), refs))
            .await
            .unwrap();
    }
    assert_eq!(
        s.referrers(1, &Key::new("str", "B")).await.unwrap(),
        vec![
            Key::new("str-ref", "Q"),
            Key::new("str-ref", "a"),
            Key::new("str-ref", "r")
        ],
        "referrers are ordered by kind and id, bytewise"
    );
    // The body as written: key order, big and precise numbers, escapes, nesting.
    let text = r#"{"z":1,"a":{"y":[1,2.5,-1e-6],"b":null},"m":"\u0000 \"q\" \u00e9\u2603","big":18446744073709551615,"neg":-9223372036854775808,"f":1.7976931348623157e308,"t":true}"#;
    let body: serde_json::Value = serde_json::from_str(text).unwrap();
    s.create(w(1, "str", "body", body.clone(), &[]))
        .await
        .unwrap();
    let got = s.get(1, &Key::new("str", "body")).await.unwrap().unwrap();
    assert_eq!(
        got.body.to_string(),
        body.to_string(),
        "the body comes back as written"
    );
    let listed = s.list(1, "str").await.unwrap();
    let from_list = listed.iter().find(|r| r.key.id == "body").unwrap();
    assert_eq!(from_list.body.to_string(), body.to_string());
    assert_eq!(from_list.tenant, 1);
    for id in ["r", "Q", "a"] {
        s.delete(1, &Key::new("str-ref", id)).await.unwrap();
    }
    for id in ids.iter().chain(&["body"]) {
        s.delete(1, &Key::new("str", *id)).await.unwrap();
    }
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

async fn one_create_wins_across_handles(a: &dyn Store, b: &dyn Store) {
    const ROUNDS: usize = 25;
    for round in 0..ROUNDS {
        let id = format!("r{round}");
        let (x, y) = tokio::join!(
            a.create(w(1, "race", &id, json!({"by": "a"}), &[])),
            b.create(w(1, "race", &id, json!({"by": "b"}), &[])),
        );
        let winner = match (&x, &y) {
            (Ok(_), Err(StoreError::Conflict(_))) => "a",
            (Err(StoreError::Conflict(_)), Ok(_)) => "b",
            _ => panic!(
                "round {round}: exactly one create wins, the other is a Conflict: {x:?} {y:?}"
            ),
        };
        let got = b.get(1, &Key::new("race", &id)).await.unwrap().unwrap();
        assert_eq!(
            (got.body, got.version),
            (json!({ "by": winner }), 1),
            "round {round}"
        );
    }
    for round in 0..ROUNDS {
        a.delete(1, &Key::new("race", format!("r{round}")))
            .await
            .unwrap();
    }
}

async fn delete_and_new_reference_never_dangle(a: &dyn Store, b: &dyn Store) {
    for round in 0..25 {
        let np = format!("n{round}");
        let dp = format!("d{round}");
        a.create(w(1, "np", &np, json!({}), &[])).await.unwrap();
        // One deletes the document while the other creates a document referencing it.
        let np_key = Key::new("np", &np);
        let (del, cre) = tokio::join!(
            a.delete(1, &np_key),
            b.create(w(1, "dp", &dp, json!({}), &[("np", &np)])),
        );
        let np_there = b.get(1, &Key::new("np", &np)).await.unwrap().is_some();
        let dp_there = a.get(1, &Key::new("dp", &dp)).await.unwrap().is_some();
        match (&del, &cre) {
            (Ok(()), Err(StoreError::MissingReference(k))) if k.id == np => {
                assert!(!np_there && !dp_there, "round {round}")
            }
            (Err(StoreError::InUse { by, .. }), Ok(_)) => {
                assert_eq!(by, &vec![Key::new("dp", &dp)], "round {round}");
                assert!(np_there && dp_there, "round {round}");
                b.delete(1, &Key::new("dp", &dp)).await.unwrap();
                a.delete(1, &Key::new("np", &np)).await.unwrap();
            }
            _ => panic!("round {round}: either the delete or the reference wins: {del:?} {cre:?}"),
        }
    }
    assert!(a.list(1, "np").await.unwrap().is_empty());
    assert!(a.list(1, "dp").await.unwrap().is_empty());
}

async fn no_update_is_lost_across_handles(a: &dyn Store, b: &dyn Store) {
    const ROUNDS: i64 = 20;
    a.create(w(1, "counter", "c", json!({"n": 0}), &[]))
        .await
        .unwrap();
    a.create(w(1, "np", "target", json!({}), &[]))
        .await
        .unwrap();
    async fn writer(s: &dyn Store, who: &str) {
        for i in 0..ROUNDS {
            let refs: &[(&str, &str)] = if i % 2 == 0 { &[("np", "target")] } else { &[] };
            s.update(w(1, "counter", "c", json!({"by": who, "i": i}), refs))
                .await
                .unwrap();
        }
    }
    tokio::join!(writer(a, "a"), writer(b, "b"));
    let got = b.get(1, &Key::new("counter", "c")).await.unwrap().unwrap();
    assert_eq!(got.version, 1 + 2 * ROUNDS, "every update counted once");
    let expect = if got.body["i"].as_i64().unwrap() % 2 == 0 {
        vec![Key::new("counter", "c")]
    } else {
        vec![]
    };
    assert_eq!(
        a.referrers(1, &Key::new("np", "target")).await.unwrap(),
        expect,
        "the references are those of the last update"
    );
    a.delete(1, &Key::new("counter", "c")).await.unwrap();
    a.delete(1, &Key::new("np", "target")).await.unwrap();
}

/// A PostgreSQL database of one test's own, with a random name, on the server that
/// `NUBO_TEST_POSTGRES_URL` names; dropped (connections and all) when this value is.
///
/// It is created with an ICU `en-US` collation when the server has one, so that anything that
/// relied on the database's collation to order ids would show.
#[cfg(feature = "postgres")]
pub struct TempPostgres {
    admin_url: String,
    name: String,
    url: String,
}

#[cfg(feature = "postgres")]
impl TempPostgres {
    /// A fresh database, or `None` when `NUBO_TEST_POSTGRES_URL` is not set: then `what` is
    /// reported as skipped on the process's standard error (past the test harness's capture).
    pub async fn create_or_skip(what: &str) -> Option<TempPostgres> {
        let Some(admin_url) = std::env::var("NUBO_TEST_POSTGRES_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            use std::io::Write;
            if let Ok(mut err) = std::fs::OpenOptions::new().append(true).open("/dev/stderr") {
                let _ = writeln!(
                    err,
                    "SKIPPED {what} on PostgreSQL: NUBO_TEST_POSTGRES_URL is not set (scripts/test starts PostgreSQL and sets it)"
                );
            }
            return None;
        };
        Some(TempPostgres::create(&admin_url).await)
    }

    /// A fresh database on the server of `admin_url` (a user allowed to create databases).
    pub async fn create(admin_url: &str) -> TempPostgres {
        use sqlx::Connection;
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "nubo_test_{}_{nanos}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut admin = sqlx::PgConnection::connect(admin_url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "NUBO_TEST_POSTGRES_URL={}: cannot connect: {e}",
                    crate::redact_url(admin_url)
                )
            });
        let icu = format!(
            "CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
        );
        if sqlx::raw_sql(&icu).execute(&mut admin).await.is_err() {
            sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
                .execute(&mut admin)
                .await
                .unwrap_or_else(|e| panic!("cannot create the test database {name}: {e}"));
        }
        let _ = admin.close().await;
        TempPostgres {
            admin_url: admin_url.to_owned(),
            url: with_database(admin_url, &name),
            name,
        }
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// `url` naming the database `name` instead of its own.
#[cfg(feature = "postgres")]
fn with_database(url: &str, name: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let authority_start = head.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match head[authority_start..].find('/') {
        Some(i) => &head[..authority_start + i],
        None => head,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

#[cfg(feature = "postgres")]
impl Drop for TempPostgres {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread of its own
        // with a runtime of its own drops the database, and this waits for it.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                use sqlx::Connection;
                let mut admin = sqlx::PgConnection::connect(&admin_url)
                    .await
                    .map_err(|e| e.to_string())?;
                sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = admin.close().await;
                Ok::<(), String>(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("cannot drop the test database {}: {e}", self.name),
            Err(_) => eprintln!("cannot drop the test database {}", self.name),
        }
    }
}
