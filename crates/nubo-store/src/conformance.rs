//! The behaviour every [`Store`] must have. Each implementation's tests call [`run_all`], and
//! [`run_shared`] with two handles on one database when several processes may share it.
//! [`run_reopened`] checks what must outlive closing the store and opening it again.
//! [`TempPostgres`] gives a test a fresh PostgreSQL database of its own.
//!
//! The lease checks use TTLs of a few hundred milliseconds, and poll (with a deadline) for what
//! takes a TTL to happen.

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::{Fence, Key, Lease, Ref, Store, StoreError, Write};

/// A TTL that outlives every check using it (those end with a release).
const LONG: Duration = Duration::from_secs(60);
/// A TTL short enough to wait out.
const SHORT: Duration = Duration::from_millis(300);
/// How long a check waits for what a TTL brings about before it fails.
const PATIENCE: Duration = Duration::from_secs(10);

fn w(tenant: i64, kind: &str, id: &str, body: serde_json::Value, refs: &[(&str, &str)]) -> Write {
    Write {
        tenant,
        key: Key::new(kind, id),
        body,
        refs: refs
            .iter()
            .map(|(k, i)| Ref::new(tenant, Key::new(*k, *i)))
            .collect(),
    }
}

/// Runs every check against an empty store.
pub async fn run_all(store: &dyn Store) {
    create_get_list(store).await;
    conflicts_and_not_found(store).await;
    references_are_enforced(store).await;
    tenants_are_separate(store).await;
    references_across_tenants(store).await;
    strings_and_bodies_come_back_as_written(store).await;
    concurrent_creates_of_one_key(store).await;
    one_holder_at_a_time(store).await;
    renewals_keep_the_lease_and_the_token(store).await;
    an_expired_lease_goes_to_the_next_holder(store).await;
    fenced_writes_need_the_current_token(store).await;
    concurrent_acquisitions_of_one_lease(store).await;
    journals_append_read_and_snapshot(store).await;
    journal_writes_are_fenced(store).await;
}

/// Runs the checks of two writers on one database, each with its own connections (as two
/// processes would be): `a` and `b` are two stores opened on the same, empty, database.
pub async fn run_shared(a: &dyn Store, b: &dyn Store) {
    one_create_wins_across_handles(a, b).await;
    delete_and_new_reference_never_dangle(a, b).await;
    no_update_is_lost_across_handles(a, b).await;
    conditional_updates_lose_no_increment(a, b).await;
    one_acquisition_wins_across_handles(a, b).await;
    a_deposed_holder_is_fenced_across_handles(a, b).await;
    a_journal_written_by_one_handle_is_read_by_another(a, b).await;
}

/// Runs the checks across a reopen: `open` opens a handle on the same database each time it is
/// called (a new process, or the same one after a restart); the database starts empty.
pub async fn run_reopened<F, Fut>(mut open: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Box<dyn Store>>,
{
    lease_tokens_survive_a_reopen(&mut open).await;
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
    assert_eq!(
        s.version(1, &Key::new("cartridge", "php")).await.unwrap(),
        Some(1)
    );
    assert_eq!(
        s.version(1, &Key::new("cartridge", "nothing"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.version(2, &Key::new("cartridge", "php")).await.unwrap(),
        None,
        "tenants are separate"
    );
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
    assert_eq!(
        s.version(1, &Key::new("cartridge", "php")).await.unwrap(),
        Some(2),
        "the version follows the changes"
    );
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
        matches!(missing, Err(StoreError::MissingReference(ref k)) if k.key.id == "n1"),
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
            assert_eq!(
                by,
                vec![
                    Ref::new(1, Key::new("dp", "d1")),
                    Ref::new(1, Key::new("dp", "d2"))
                ]
            )
        }
        other => panic!("expected InUse, got {other:?}"),
    }
    assert_eq!(
        s.referrers(1, &Key::new("np", "n2")).await.unwrap(),
        vec![Ref::new(1, Key::new("dp", "d2"))]
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

/// A tenant's document may name another tenant's (the super tenant's shared definitions): the
/// named one must exist there, cannot be deleted while named, and names its users in any tenant.
async fn references_across_tenants(s: &dyn Store) {
    s.create(w(1, "np", "shared", json!({}), &[]))
        .await
        .unwrap();
    let cross = |tenant: i64, id: &str, to: &str| Write {
        tenant,
        key: Key::new("dp", id),
        body: json!({}),
        refs: vec![Ref::new(1, Key::new("np", to))],
    };
    // Tenant 2 has no `np/shared` of its own: the reference is to tenant 1's.
    assert!(matches!(
        s.create(cross(2, "d", "missing")).await,
        Err(StoreError::MissingReference(r)) if r == Ref::new(1, Key::new("np", "missing"))
    ));
    s.create(cross(2, "d", "shared")).await.unwrap();
    s.create(cross(3, "d", "shared")).await.unwrap();
    s.create(w(1, "dp", "own", json!({}), &[("np", "shared")]))
        .await
        .unwrap();
    let users = vec![
        Ref::new(1, Key::new("dp", "own")),
        Ref::new(2, Key::new("dp", "d")),
        Ref::new(3, Key::new("dp", "d")),
    ];
    assert_eq!(
        s.referrers(1, &Key::new("np", "shared")).await.unwrap(),
        users
    );
    match s.delete(1, &Key::new("np", "shared")).await {
        Err(StoreError::InUse { by, .. }) => assert_eq!(by, users),
        other => panic!("expected InUse, got {other:?}"),
    }
    // Tenant 2's own document of the same key is not what is named.
    assert!(
        s.referrers(2, &Key::new("np", "shared"))
            .await
            .unwrap()
            .is_empty()
    );
    // An update that drops the reference releases it.
    s.update(w(2, "dp", "d", json!({}), &[])).await.unwrap();
    s.delete(3, &Key::new("dp", "d")).await.unwrap();
    s.delete(1, &Key::new("dp", "own")).await.unwrap();
    s.delete(1, &Key::new("np", "shared")).await.unwrap();
    s.delete(2, &Key::new("dp", "d")).await.unwrap();
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
            Ref::new(1, Key::new("str-ref", "Q")),
            Ref::new(1, Key::new("str-ref", "a")),
            Ref::new(1, Key::new("str-ref", "r"))
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

/// `s.acquire_lease`, which must succeed.
async fn take(s: &dyn Store, name: &str, holder: &str, ttl: Duration) -> Lease {
    match s.acquire_lease(name, holder, ttl).await {
        Ok(Some(lease)) => {
            assert_eq!((lease.name.as_str(), lease.holder.as_str()), (name, holder));
            lease
        }
        other => panic!("{holder} should get lease `{name}`: {other:?}"),
    }
}

/// `s.acquire_lease`, which must find the lease held by another.
async fn refused(s: &dyn Store, name: &str, holder: &str) {
    let got = s.acquire_lease(name, holder, LONG).await;
    assert!(
        matches!(got, Ok(None)),
        "{holder} must not get lease `{name}` while another holds it: {got:?}"
    );
}

/// Tries `holder` on `name` until it gets the lease, as a standby does.
async fn take_over(s: &dyn Store, name: &str, holder: &str, ttl: Duration) -> Lease {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(lease) = s.acquire_lease(name, holder, ttl).await.unwrap() {
            return lease;
        }
        assert!(
            Instant::now() < deadline,
            "{holder} did not get lease `{name}` within {PATIENCE:?}: {:?}",
            s.lease(name).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fenced(result: &Result<crate::Record, StoreError>, lease: &str, token: u64) -> bool {
    matches!(result, Err(StoreError::Fenced { lease: l, token: t }) if l == lease && *t == token)
}

async fn one_holder_at_a_time(s: &dyn Store) {
    assert_eq!(s.lease("excl").await.unwrap(), None, "never held");
    let a = take(s, "excl", "a", LONG).await;
    assert!(a.token >= 1);
    refused(s, "excl", "b").await;
    assert_eq!(s.lease("excl").await.unwrap(), Some(a.clone()));
    // Names are independent.
    let other = take(s, "excl-other", "b", LONG).await;
    // Only the holder, with its token, can release.
    assert!(!s.release_lease("excl", "b", a.token).await.unwrap());
    assert!(!s.release_lease("excl", "a", a.token + 1).await.unwrap());
    assert!(!s.release_lease("never", "a", 1).await.unwrap());
    assert_eq!(s.lease("excl").await.unwrap(), Some(a.clone()));
    // A release lets the next holder in at once, with a greater token.
    assert!(s.release_lease("excl", "a", a.token).await.unwrap());
    assert_eq!(s.lease("excl").await.unwrap(), None, "released");
    assert!(
        !s.release_lease("excl", "a", a.token).await.unwrap(),
        "released already"
    );
    let b = take(s, "excl", "b", LONG).await;
    assert!(b.token > a.token, "{b:?} after {a:?}");
    refused(s, "excl", "a").await;
    assert!(s.release_lease("excl", "b", b.token).await.unwrap());
    assert!(
        s.release_lease("excl-other", "b", other.token)
            .await
            .unwrap()
    );
}

async fn renewals_keep_the_lease_and_the_token(s: &dyn Store) {
    // Renewing every third of the TTL keeps the lease for several TTLs.
    let first = take(s, "renew", "a", SHORT).await;
    let mut last = first.clone();
    let start = Instant::now();
    while start.elapsed() < SHORT * 3 {
        tokio::time::sleep(SHORT / 3).await;
        let renewed = take(s, "renew", "a", SHORT).await;
        assert_eq!(renewed.token, first.token, "a renewal keeps the token");
        assert!(renewed.expires_at_ms >= last.expires_at_ms, "{renewed:?}");
        refused(s, "renew", "b").await;
        last = renewed;
    }
    assert!(last.expires_at_ms > first.expires_at_ms, "renewals extend");
    assert!(s.release_lease("renew", "a", first.token).await.unwrap());
}

async fn an_expired_lease_goes_to_the_next_holder(s: &dyn Store) {
    let start = Instant::now();
    let a = take(s, "expiry", "a", SHORT).await;
    refused(s, "expiry", "b").await;
    let b = take_over(s, "expiry", "b", LONG).await;
    assert!(
        start.elapsed() + Duration::from_millis(10) >= SHORT,
        "taken over after {:?}, before the TTL ran out",
        start.elapsed()
    );
    assert!(b.token > a.token, "{b:?} after {a:?}");
    assert_eq!(s.lease("expiry").await.unwrap(), Some(b.clone()));
    // The old holder is refused now, and cannot release its successor's lease.
    refused(s, "expiry", "a").await;
    assert!(!s.release_lease("expiry", "a", a.token).await.unwrap());
    assert!(s.release_lease("expiry", "b", b.token).await.unwrap());
    // A holder coming back after its lease expired starts a new term, even when nobody took over.
    let c = take(s, "expiry", "c", SHORT).await;
    let deadline = Instant::now() + PATIENCE;
    while s.lease("expiry").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "lease `expiry` never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c2 = take(s, "expiry", "c", LONG).await;
    assert!(c2.token > c.token, "{c2:?} after {c:?}");
    assert!(s.release_lease("expiry", "c", c2.token).await.unwrap());
}

async fn fenced_writes_need_the_current_token(s: &dyn Store) {
    let doc = Key::new("state", "fenced");
    // No lease, no write.
    let never = s
        .upsert_fenced(w(1, "state", "fenced", json!({"by": "x"}), &[]), "fence", 1)
        .await;
    assert!(fenced(&never, "fence", 1), "{never:?}");
    assert!(s.get(1, &doc).await.unwrap().is_none());
    // The holder writes: creates, then replaces (references too).
    let a = take(s, "fence", "a", SHORT).await;
    let r = s
        .upsert_fenced(
            w(1, "state", "fenced", json!({"by": "a"}), &[]),
            "fence",
            a.token,
        )
        .await
        .unwrap();
    assert_eq!(r.version, 1);
    s.create(w(1, "np", "fence-ref", json!({}), &[]))
        .await
        .unwrap();
    let r = s
        .upsert_fenced(
            w(
                1,
                "state",
                "fenced",
                json!({"by": "a", "n": 2}),
                &[("np", "fence-ref")],
            ),
            "fence",
            a.token,
        )
        .await
        .unwrap();
    assert_eq!(r.version, 2);
    assert_eq!(
        s.referrers(1, &Key::new("np", "fence-ref")).await.unwrap(),
        vec![Ref::new(1, doc.clone())]
    );
    // A missing reference is refused as by any write.
    let missing = s
        .upsert_fenced(
            w(1, "state", "fenced", json!({"x": 1}), &[("np", "gone")]),
            "fence",
            a.token,
        )
        .await;
    assert!(
        matches!(missing, Err(StoreError::MissingReference(_))),
        "{missing:?}"
    );
    // A token never issued is refused.
    let ahead = s
        .upsert_fenced(
            w(1, "state", "fenced", json!({"x": 1}), &[]),
            "fence",
            a.token + 1,
        )
        .await;
    assert!(fenced(&ahead, "fence", a.token + 1), "{ahead:?}");
    // After a takeover, the old token writes nothing; the new one writes.
    let b = take_over(s, "fence", "b", LONG).await;
    let late = s
        .upsert_fenced(
            w(1, "state", "fenced", json!({"by": "a", "late": true}), &[]),
            "fence",
            a.token,
        )
        .await;
    assert!(fenced(&late, "fence", a.token), "{late:?}");
    let message = late.unwrap_err().to_string();
    assert!(message.contains("another holder took over"), "{message}");
    let got = s.get(1, &doc).await.unwrap().unwrap();
    assert_eq!(
        (got.version, got.body),
        (2, json!({"by": "a", "n": 2})),
        "a fenced write writes nothing"
    );
    let r = s
        .upsert_fenced(
            w(1, "state", "fenced", json!({"by": "b"}), &[]),
            "fence",
            b.token,
        )
        .await
        .unwrap();
    assert_eq!((r.version, r.created_at), (3, got.created_at));
    assert!(
        s.referrers(1, &Key::new("np", "fence-ref"))
            .await
            .unwrap()
            .is_empty()
    );
    // Released: nobody writes with that token any more.
    assert!(s.release_lease("fence", "b", b.token).await.unwrap());
    let released = s
        .upsert_fenced(
            w(1, "state", "fenced", json!({"x": 1}), &[]),
            "fence",
            b.token,
        )
        .await;
    assert!(fenced(&released, "fence", b.token), "{released:?}");
    assert_eq!(
        s.get(1, &doc).await.unwrap().unwrap().body,
        json!({"by": "b"})
    );
    s.delete(1, &doc).await.unwrap();
    s.delete(1, &Key::new("np", "fence-ref")).await.unwrap();
}

async fn concurrent_acquisitions_of_one_lease(s: &dyn Store) {
    for round in 0..10 {
        let name = format!("race-one-{round}");
        let (x, y, z) = tokio::join!(
            s.acquire_lease(&name, "x", LONG),
            s.acquire_lease(&name, "y", LONG),
            s.acquire_lease(&name, "z", LONG),
        );
        let won: Vec<Lease> = [x, y, z].into_iter().filter_map(|r| r.unwrap()).collect();
        assert_eq!(won.len(), 1, "round {round}: exactly one wins: {won:?}");
        assert_eq!(s.lease(&name).await.unwrap().as_ref(), won.first());
        assert!(
            s.release_lease(&name, &won[0].holder, won[0].token)
                .await
                .unwrap()
        );
    }
}

async fn one_acquisition_wins_across_handles(a: &dyn Store, b: &dyn Store) {
    const ROUNDS: usize = 30;
    let mut last_token = 0;
    for round in 0..ROUNDS {
        // Even rounds race for one lease just released, odd rounds for a name never used.
        let name = if round % 2 == 0 {
            "race-shared".to_owned()
        } else {
            format!("race-fresh-{round}")
        };
        let (x, y) = tokio::join!(
            a.acquire_lease(&name, "a", LONG),
            b.acquire_lease(&name, "b", LONG),
        );
        let winner = match (x.unwrap(), y.unwrap()) {
            (Some(l), None) | (None, Some(l)) => l,
            other => panic!("round {round}: exactly one acquisition wins: {other:?}"),
        };
        assert_eq!(a.lease(&name).await.unwrap().as_ref(), Some(&winner));
        assert_eq!(b.lease(&name).await.unwrap().as_ref(), Some(&winner));
        if round % 2 == 0 {
            assert_eq!(winner.token, last_token + 1, "round {round}: one new term");
            last_token = winner.token;
        } else {
            assert_eq!(winner.token, 1, "round {round}: the first term");
        }
        let (on, other) = if winner.holder == "a" { (a, b) } else { (b, a) };
        refused(other, &name, if winner.holder == "a" { "b" } else { "a" }).await;
        assert!(
            on.release_lease(&name, &winner.holder, winner.token)
                .await
                .unwrap()
        );
    }
}

async fn a_deposed_holder_is_fenced_across_handles(a: &dyn Store, b: &dyn Store) {
    let doc = Key::new("state", "leader");
    let old = take(a, "leader", "a", SHORT).await;
    // `a` keeps writing with its token, as a leader that does not know it was deposed; `b`
    // takes over once the lease expires, then writes.
    let deposed = async {
        let deadline = Instant::now() + PATIENCE;
        let mut versions = Vec::new();
        for i in 0.. {
            let r = a
                .upsert_fenced(
                    w(1, "state", "leader", json!({"by": "a", "i": i}), &[]),
                    "leader",
                    old.token,
                )
                .await;
            match r {
                Ok(r) => versions.push(r.version),
                Err(e) => {
                    assert!(
                        fenced(&Err(e), "leader", old.token),
                        "a stops on Fenced only"
                    );
                    break;
                }
            }
            assert!(Instant::now() < deadline, "a was never fenced off");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        versions
    };
    let successor = async {
        let new = take_over(b, "leader", "b", LONG).await;
        let r = b
            .upsert_fenced(
                w(1, "state", "leader", json!({"by": "b"}), &[]),
                "leader",
                new.token,
            )
            .await
            .unwrap();
        (new, r.version)
    };
    let (a_versions, (new, b_version)) = tokio::join!(deposed, successor);
    assert!(new.token > old.token);
    assert!(!a_versions.is_empty(), "a wrote while it held the lease");
    assert!(
        a_versions.iter().all(|v| *v < b_version),
        "every write of the old term comes before the new term's: {a_versions:?} then {b_version}"
    );
    let got = a.get(1, &doc).await.unwrap().unwrap();
    assert_eq!((got.body, got.version), (json!({"by": "b"}), b_version));
    assert!(b.release_lease("leader", "b", new.token).await.unwrap());
    a.delete(1, &doc).await.unwrap();
}

async fn lease_tokens_survive_a_reopen<F, Fut>(open: &mut F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Box<dyn Store>>,
{
    let s = open().await;
    let mut last = 0;
    for holder in ["a", "b", "c"] {
        let l = take(&*s, "reopen", holder, LONG).await;
        assert!(l.token > last);
        last = l.token;
        if holder != "c" {
            assert!(s.release_lease("reopen", holder, l.token).await.unwrap());
        }
    }
    s.close().await;
    drop(s);
    let s = open().await;
    let held = s.lease("reopen").await.unwrap().expect("c still holds it");
    assert_eq!((held.holder.as_str(), held.token), ("c", last), "{held:?}");
    s.upsert_fenced(w(1, "state", "reopen", json!({}), &[]), "reopen", last)
        .await
        .unwrap();
    assert!(s.release_lease("reopen", "c", last).await.unwrap());
    let d = take(&*s, "reopen", "d", LONG).await;
    assert!(
        d.token > last,
        "tokens keep growing across a reopen: {d:?} after {last}"
    );
    assert!(s.release_lease("reopen", "d", d.token).await.unwrap());
    s.delete(1, &Key::new("state", "reopen")).await.unwrap();
    s.close().await;
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
            (Ok(()), Err(StoreError::MissingReference(k))) if k.key.id == np => {
                assert!(!np_there && !dp_there, "round {round}")
            }
            (Err(StoreError::InUse { by, .. }), Ok(_)) => {
                assert_eq!(by, &vec![Ref::new(1, Key::new("dp", &dp))], "round {round}");
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
        vec![Ref::new(1, Key::new("counter", "c"))]
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

/// Read, modify, write with `update_if` from two handles at once: a write over a version that
/// changed meanwhile is refused (`Stale`), the writer reads again, and no increment is lost
/// (with plain `update` one of two racing increments would be).
async fn conditional_updates_lose_no_increment(a: &dyn Store, b: &dyn Store) {
    const ROUNDS: i64 = 15;
    a.create(w(1, "counter", "cas", json!({"n": 0}), &[]))
        .await
        .unwrap();
    async fn incrementer(s: &dyn Store) -> u32 {
        let key = Key::new("counter", "cas");
        let mut stale = 0;
        for _ in 0..ROUNDS {
            loop {
                let r = s.get(1, &key).await.unwrap().unwrap();
                let n = r.body["n"].as_i64().unwrap();
                match s
                    .update_if(w(1, "counter", "cas", json!({"n": n + 1}), &[]), r.version)
                    .await
                {
                    Ok(_) => break,
                    Err(StoreError::Stale {
                        expected, found, ..
                    }) => {
                        assert_eq!(expected, r.version);
                        assert!(found > expected);
                        stale += 1;
                    }
                    Err(e) => panic!("update_if: {e}"),
                }
            }
        }
        stale
    }
    tokio::join!(incrementer(a), incrementer(b));
    let got = b
        .get(1, &Key::new("counter", "cas"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.body["n"], json!(2 * ROUNDS), "no increment lost");
    assert_eq!(got.version, 1 + 2 * ROUNDS);
    // A stale version is refused even without a race, and nothing is written.
    let err = a
        .update_if(w(1, "counter", "cas", json!({"n": -1}), &[]), 1)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Stale { .. }), "{err}");
    let missing = a
        .update_if(w(1, "counter", "nope", json!({}), &[]), 1)
        .await
        .unwrap_err();
    assert!(matches!(missing, StoreError::NotFound(_)), "{missing}");
    assert_eq!(
        a.get(1, &Key::new("counter", "cas"))
            .await
            .unwrap()
            .unwrap()
            .body["n"],
        json!(2 * ROUNDS)
    );
    a.delete(1, &Key::new("counter", "cas")).await.unwrap();
}

fn bodies(range: std::ops::RangeInclusive<i64>) -> Vec<String> {
    range.map(|i| format!("{{\"n\":{i}}}")).collect()
}

async fn journals_append_read_and_snapshot(s: &dyn Store) {
    assert_eq!(s.journal_last("j").await.unwrap(), 0);
    assert!(s.snapshot_read("j").await.unwrap().is_none());
    assert_eq!(
        s.journal_append("j", &bodies(1..=3), None).await.unwrap(),
        3
    );
    assert_eq!(
        s.journal_append("j", &bodies(4..=5), None).await.unwrap(),
        5
    );
    // Another stream counts on its own.
    assert_eq!(
        s.journal_append("other", &bodies(1..=1), None)
            .await
            .unwrap(),
        1
    );
    let all = s.journal_read("j", 0, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(all[3].body, "{\"n\":4}", "bodies come back as written");
    // Pages.
    let page = s.journal_read("j", 2, 2).await.unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4]);
    assert!(s.journal_read("j", 5, 10).await.unwrap().is_empty());
    // A snapshot after entry 4 drops entries 1..=4; numbering goes on.
    s.snapshot_write("j", 4, "{\"state\":4}", None)
        .await
        .unwrap();
    assert_eq!(
        s.snapshot_read("j").await.unwrap(),
        Some((4, "{\"state\":4}".to_owned()))
    );
    let left = s.journal_read("j", 0, 100).await.unwrap();
    assert_eq!(left.iter().map(|e| e.seq).collect::<Vec<_>>(), [5]);
    assert_eq!(
        s.journal_append("j", &bodies(6..=6), None).await.unwrap(),
        6
    );
    // A snapshot of everything: nothing left, and still no number reused.
    s.snapshot_write("j", 6, "{\"state\":6}", None)
        .await
        .unwrap();
    assert!(s.journal_read("j", 0, 100).await.unwrap().is_empty());
    assert_eq!(s.journal_last("j").await.unwrap(), 6);
    assert_eq!(
        s.journal_append("j", &bodies(7..=7), None).await.unwrap(),
        7
    );
    // An empty append changes nothing.
    assert_eq!(s.journal_append("j", &[], None).await.unwrap(), 7);
    assert_eq!(s.journal_read("other", 0, 10).await.unwrap().len(), 1);
    // A large batch (more entries than one statement takes): every one, numbered in order.
    assert_eq!(
        s.journal_append("big", &bodies(1..=2_500), None)
            .await
            .unwrap(),
        2_500
    );
    let mut seen = 0;
    loop {
        let page = s.journal_read("big", seen, 1_000).await.unwrap();
        let Some(last) = page.last() else { break };
        for (i, e) in page.iter().enumerate() {
            assert_eq!(e.seq, seen + 1 + i as i64);
            assert_eq!(e.body, format!("{{\"n\":{}}}", e.seq));
        }
        seen = last.seq;
    }
    assert_eq!(seen, 2_500);
}

async fn journal_writes_are_fenced(s: &dyn Store) {
    let never = s
        .journal_append(
            "fj",
            &bodies(1..=1),
            Some(Fence {
                lease: "jfence",
                token: 1,
            }),
        )
        .await;
    assert!(
        matches!(never, Err(StoreError::Fenced { .. })),
        "no lease, no append: {never:?}"
    );
    let a = take(s, "jfence", "a", SHORT).await;
    let fence = Some(Fence {
        lease: "jfence",
        token: a.token,
    });
    assert_eq!(
        s.journal_append("fj", &bodies(1..=2), fence).await.unwrap(),
        2
    );
    s.snapshot_write("fj", 1, "{}", fence).await.unwrap();
    // Taken over: the old holder's appends and snapshots are refused, nothing written.
    let b = take_over(s, "jfence", "b", SHORT).await;
    assert!(b.token > a.token);
    let late = s.journal_append("fj", &bodies(3..=3), fence).await;
    assert!(matches!(late, Err(StoreError::Fenced { .. })), "{late:?}");
    let late = s.snapshot_write("fj", 2, "{\"late\":1}", fence).await;
    assert!(matches!(late, Err(StoreError::Fenced { .. })), "{late:?}");
    assert_eq!(s.journal_last("fj").await.unwrap(), 2);
    assert_eq!(
        s.snapshot_read("fj").await.unwrap(),
        Some((1, "{}".to_owned()))
    );
    let fence = Some(Fence {
        lease: "jfence",
        token: b.token,
    });
    assert_eq!(
        s.journal_append("fj", &bodies(3..=3), fence).await.unwrap(),
        3
    );
}

async fn a_journal_written_by_one_handle_is_read_by_another(a: &dyn Store, b: &dyn Store) {
    // Two writers racing (as two processes would, unfenced): every entry gets its own number.
    tokio::join!(
        async {
            for i in 0..20 {
                a.journal_append("shared-j", &bodies(i..=i), None)
                    .await
                    .unwrap();
            }
        },
        async {
            for i in 0..20 {
                b.journal_append("shared-j", &bodies(i..=i), None)
                    .await
                    .unwrap();
            }
        }
    );
    let all = b.journal_read("shared-j", 0, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=40).collect::<Vec<_>>()
    );
    a.snapshot_write("shared-j", 40, "{}", None).await.unwrap();
    assert_eq!(
        b.snapshot_read("shared-j").await.unwrap(),
        Some((40, "{}".to_owned()))
    );
    assert_eq!(b.journal_last("shared-j").await.unwrap(), 40);
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
    /// reported as skipped (`nubo_testing::skipped`; a failure in the full test run).
    pub async fn create_or_skip(what: &str) -> Option<TempPostgres> {
        let Some(admin_url) = std::env::var("NUBO_TEST_POSTGRES_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            nubo_testing::skipped(&format!(
                "{what} on PostgreSQL: NUBO_TEST_POSTGRES_URL is not set (scripts/test starts PostgreSQL and sets it)"
            ));
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
