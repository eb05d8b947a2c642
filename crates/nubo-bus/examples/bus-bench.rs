//! Bus benchmark (`bench/bus.sh` runs it): events per second and publish → receive latency through
//! each bus, one publisher connection and one subscriber connection per bus, in one process.
//!
//! For each bus: a warm-up; **throughput**: `--messages` events published as fast as the bus takes
//! them, with at most `--window` (1,000) of them not yet received, so that no buffer on the way
//! overflows (Mosquitto's default `max_queued_messages` is 1,000 per client: beyond it, it drops
//! QoS 1 messages), timed from the end of a 2,000-event warm-up to the last receipt; **latency**: events
//! published at a steady `--rate` for `--seconds`, each carrying its send time, the receive time
//! minus the send time per event (p50, p99, max). Payloads are `--size` bytes (an encoded health
//! event is about 250). The buses take turns over `--rounds` rounds (this machine's speed drifts);
//! the Markdown table printed shows, per bus, the median over the rounds of each figure (of the
//! maximum: the largest), and the events lost in all rounds.
//!
//! ```sh
//! bus-bench [--mqtt URL] [--nats URL] [--rounds N] [--messages N] [--window N] [--rate N] [--seconds S] [--size B]
//! ```
//! The in-process bus and the embedded broker (started here on a free port) always run; Mosquitto
//! and NATS when their URLs are given.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nubo_bus::{Bus, MemoryBus};
use tokio::sync::Notify;

struct Options {
    mqtt: Option<String>,
    nats: Option<String>,
    rounds: usize,
    messages: u64,
    window: u64,
    rate: u64,
    seconds: f64,
    size: usize,
}

fn options() -> Options {
    let mut o = Options {
        mqtt: None,
        nats: None,
        rounds: 3,
        messages: 200_000,
        window: 1_000,
        rate: 2_000,
        seconds: 5.0,
        size: 256,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--mqtt" => o.mqtt = Some(v()),
            "--nats" => o.nats = Some(v()),
            "--rounds" => o.rounds = v().parse::<usize>().unwrap().max(1),
            "--messages" => o.messages = v().parse().unwrap(),
            "--window" => o.window = v().parse().unwrap(),
            "--rate" => o.rate = v().parse().unwrap(),
            "--seconds" => o.seconds = v().parse().unwrap(),
            "--size" => o.size = v().parse::<usize>().unwrap().max(16),
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

struct Result {
    per_second: f64,
    lost: u64,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

/// A payload: sequence number, send time (ns since `base`), padding.
fn payload(seq: u64, base: Instant, size: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(size);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(base.elapsed().as_nanos() as u64).to_be_bytes());
    p.resize(size, b'x');
    p
}

fn read(p: &[u8]) -> (u64, u64) {
    (
        u64::from_be_bytes(p[0..8].try_into().unwrap()),
        u64::from_be_bytes(p[8..16].try_into().unwrap()),
    )
}

async fn measure(
    name: &str,
    publisher: Arc<dyn Bus>,
    subscriber: Arc<dyn Bus>,
    o: &Options,
) -> Result {
    publisher
        .wait_connected(Duration::from_secs(15))
        .await
        .unwrap();
    subscriber
        .wait_connected(Duration::from_secs(15))
        .await
        .unwrap();
    let base = Instant::now();
    let topic = format!("bench/{name}/{}", rand::random::<u32>());

    // === throughput ===
    let mut sub = subscriber.subscribe(&topic).await.unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Notify::new());
    let total = o.messages + 2_000; // the first 2,000 are a warm-up
    let counter = {
        let (received, progress) = (received.clone(), progress.clone());
        tokio::spawn(async move {
            let mut last_seq = None;
            let mut out_of_order = 0u64;
            let mut warm_end = None;
            while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(10), sub.recv()).await
            {
                let (seq, _) = read(&m.payload);
                if last_seq.is_some_and(|l| seq <= l) {
                    out_of_order += 1;
                }
                last_seq = Some(seq);
                let n = received.fetch_add(1, Ordering::Relaxed) + 1;
                if seq == 1_999 {
                    warm_end = Some(Instant::now());
                }
                if n % 64 == 0 || seq + 1 == total {
                    progress.notify_one();
                }
                if seq + 1 == total {
                    return (warm_end, Some(Instant::now()), out_of_order);
                }
            }
            (warm_end, None, out_of_order)
        })
    };
    let mut stalled = false;
    'publish: for seq in 0..total {
        let mut last = (received.load(Ordering::Relaxed), Instant::now());
        loop {
            let now_received = received.load(Ordering::Relaxed);
            if seq - now_received.min(seq) < o.window {
                break;
            }
            if now_received != last.0 {
                last = (now_received, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(5) {
                // Events were lost: the window never drains. Stop and report.
                stalled = true;
                break 'publish;
            }
            tokio::select! {
                () = progress.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
        publisher
            .publish(&topic, payload(seq, base, o.size))
            .await
            .unwrap();
    }
    let (warm_end, end, out_of_order) = counter.await.unwrap();
    assert_eq!(out_of_order, 0, "{name}: events out of order");
    let got = received.load(Ordering::Relaxed);
    let per_second = match (warm_end, end, stalled) {
        (Some(a), Some(b), false) => o.messages as f64 / (b - a).as_secs_f64(),
        _ => 0.0,
    };

    // === latency at a steady rate ===
    let topic = format!("{topic}/latency");
    let mut sub = subscriber.subscribe(&topic).await.unwrap();
    let count = (o.rate as f64 * o.seconds) as u64;
    let collector = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(count as usize);
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), sub.recv()).await {
            let (seq, sent) = read(&m.payload);
            lat.push(Duration::from_nanos(
                base.elapsed().as_nanos() as u64 - sent,
            ));
            if seq + 1 == count {
                break;
            }
        }
        lat
    });
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / o.rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for seq in 0..count {
        tick.tick().await;
        publisher
            .publish(&topic, payload(seq, base, o.size))
            .await
            .unwrap();
    }
    let mut lat = collector.await.unwrap();
    lat.sort();
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Result {
        per_second,
        lost: total - got + (count - lat.len() as u64),
        p50: pct(0.50),
        p99: pct(0.99),
        max: lat.last().copied().unwrap_or_default(),
    }
}

#[tokio::main]
async fn main() {
    let o = options();
    // (name, publisher, subscriber)
    type Pair = (&'static str, Arc<dyn Bus>, Arc<dyn Bus>);
    let mut buses: Vec<Pair> = Vec::new();

    let memory: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    buses.push(("in-process (MemoryBus)", memory.clone(), memory));
    let broker = nubo_broker::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let embedded = broker.url();
    let urls = [
        ("embedded broker (rumqttd, MQTT QoS 1)", Some(&embedded)),
        ("Mosquitto (MQTT QoS 1)", o.mqtt.as_ref()),
        ("nats-server (core NATS)", o.nats.as_ref()),
    ];
    for (name, url) in urls {
        if let Some(url) = url {
            let p = nubo_bus::connect_url(url, "bench-pub").await.unwrap();
            let s = nubo_bus::connect_url(url, "bench-sub").await.unwrap();
            buses.push((name, p, s));
        }
    }

    let mut results: Vec<Vec<Result>> = buses.iter().map(|_| Vec::new()).collect();
    for round in 0..o.rounds {
        for (i, (name, p, s)) in buses.iter().enumerate() {
            let r = measure(name, p.clone(), s.clone(), &o).await;
            eprintln!(
                "round {}: {name}: {:.0} events/s, p99 {:.3} ms",
                round + 1,
                r.per_second,
                r.p99.as_secs_f64() * 1000.0
            );
            results[i].push(r);
        }
    }

    println!(
        "{} events of {} B (window {}); latency at {}/s for {} s; medians of {} rounds",
        o.messages, o.size, o.window, o.rate, o.seconds, o.rounds
    );
    println!();
    println!("| bus | events/s | p50 ms | p99 ms | max ms | lost |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for ((name, _, _), rs) in buses.iter().zip(results) {
        println!(
            "| {} | {:.0} | {:.3} | {:.3} | {:.3} | {} |",
            name,
            median(rs.iter().map(|r| r.per_second).collect()),
            ms(median(rs.iter().map(|r| r.p50).collect())),
            ms(median(rs.iter().map(|r| r.p99).collect())),
            ms(rs.iter().map(|r| r.max).max().unwrap_or_default()),
            rs.iter().map(|r| r.lost).sum::<u64>()
        );
    }
}
