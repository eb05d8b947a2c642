//! Commands only the platform may read. A member's agent holds a key of its own and the broker's
//! password, and nothing stops it from subscribing to every topic (the embedded broker has no
//! per-topic access control): so the commands that carry what another tenant's members must not
//! see (a deployment plan's launch parameters and command lines on `control`, a member's
//! parameters on `node`, the domains' private keys on `tls`) are sealed with AES-256-GCM under a key derived from the platform's
//! key (`BusKey::secrecy_key`), which members never hold.
//!
//! On the wire such an event is `{"v":1,"event":"NAME","sealed":"BASE64"}` (the name stays
//! readable, so that receivers can skip what they do not want without opening it), BASE64 being
//! a random nonce and the ciphertext of the event's ordinary wire form, bound to its name. The
//! envelope's proof covers it as any event.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use nubo_envelope::BusAuth;
use nubo_events::{Category, Event};
use rand::RngCore;

/// Whether events of `category` are kept secret from members.
pub fn is_secret(category: Category) -> bool {
    matches!(category, Category::Control | Category::Node | Category::Tls)
}

/// The keys a platform process seals and opens secret events with (the current one first;
/// during a rotation of the platform's key, the previous one opens too).
pub(crate) struct Secrecy {
    keys: Vec<LessSafeKey>,
}

impl Secrecy {
    /// The platform's secrecy keys, `None` for a process without the platform's key.
    pub(crate) fn of(auth: &BusAuth) -> Option<Secrecy> {
        let keys = match auth {
            BusAuth::Platform(k) => vec![k.secrecy_key()],
            BusAuth::PlatformRotating { current, previous } => {
                vec![current.secrecy_key(), previous.secrecy_key()]
            }
            _ => return None,
        };
        let keys = keys
            .iter()
            .filter_map(|k| UnboundKey::new(&AES_256_GCM, k).ok().map(LessSafeKey::new))
            .collect::<Vec<_>>();
        (!keys.is_empty()).then_some(Secrecy { keys })
    }

    /// The wire form of a secret event; `None` if sealing failed (never sent in the clear).
    pub(crate) fn seal(&self, event: &Event) -> Option<Vec<u8>> {
        let key = self.keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut data = event.encode();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(event.name().as_bytes()),
            &mut data,
        )
        .ok()?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&data);
        let text = format!(
            "{{\"v\":{},\"event\":\"{}\",\"sealed\":\"{}\"}}",
            nubo_events::EVENT_VERSION,
            event.name(),
            STANDARD.encode(sealed)
        );
        Some(text.into_bytes())
    }
}

/// The ciphertext of a sealed event's wire form, if `body` is one.
pub(crate) fn sealed_part(body: &[u8]) -> Option<(&str, Vec<u8>)> {
    #[derive(serde::Deserialize)]
    struct Sealed<'a> {
        event: &'a str,
        sealed: &'a str,
    }
    let s: Sealed<'_> = serde_json::from_slice(body).ok()?;
    Some((s.event, STANDARD.decode(s.sealed).ok()?))
}

impl Secrecy {
    /// Opens a sealed event's ciphertext (as [`sealed_part`] gives it).
    pub(crate) fn open(&self, name: &str, mut sealed: Vec<u8>) -> Option<Event> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let data = sealed.split_off(NONCE_LEN);
        for key in &self.keys {
            let nonce = Nonce::try_assume_unique_for_key(&sealed).ok()?;
            let mut buf = data.clone();
            if let Ok(plain) = key.open_in_place(nonce, Aad::from(name.as_bytes()), &mut buf) {
                let event = Event::decode(plain).ok()?;
                return (event.name() == name).then_some(event);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use nubo_envelope::{BusAuth, BusKey};
    use nubo_events::{Category, Event};

    use crate::{Bus, EventBus, MemoryBus};

    #[tokio::test]
    async fn the_platforms_commands_are_sealed_from_members_and_opened_by_the_platform() {
        let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
        let key = BusKey::generate();
        let platform = EventBus::with_auth(bus.clone(), BusAuth::Platform(key.clone()));
        let member = EventBus::with_auth(
            bus.clone(),
            BusAuth::Member {
                member_id: "m1".into(),
                key: key.member_key("m1"),
            },
        );
        let mut raw = bus.subscribe(&Category::Control.filter()).await.unwrap();
        let mut by_platform = platform.subscribe(Category::Control).await.unwrap();
        let mut by_member = member.subscribe(Category::Control).await.unwrap();
        let secret = Event::ControlUndeploy {
            application_id: "tenant-b-secret-app".into(),
            force: true,
        };
        platform.publish(&secret).await.unwrap();
        let wire = raw.recv().await.unwrap().payload;
        let text = String::from_utf8_lossy(&wire);
        assert!(!text.contains("tenant-b-secret-app"), "{text}");
        assert!(
            text.contains("\"event\":\"ControlUndeploy\",\"sealed\":"),
            "{text}"
        );
        assert_eq!(by_platform.recv().await, Some(secret.clone()));
        let got = tokio::time::timeout(Duration::from_millis(200), by_member.recv()).await;
        assert!(got.is_err(), "a member cannot open it: {got:?}");
        // In the clear, under the platform's proof, it would not be taken either (a platform
        // process never sends one so): here forged by hand with the envelope alone.
        let clear = BusAuth::Platform(key.clone()).seal(
            &nubo_envelope::Sender::default(),
            &secret,
            crate::now_ms(),
        );
        bus.publish(&Category::Control.topic(), clear)
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_millis(200), by_platform.recv()).await;
        assert!(got.is_err(), "{got:?}");
        // Another platform's key opens nothing.
        let stranger = EventBus::with_auth(bus.clone(), BusAuth::Platform(BusKey::generate()));
        let mut by_stranger = stranger.subscribe(Category::Control).await.unwrap();
        platform.publish(&secret).await.unwrap();
        let got = tokio::time::timeout(Duration::from_millis(200), by_stranger.recv()).await;
        assert!(got.is_err(), "{got:?}");
    }

    /// The domains' private keys go to the load balancers sealed: a member subscribed to the
    /// certificates' topic reads none, and cannot send certificates of its own.
    #[tokio::test]
    async fn domains_private_keys_are_sealed_from_members() {
        let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
        let key = BusKey::generate();
        let platform = EventBus::with_auth(bus.clone(), BusAuth::Platform(key.clone()));
        let member = EventBus::with_auth(
            bus.clone(),
            BusAuth::Member {
                member_id: "m1".into(),
                key: key.member_key("m1"),
            },
        );
        let mut raw = bus.subscribe(&Category::Tls.filter()).await.unwrap();
        let mut by_platform = platform.subscribe(Category::Tls).await.unwrap();
        let mut by_member = member.subscribe(Category::Tls).await.unwrap();
        let certificates = Event::TlsCertificates {
            complete: true,
            certificates: vec![nubo_events::TlsCertificate {
                domain: "shop.a.example".into(),
                certificate: "CERT".into(),
                private_key: "private-key-of-tenant-a".into(),
            }],
            removed: Vec::new(),
        };
        platform.publish(&certificates).await.unwrap();
        let wire = raw.recv().await.unwrap().payload;
        assert!(!String::from_utf8_lossy(&wire).contains("private-key-of-tenant-a"));
        assert_eq!(by_platform.recv().await, Some(certificates.clone()));
        let got = tokio::time::timeout(Duration::from_millis(200), by_member.recv()).await;
        assert!(got.is_err(), "a member cannot open it: {got:?}");
        // A member's own certificates are not taken.
        let _ = member.publish(&certificates).await;
        let got = tokio::time::timeout(Duration::from_millis(200), by_platform.recv()).await;
        assert!(got.is_err(), "{got:?}");
    }
}
