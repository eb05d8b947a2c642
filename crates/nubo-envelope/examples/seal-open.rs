//! What proving and checking a message costs: a member's health statistic sealed with its key and
//! opened by a platform component (deriving the member's key each time, as receivers do), and a
//! platform message. `cargo run --release -p nubo-envelope --example seal-open`
//! (`bench/envelope.sh`).

use std::time::Instant;

use nubo_envelope::{BusAuth, BusKey, ReplayGuard, Sender};
use nubo_events::{Event, InstanceRef, MemberHealth};

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let key = BusKey::generate();
    let platform = BusAuth::Platform(key.clone());
    let member_id = "shop.web.php-123";
    let member = BusAuth::Member {
        member_id: member_id.into(),
        key: key.member_key(member_id),
    };
    let stat = Event::MemberHealthStat(MemberHealth {
        instance: InstanceRef {
            member_id: member_id.into(),
            cluster_id: "shop.web.php.domain".into(),
            cluster_instance_id: "shop-1".into(),
            application_id: "shop".into(),
            service_name: "php".into(),
            network_partition_id: "np".into(),
            partition_id: "p1".into(),
        },
        memory_consumption: Some(42.0),
        load_average: Some(12.5),
        ports_open: true,
        at_ms: 1_800_000_000_000,
    });
    let now = 1_800_000_000_000;
    for (what, auth) in [("member", &member), ("platform", &platform)] {
        let sender = Sender::default();
        let encoded = stat.encode().len();
        let t = Instant::now();
        let sealed: Vec<Vec<u8>> = (0..n).map(|_| auth.seal(&sender, &stat, now)).collect();
        let seal_ns = t.elapsed().as_nanos() as f64 / n as f64;
        let mut guard = ReplayGuard::default();
        let t = Instant::now();
        let mut ok = 0u64;
        for m in &sealed {
            let opened = platform.open(&mut guard, m, now).expect("a valid message");
            ok += u64::from(opened.checked);
        }
        let open_ns = t.elapsed().as_nanos() as f64 / n as f64;
        let t = Instant::now();
        for m in &sealed {
            let opened = platform
                .open(&mut ReplayGuard::default(), m, now)
                .expect("valid");
            let e = Event::decode(opened.body).expect("an event");
            assert!(opened.permits(&e));
        }
        let open_decode_ns = t.elapsed().as_nanos() as f64 / n as f64;
        assert_eq!(ok, n);
        println!(
            "{what:>8}-signed health statistic ({encoded} B of event, {} B on the bus): seal {seal_ns:.0} ns, open {open_ns:.0} ns, open+decode+permit {open_decode_ns:.0} ns",
            sealed[0].len()
        );
    }
}
