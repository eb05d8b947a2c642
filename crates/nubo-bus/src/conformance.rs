//! What every [`Bus`] must do. Each implementation's tests call [`run_all`] with two handles: one
//! to publish, one to subscribe (two connections for a broker-backed bus).

use std::time::Duration;

use nubo_events::{Category, Event};

use crate::{Bus, EventBus, Subscription};

async fn next(sub: &mut Subscription) -> crate::Message {
    tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .expect("a message within 10 s")
        .expect("the subscription is open")
}

fn unique(prefix: &str) -> String {
    format!("conformance/{prefix}/{}", rand::random::<u32>())
}

/// Runs every check.
pub async fn run_all(publisher: &dyn Bus, subscriber: &dyn Bus) {
    exact_and_wildcards(publisher, subscriber).await;
    order_and_payloads(publisher, subscriber).await;
    fan_out(publisher, subscriber).await;
    invalid_topics(publisher, subscriber).await;
}

async fn exact_and_wildcards(p: &dyn Bus, s: &dyn Bus) {
    let base = unique("wild");
    let mut exact = s.subscribe(&format!("{base}/a/b")).await.unwrap();
    let mut plus = s.subscribe(&format!("{base}/+/b")).await.unwrap();
    let mut hash = s.subscribe(&format!("{base}/#")).await.unwrap();
    p.publish(&format!("{base}/x/y"), b"1".to_vec())
        .await
        .unwrap();
    p.publish(&format!("{base}/a/b"), b"2".to_vec())
        .await
        .unwrap();
    let m = next(&mut exact).await;
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice()),
        (format!("{base}/a/b").as_str(), &b"2"[..]),
        "exact filter skips other topics"
    );
    let m = next(&mut plus).await;
    assert_eq!(m.payload, b"2", "`+` matches one level only");
    assert_eq!(next(&mut hash).await.payload, b"1");
    assert_eq!(next(&mut hash).await.payload, b"2");
}

async fn order_and_payloads(p: &dyn Bus, s: &dyn Bus) {
    let topic = unique("order");
    let mut sub = s.subscribe(&topic).await.unwrap();
    for i in 0..500u32 {
        p.publish(&topic, i.to_be_bytes().to_vec()).await.unwrap();
    }
    for i in 0..500u32 {
        assert_eq!(
            next(&mut sub).await.payload,
            i.to_be_bytes(),
            "messages from one publisher arrive in order"
        );
    }
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    p.publish(&topic, big.clone()).await.unwrap();
    assert_eq!(
        next(&mut sub).await.payload,
        big,
        "a 1 MB binary payload arrives intact"
    );
}

async fn fan_out(p: &dyn Bus, s: &dyn Bus) {
    let topic = unique("fan");
    let mut a = s.subscribe(&topic).await.unwrap();
    let mut b = s.subscribe(&topic).await.unwrap();
    p.publish(&topic, b"x".to_vec()).await.unwrap();
    assert_eq!(next(&mut a).await.payload, b"x");
    assert_eq!(next(&mut b).await.payload, b"x");
}

async fn invalid_topics(p: &dyn Bus, s: &dyn Bus) {
    assert!(p.publish("a/+/b", vec![]).await.is_err());
    assert!(p.publish("", vec![]).await.is_err());
    assert!(s.subscribe("a/#/b").await.is_err());
}

/// Events through an [`EventBus`]: decoded in order; anything malformed is skipped.
pub async fn events(p: EventBus, s: EventBus) {
    let mut sub = s.subscribe(Category::Initializer).await.unwrap();
    p.bus()
        .publish("nubo/v1/initializer/Garbage", b"not json".to_vec())
        .await
        .unwrap();
    p.publish(&Event::CompleteTopologyRequest {}).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e, Event::CompleteTopologyRequest {});
}
