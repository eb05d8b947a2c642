//! The bus envelope's proof of its sender: every message: an HMAC-SHA256 over a small header and the event, with
//! a sequence number and a timestamp against replay.
//!
//! A message on the bus is `N1 <from> <nonce> <seq> <at_ms> <mac>\n<event JSON>`:
//! - `from` says whose key made the MAC: `p` (the platform's key, held by platform components),
//!   `m/<member>` (a member's own key, held by its agent: for its lifecycle reports and health
//!   statistics only), `p>m/<member>` (the platform, to one member: a clean-up request, made with
//!   that member's key so that its agent, which has no platform key, can check it);
//! - `nonce` is random per sending process and `seq` counts its messages: a receiver keeps, per
//!   subscription and per sender, a window of the sequence numbers it has seen, and drops a
//!   message seen before; `at_ms` older or newer than [`MAX_SKEW_MS`] is dropped too, which bounds
//!   what a receiver must remember;
//! - `mac` is HMAC-SHA256(key, everything before ` <mac>` + `\n` + the event), in hex.
//!
//! A member's key is HMAC-SHA256(platform key, `member/<member id>`): the platform derives it for
//! any member; a member cannot derive another's, nor the platform's.
//!
//! Signatures (Ed25519) would let agents check the platform's messages too, at about 50 µs per
//! verification; at 20,000 health statistics a second that is a core. HMAC costs about 2 µs
//! (`bench/envelope.sh`).

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use nubo_events::Event;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How far a message's timestamp may be from the receiver's clock (5 minutes).
pub const MAX_SKEW_MS: u64 = 5 * 60 * 1000;
/// Sequence numbers remembered per sender (older ones are refused).
const WINDOW: u64 = 4096;
/// The frame's first word.
const MAGIC: &str = "N1";

/// A 256-bit key.
#[derive(Clone, PartialEq, Eq)]
pub struct BusKey([u8; 32]);

impl std::fmt::Debug for BusKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BusKey(…)")
    }
}

impl BusKey {
    /// A new random key.
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::Rng::fill(&mut rand::thread_rng(), &mut k);
        BusKey(k)
    }

    /// The key written as 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = hex::decode(text.trim()).ok()?;
        Some(BusKey(bytes.try_into().ok()?))
    }

    /// 64 hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The key of one member, derived from the platform's.
    pub fn member_key(&self, member_id: &str) -> BusKey {
        let mut mac = self.mac();
        mac.update(b"member/");
        mac.update(member_id.as_bytes());
        BusKey(mac.finalize().into_bytes().into())
    }

    /// The key that keeps the platform's commands secret from members (`secrecy/v1`, derived:
    /// 32 bytes for an AEAD, never used for proofs).
    pub fn secrecy_key(&self) -> [u8; 32] {
        let mut mac = self.mac();
        mac.update(b"secrecy/v1");
        mac.finalize().into_bytes().into()
    }

    /// The member's token for the platform's HTTP services (the metadata service, its
    /// repository's credentials): `<member id>.<64 hex digits>`, derived from the platform's key
    /// (`metadata/v1/<member>`, independent of the member's bus key). A process that holds the
    /// platform's key checks it with [`BusKey::member_of_token`], without any stored state.
    pub fn member_token(&self, member_id: &str) -> String {
        format!("{member_id}.{}", hex::encode(self.token_mac(member_id)))
    }

    /// The member a token of [`BusKey::member_token`] was issued to, if it was issued with this key.
    /// The comparison takes the same time whatever the token.
    pub fn member_of_token<'t>(&self, token: &'t str) -> Option<&'t str> {
        let (member, mac) = token.rsplit_once('.')?;
        let given = hex::decode(mac).ok()?;
        let mut check = self.mac();
        check.update(b"metadata/v1/");
        check.update(member.as_bytes());
        check.verify_slice(&given).ok()?;
        Some(member)
    }

    fn token_mac(&self, member_id: &str) -> [u8; 32] {
        let mut mac = self.mac();
        mac.update(b"metadata/v1/");
        mac.update(member_id.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes a key of any length: this cannot fail.
        <HmacSha256 as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!())
    }
}

/// Who a process is on the bus.
#[derive(Debug, Clone)]
pub enum BusAuth {
    /// Neither signs nor checks: for a bus inside one process (`MemoryBus`) and tests.
    Open,
    /// A platform component: signs with the platform key, accepts what the platform and each
    /// member may send.
    Platform(BusKey),
    /// A platform component while the key rotates: signs with the new key, and accepts what
    /// was proved with either (processes and members not restarted yet hold the previous one).
    PlatformRotating {
        /// The key it signs with.
        current: BusKey,
        /// The key it still accepts.
        previous: BusKey,
    },
    /// A member's agent: signs with its own key; accepts what the platform addresses to it.
    Member {
        /// The member.
        member_id: String,
        /// Its key.
        key: BusKey,
    },
}

/// Why a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No proof at all.
    Unsigned,
    /// A proof that does not check, or a sender this receiver cannot check.
    Forged,
    /// Seen before, or too old (or from the future).
    Replayed,
    /// A valid sender that may not send this.
    NotPermitted,
}

impl Refusal {
    /// The label of the drop counter.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned",
            Refusal::Forged => "forged",
            Refusal::Replayed => "replayed",
            Refusal::NotPermitted => "not_permitted",
        }
    }
}

/// What a member's agent accepts from the platform without being able to check it: hints, never
/// facts it acts on. `CompleteTopology` and `MemberInitialized` only let it stop waiting for its
/// member to show in the topology (it waits at most a few seconds anyway); the other member
/// events only make an agent with member-event hooks read its application's members from the
/// platform's API (with its token, over TLS), which it believes instead.
pub const MEMBER_UNCHECKED: &[&str] = &[
    "CompleteTopology",
    "MemberInitialized",
    "MemberStarted",
    "MemberActivated",
    "MemberMaintenanceMode",
    "MemberReadyToShutdown",
    "MemberTerminated",
];

/// The sending side of a process: its nonce and sequence.
#[derive(Debug)]
pub struct Sender {
    nonce: u64,
    seq: AtomicU64,
}

impl Default for Sender {
    fn default() -> Self {
        Sender {
            nonce: rand::Rng::r#gen(&mut rand::thread_rng()),
            seq: AtomicU64::new(0),
        }
    }
}

impl BusAuth {
    /// The bytes to publish for `event`.
    pub fn seal(&self, sender: &Sender, event: &Event, now_ms: u64) -> Vec<u8> {
        self.seal_body(sender, event.addressed_to(), event.encode(), now_ms)
    }

    /// The bytes to publish for an event's wire form `body` (perhaps kept secret: see
    /// `nubo_bus`), addressed to one member or not.
    pub fn seal_body(
        &self,
        sender: &Sender,
        addressed_to: Option<&str>,
        body: Vec<u8>,
        now_ms: u64,
    ) -> Vec<u8> {
        let (from, key) = match self {
            BusAuth::Open => return body,
            BusAuth::Platform(k) | BusAuth::PlatformRotating { current: k, .. } => {
                match addressed_to {
                    Some(m) => (format!("p>m/{m}"), k.member_key(m)),
                    None => ("p".to_owned(), k.clone()),
                }
            }
            BusAuth::Member { member_id, key } => (format!("m/{member_id}"), key.clone()),
        };
        let seq = sender.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let header = format!("{MAGIC} {from} {:016x} {seq} {now_ms}", sender.nonce);
        let mut mac = key.mac();
        mac.update(header.as_bytes());
        mac.update(b"\n");
        mac.update(&body);
        let tag = hex::encode(mac.finalize().into_bytes());
        let mut out = Vec::with_capacity(header.len() + tag.len() + 2 + body.len());
        out.extend_from_slice(header.as_bytes());
        out.push(b' ');
        out.extend_from_slice(tag.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&body);
        out
    }

    /// Checks a received message's proof (not yet its content: see [`Opened::permits`]).
    pub fn open<'a>(
        &self,
        replay: &mut ReplayGuard,
        payload: &'a [u8],
        now_ms: u64,
    ) -> Result<Opened<'a>, Refusal> {
        if matches!(self, BusAuth::Open) {
            return Ok(Opened {
                body: payload,
                from: From::Platform,
                checked: true,
            });
        }
        if !payload.starts_with(MAGIC.as_bytes()) {
            return Err(Refusal::Unsigned);
        }
        let nl = payload
            .iter()
            .position(|b| *b == b'\n')
            .ok_or(Refusal::Unsigned)?;
        let (head, body) = (&payload[..nl], &payload[nl + 1..]);
        let head = std::str::from_utf8(head).map_err(|_| Refusal::Forged)?;
        let (signed, tag) = head.rsplit_once(' ').ok_or(Refusal::Forged)?;
        let mut parts = signed.split(' ');
        let (Some(MAGIC), Some(from), Some(nonce), Some(seq), Some(at), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(Refusal::Forged);
        };
        let seq: u64 = seq.parse().map_err(|_| Refusal::Forged)?;
        let at: u64 = at.parse().map_err(|_| Refusal::Forged)?;
        let tag = hex::decode(tag).map_err(|_| Refusal::Forged)?;
        let sender = if from == "p" {
            From::Platform
        } else if let Some(m) = from.strip_prefix("p>m/") {
            From::PlatformTo(m)
        } else if let Some(m) = from.strip_prefix("m/") {
            From::Member(m)
        } else {
            return Err(Refusal::Forged);
        };
        // The keys that may have made the proof: one, or two while the platform's key rotates.
        let for_sender = |k: &BusKey| match &sender {
            From::Platform => k.clone(),
            From::PlatformTo(m) | From::Member(m) => k.member_key(m),
        };
        let keys: Vec<BusKey> = match (self, &sender) {
            (BusAuth::Platform(k), _) => vec![for_sender(k)],
            (BusAuth::PlatformRotating { current, previous }, _) => {
                vec![for_sender(current), for_sender(previous)]
            }
            (BusAuth::Member { member_id, key }, From::PlatformTo(m)) if m == member_id => {
                vec![key.clone()]
            }
            (BusAuth::Member { .. }, From::Platform) => Vec::new(),
            _ => return Err(Refusal::Forged),
        };
        let checked = !keys.is_empty();
        if checked
            && !keys.iter().any(|key| {
                let mut mac = key.mac();
                mac.update(signed.as_bytes());
                mac.update(b"\n");
                mac.update(body);
                mac.verify_slice(&tag).is_ok()
            })
        {
            return Err(Refusal::Forged);
        }
        if at.abs_diff(now_ms) > MAX_SKEW_MS {
            return Err(Refusal::Replayed);
        }
        if checked {
            replay.admit(from, nonce, seq, now_ms)?;
        }
        Ok(Opened {
            body,
            from: sender,
            checked,
        })
    }
}

/// Whose key made a message's proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From<'a> {
    /// The platform's.
    Platform,
    /// The platform's, to one member (with that member's key).
    PlatformTo(&'a str),
    /// A member's own.
    Member(&'a str),
}

/// A message whose proof was checked (or that could not be, for a member: see `checked`).
#[derive(Debug)]
pub struct Opened<'a> {
    /// The event's JSON.
    pub body: &'a [u8],
    /// Who sent it.
    pub from: From<'a>,
    /// Whether the proof was checked (a member cannot check the platform's own messages).
    pub checked: bool,
}

impl Opened<'_> {
    /// Whether its sender may send `event`.
    pub fn permits(&self, event: &Event) -> bool {
        match self.from {
            From::Platform if self.checked => true,
            From::Platform => MEMBER_UNCHECKED.contains(&event.name()),
            From::PlatformTo(m) => event.addressed_to() == Some(m),
            From::Member(m) => event.member_may_send(m),
        }
    }
}

/// The sequence numbers seen, per sender, by one subscription.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    senders: HashMap<(String, String), Window>,
    checked_at: u64,
}

#[derive(Debug)]
struct Window {
    highest: u64,
    /// Bit `i`: `highest - i` seen.
    seen: Box<[u64; (WINDOW / 64) as usize]>,
    last_ms: u64,
}

impl ReplayGuard {
    fn admit(&mut self, from: &str, nonce: &str, seq: u64, now_ms: u64) -> Result<(), Refusal> {
        // Senders quiet for longer than the skew cannot be replayed any more: forgotten.
        if now_ms.saturating_sub(self.checked_at) > MAX_SKEW_MS {
            self.senders
                .retain(|_, w| now_ms.saturating_sub(w.last_ms) <= 2 * MAX_SKEW_MS);
            self.checked_at = now_ms;
        }
        let w = self
            .senders
            .entry((from.to_owned(), nonce.to_owned()))
            .or_insert_with(|| Window {
                highest: 0,
                seen: Box::new([0; (WINDOW / 64) as usize]),
                last_ms: now_ms,
            });
        w.last_ms = now_ms;
        if seq > w.highest {
            let shift = seq - w.highest;
            w.shift(shift);
            w.highest = seq;
            w.set(0);
            return Ok(());
        }
        let back = w.highest - seq;
        if back >= WINDOW || w.get(back) {
            return Err(Refusal::Replayed);
        }
        w.set(back);
        Ok(())
    }
}

impl Window {
    fn get(&self, back: u64) -> bool {
        self.seen[(back / 64) as usize] & (1 << (back % 64)) != 0
    }

    fn set(&mut self, back: u64) {
        self.seen[(back / 64) as usize] |= 1 << (back % 64);
    }

    /// Moves the window `by` newer sequence numbers.
    fn shift(&mut self, by: u64) {
        if by >= WINDOW {
            self.seen.fill(0);
            return;
        }
        let words = (by / 64) as usize;
        let bits = (by % 64) as u32;
        let n = self.seen.len();
        for i in (0..n).rev() {
            let src = i.checked_sub(words);
            let mut v = src.map_or(0, |s| self.seen[s] << bits);
            if bits > 0
                && let Some(s) = src.and_then(|s| s.checked_sub(1))
            {
                v |= self.seen[s] >> (64 - bits);
            }
            self.seen[i] = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_events::{InstanceRef, MemberHealth};

    fn instance(member: &str) -> InstanceRef {
        InstanceRef {
            member_id: member.into(),
            cluster_id: "c".into(),
            cluster_instance_id: "ci".into(),
            application_id: "a".into(),
            service_name: "s".into(),
            network_partition_id: "np".into(),
            partition_id: "p".into(),
        }
    }

    fn health(member: &str) -> Event {
        Event::MemberHealthStat(MemberHealth {
            instance: instance(member),
            memory_consumption: Some(1.0),
            load_average: Some(1.0),
            ports_open: true,
            at_ms: 0,
        })
    }

    fn accept(
        auth: &BusAuth,
        guard: &mut ReplayGuard,
        bytes: &[u8],
        now: u64,
    ) -> Result<Event, Refusal> {
        let opened = auth.open(guard, bytes, now)?;
        let e = Event::decode(opened.body).map_err(|_| Refusal::Forged)?;
        if opened.permits(&e) {
            Ok(e)
        } else {
            Err(Refusal::NotPermitted)
        }
    }

    #[test]
    fn what_each_sender_may_send_and_who_can_check_it() {
        let key = BusKey::generate();
        let platform = BusAuth::Platform(key.clone());
        let m1 = BusAuth::Member {
            member_id: "m1".into(),
            key: key.member_key("m1"),
        };
        let m2 = BusAuth::Member {
            member_id: "m2".into(),
            key: key.member_key("m2"),
        };
        let s = Sender::default();
        let now = 1_000_000;
        let mut g = ReplayGuard::default();
        // The platform's messages: checked by the platform.
        let deploy = Event::ControlUndeploy {
            application_id: "a".into(),
            force: true,
        };
        assert!(accept(&platform, &mut g, &platform.seal(&s, &deploy, now), now).is_ok());
        // A member's report about itself: accepted; about another member, or a command: not.
        assert!(accept(&platform, &mut g, &m1.seal(&s, &health("m1"), now), now).is_ok());
        assert_eq!(
            accept(&platform, &mut g, &m1.seal(&s, &health("m2"), now), now).unwrap_err(),
            Refusal::NotPermitted
        );
        assert_eq!(
            accept(&platform, &mut g, &m1.seal(&s, &deploy, now), now).unwrap_err(),
            Refusal::NotPermitted
        );
        // A clean-up addressed to m1: m1 checks it, m2 cannot, the platform can.
        let cleanup = Event::InstanceCleanupMember {
            member_id: "m1".into(),
        };
        let sealed = platform.seal(&s, &cleanup, now);
        assert!(accept(&m1, &mut ReplayGuard::default(), &sealed, now).is_ok());
        assert_eq!(
            accept(&m2, &mut ReplayGuard::default(), &sealed, now).unwrap_err(),
            Refusal::Forged
        );
        assert!(accept(&platform, &mut ReplayGuard::default(), &sealed, now).is_ok());
        // m2 cannot pass a clean-up of m1 as the platform's.
        assert_eq!(
            accept(
                &m1,
                &mut ReplayGuard::default(),
                &m2.seal(&s, &cleanup, now),
                now
            )
            .unwrap_err(),
            Refusal::Forged
        );
        // A member takes the platform's topology facts unchecked, and nothing else.
        assert!(
            accept(
                &m1,
                &mut ReplayGuard::default(),
                &platform.seal(&s, &Event::CompleteTopologyRequest {}, now),
                now
            )
            .is_err()
        );
        // Unsigned and tampered messages.
        assert_eq!(
            accept(&platform, &mut g, &deploy.encode(), now).unwrap_err(),
            Refusal::Unsigned
        );
        let mut tampered = platform.seal(&s, &deploy, now);
        let n = tampered.len();
        tampered[n - 3] ^= 1;
        assert!(accept(&platform, &mut g, &tampered, now).is_err());
        let other = BusAuth::Platform(BusKey::generate());
        assert_eq!(
            accept(&platform, &mut g, &other.seal(&s, &deploy, now), now).unwrap_err(),
            Refusal::Forged
        );
    }

    #[test]
    fn while_the_key_rotates_both_keys_are_accepted_and_the_new_one_signs() {
        let old = BusKey::generate();
        let new = BusKey::generate();
        let before = BusAuth::Platform(old.clone());
        let rotating = BusAuth::PlatformRotating {
            current: new.clone(),
            previous: old.clone(),
        };
        let after = BusAuth::Platform(new.clone());
        let member_of_old = BusAuth::Member {
            member_id: "m1".into(),
            key: old.member_key("m1"),
        };
        let s = Sender::default();
        let now = 1_000_000;
        let e = Event::CompleteTopologyRequest {};
        // A process not restarted yet, and a member started before: still accepted.
        for (who, sealed) in [
            ("the old key", before.seal(&s, &e, now)),
            (
                "a member of the old key",
                member_of_old.seal(&s, &health("m1"), now),
            ),
            ("the new key", rotating.seal(&s, &e, now)),
        ] {
            assert!(
                accept(&rotating, &mut ReplayGuard::default(), &sealed, now).is_ok(),
                "{who}"
            );
        }
        // What the rotating process sends, the restarted ones check with the new key alone.
        assert!(
            accept(
                &after,
                &mut ReplayGuard::default(),
                &rotating.seal(&s, &e, now),
                now
            )
            .is_ok()
        );
        // Once the previous key is forgotten, its messages are forged.
        assert_eq!(
            accept(
                &after,
                &mut ReplayGuard::default(),
                &before.seal(&s, &e, now),
                now
            )
            .unwrap_err(),
            Refusal::Forged
        );
        // Another key is refused while rotating too.
        let stranger = BusAuth::Platform(BusKey::generate());
        assert_eq!(
            accept(
                &rotating,
                &mut ReplayGuard::default(),
                &stranger.seal(&s, &e, now),
                now
            )
            .unwrap_err(),
            Refusal::Forged
        );
    }

    #[test]
    fn replays_and_stale_messages_are_refused_reordering_is_not() {
        let key = BusKey::generate();
        let platform = BusAuth::Platform(key);
        let s = Sender::default();
        let now = 10 * MAX_SKEW_MS;
        let e = Event::CompleteTopologyRequest {};
        let msgs: Vec<Vec<u8>> = (0..10).map(|_| platform.seal(&s, &e, now)).collect();
        let mut g = ReplayGuard::default();
        // Out of order (different topics are not ordered with each other): all accepted once.
        for i in [3, 1, 2, 0, 9, 4, 8, 5, 7, 6] {
            assert!(accept(&platform, &mut g, &msgs[i], now).is_ok(), "{i}");
        }
        for m in &msgs {
            assert_eq!(
                accept(&platform, &mut g, m, now).unwrap_err(),
                Refusal::Replayed
            );
        }
        // Another subscription of the same process sees each message once too.
        assert!(accept(&platform, &mut ReplayGuard::default(), &msgs[0], now).is_ok());
        // Too old or from the future.
        let old = platform.seal(&s, &e, now - MAX_SKEW_MS - 1);
        assert_eq!(
            accept(&platform, &mut g, &old, now).unwrap_err(),
            Refusal::Replayed
        );
        let future = platform.seal(&s, &e, now + MAX_SKEW_MS + 1);
        assert_eq!(
            accept(&platform, &mut g, &future, now).unwrap_err(),
            Refusal::Replayed
        );
        // Far behind the newest: refused.
        for _ in 0..WINDOW + 5 {
            let m = platform.seal(&s, &e, now);
            accept(&platform, &mut g, &m, now).unwrap();
        }
        let late = msgs[9].clone();
        assert_eq!(
            accept(&platform, &mut g, &late, now).unwrap_err(),
            Refusal::Replayed
        );
    }

    #[test]
    fn the_window_shifts_bits_correctly() {
        let mut g = ReplayGuard::default();
        for seq in [1, 70, 65, 2, 200, 131, 4000, 4100] {
            g.admit("p", "n", seq, 0).unwrap();
        }
        for seq in [70, 65, 200, 131, 4000, 4100] {
            assert_eq!(g.admit("p", "n", seq, 0), Err(Refusal::Replayed), "{seq}");
        }
        for seq in [66, 199, 4099, 3000] {
            g.admit("p", "n", seq, 0).unwrap();
        }
    }

    #[test]
    fn keys_read_back_and_members_keys_differ() {
        let k = BusKey::generate();
        assert_eq!(BusKey::from_hex(&k.to_hex()), Some(k.clone()));
        assert!(BusKey::from_hex("zz").is_none());
        assert_ne!(k.member_key("a"), k.member_key("b"));
        assert_eq!(k.member_key("a"), k.member_key("a"));
        assert_eq!(format!("{k:?}"), "BusKey(…)");
    }

    #[test]
    fn a_member_token_names_its_member_and_nothing_else_passes() {
        let k = BusKey::generate();
        let t = k.member_token("app.web.member-1");
        assert_eq!(k.member_of_token(&t), Some("app.web.member-1"));
        // Another member's name on this member's proof, another key, a changed digit, garbage.
        let (_, mac) = t.rsplit_once('.').unwrap();
        assert_eq!(k.member_of_token(&format!("app.web.member-2.{mac}")), None);
        assert_eq!(BusKey::generate().member_of_token(&t), None);
        let mut bad = t.clone();
        let last = bad.pop().unwrap();
        bad.push(if last == '0' { '1' } else { '0' });
        assert_eq!(k.member_of_token(&bad), None);
        for junk in ["", ".", "m.", "m.zz", "nodot"] {
            assert_eq!(k.member_of_token(junk), None, "{junk}");
        }
        // Not the member's bus key: a member cannot make another member's token from its own.
        assert_ne!(
            k.member_key("m").to_hex(),
            k.member_token("m").rsplit_once('.').unwrap().1
        );
    }
}
