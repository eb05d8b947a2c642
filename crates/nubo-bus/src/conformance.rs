//! What every [`Bus`] must do. Each implementation's tests call [`run_all`] with two handles: one
//! to publish, one to subscribe (two connections for a broker-backed bus); a bus whose broker the
//! test can restart also runs [`survives_restart`].

use std::future::Future;
use std::time::{Duration, Instant};

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
    awkward_levels(publisher, subscriber).await;
    a_lagging_subscriber_loses_no_lifecycle_event(publisher, subscriber).await;
    a_filter_subscribed_again_after_a_drop_misses_nothing(publisher, subscriber).await;
}

/// A subscription dropped (the broker may stop sending its filter) and the same filter
/// subscribed again at once, over and over: the new subscription gets what is published after it,
/// and a second subscription of a filter outlives the first one's drop.
async fn a_filter_subscribed_again_after_a_drop_misses_nothing(p: &dyn Bus, s: &dyn Bus) {
    let topic = unique("again");
    for round in 0..20 {
        drop(s.subscribe(&topic).await.unwrap());
        // Whatever is received next notices the drop.
        p.publish(&topic, b"nudge".to_vec()).await.unwrap();
        let mut again = s.subscribe(&topic).await.unwrap();
        let want = format!("round-{round}").into_bytes();
        p.publish(&topic, want.clone()).await.unwrap();
        while next(&mut again).await.payload != want {}
    }
    let mut kept = s.subscribe(&topic).await.unwrap();
    drop(s.subscribe(&topic).await.unwrap());
    p.publish(&topic, b"nudge".to_vec()).await.unwrap();
    p.publish(&topic, b"still".to_vec()).await.unwrap();
    while next(&mut kept).await.payload != b"still" {}
}

/// A subscriber that reads nothing while more than [`crate::SUBSCRIPTION_BUFFER`] messages
/// arrive on a topic other than the statistics' (lifecycle events) gets every one of them, in
/// order, once it reads.
async fn a_lagging_subscriber_loses_no_lifecycle_event(p: &dyn Bus, s: &dyn Bus) {
    let topic = unique("lag");
    let mut sub = s.subscribe(&topic).await.unwrap();
    let n = crate::SUBSCRIPTION_BUFFER + 500;
    for i in 0..n {
        p.publish(&topic, format!("lag-{i}").into_bytes())
            .await
            .unwrap();
    }
    let mut got = 0;
    while got < n {
        let m = next(&mut sub).await;
        assert_eq!(
            m.payload,
            format!("lag-{got}").into_bytes(),
            "in order, none lost"
        );
        got += 1;
    }
}

/// Three overlapping filters of one connection. Each gets the message, but the embedded broker
/// (rumqttd) sends one copy per matching filter of a connection, which `MqttBus` hands to every
/// matching subscription: with it, each of these may get a message more than once (MQTT 3.1.1
/// allows it, §3.3.5), so this checks first deliveries only.
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

/// Levels holding what some brokers reserve (dots, as in member ids; spaces, `*`, `>`, `%`, `$`),
/// and a `#` filter, which also matches its parent level. (The three filters cover different
/// topics: the embedded broker sends one copy per matching filter of a connection, see
/// `exact_and_wildcards`.)
async fn awkward_levels(p: &dyn Bus, s: &dyn Bus) {
    let base = unique("levels");
    let odd = "app.web.member-1/a b*c>d%41/$x";
    let (exact_topic, plus_topic) = (format!("{base}/e/{odd}"), format!("{base}/p/{odd}"));
    let mut exact = s.subscribe(&exact_topic).await.unwrap();
    let mut plus = s
        .subscribe(&format!("{base}/p/+/a b*c>d%41/+"))
        .await
        .unwrap();
    let mut hash = s.subscribe(&format!("{base}/h/#")).await.unwrap();
    for (topic, other) in [
        (
            &exact_topic,
            format!("{base}/e/app/web/member-1/a b*c>d%41/$x"),
        ),
        (&plus_topic, format!("{base}/p/app/web/a b*c>d%41/$x")),
    ] {
        p.publish(topic, b"1".to_vec()).await.unwrap();
        // Dots are not level separators: this is another topic, which the filter does not match.
        p.publish(&other, b"2".to_vec()).await.unwrap();
        p.publish(topic, b"3".to_vec()).await.unwrap();
    }
    for (sub, topic) in [(&mut exact, &exact_topic), (&mut plus, &plus_topic)] {
        let m = next(sub).await;
        assert_eq!(
            (m.topic.as_str(), m.payload.as_slice()),
            (topic.as_str(), &b"1"[..])
        );
        assert_eq!(next(sub).await.payload, b"3", "other topics skipped");
    }
    let parent = format!("{base}/h");
    let (below, dotted) = (
        format!("{parent}/{odd}"),
        format!("{parent}/app/web/member-1"),
    );
    p.publish(&parent, b"0".to_vec()).await.unwrap();
    p.publish(&below, b"1".to_vec()).await.unwrap();
    p.publish(&dotted, b"2".to_vec()).await.unwrap();
    p.publish(&below, b"3".to_vec()).await.unwrap();
    // Order holds per topic; the parent and the levels below may interleave.
    let mut got: Vec<(String, Vec<u8>)> = Vec::new();
    for _ in 0..4 {
        let m = next(&mut hash).await;
        got.push((m.topic, m.payload));
    }
    let of = |t: &str| -> Vec<Vec<u8>> {
        got.iter()
            .filter(|(topic, _)| topic == t)
            .map(|(_, p)| p.clone())
            .collect()
    };
    assert_eq!(of(&parent), [b"0".to_vec()], "`a/#` matches `a`: {got:?}");
    assert_eq!(of(&below), [b"1".to_vec(), b"3".to_vec()], "{got:?}");
    assert_eq!(of(&dotted), [b"2".to_vec()], "{got:?}");
}

/// A subscription made before the broker restarts (on the same address; `restart` stops it and
/// starts it again) goes on receiving afterwards, in order, without anyone calling anything:
/// both handles reconnect, and the subscriber subscribes again, by themselves.
pub async fn survives_restart<F, Fut>(p: &dyn Bus, s: &dyn Bus, restart: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let topic = unique("restart");
    let mut sub = s.subscribe(&topic).await.unwrap();
    p.publish(&topic, b"before".to_vec()).await.unwrap();
    assert_eq!(next(&mut sub).await.payload, b"before");
    restart().await;
    // What is published while the connection is down may be lost: publish until one arrives.
    let deadline = Instant::now() + Duration::from_secs(30);
    'resumed: loop {
        assert!(
            Instant::now() < deadline,
            "no message came through within 30 s of the broker's restart"
        );
        let _ = tokio::time::timeout(
            Duration::from_millis(500),
            p.publish(&topic, b"after".to_vec()),
        )
        .await;
        let wait = tokio::time::sleep(Duration::from_millis(200));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                m = sub.recv() => {
                    let m = m.expect("the subscription outlives the broker");
                    if m.payload == b"after" {
                        break 'resumed;
                    }
                }
                () = &mut wait => break,
            }
        }
    }
    p.wait_connected(Duration::from_secs(10)).await.unwrap();
    s.wait_connected(Duration::from_secs(10)).await.unwrap();
    for i in 0..200u32 {
        p.publish(&topic, i.to_be_bytes().to_vec()).await.unwrap();
    }
    let mut expected = 0u32;
    while expected < 200 {
        let m = next(&mut sub).await;
        if m.payload == b"after" {
            continue; // sent during the outage and delivered late
        }
        assert_eq!(
            m.payload,
            expected.to_be_bytes(),
            "in order after the restart"
        );
        expected += 1;
    }
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
