//! Test helpers: real brokers (Mosquitto, nats-server) started by a test on a free loopback port,
//! restarted on the same port, and killed when dropped; and the message a skipped test prints.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use nubo_testing::{on_path, skipped};

/// A broker process of the test's own.
pub struct BrokerProcess {
    program: PathBuf,
    args: Vec<String>,
    addr: SocketAddr,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl BrokerProcess {
    /// Mosquitto on a free port, if `mosquitto` is on `PATH`.
    pub fn mosquitto() -> Option<Self> {
        let program = on_path("mosquitto")?;
        let dir = tempfile::tempdir().ok()?;
        let addr = free_addr();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 1000\n",
                addr.port()
            ),
        )
        .ok()?;
        let args = vec!["-c".to_owned(), conf.display().to_string()];
        Some(Self::start(program, args, addr, dir))
    }

    /// Mosquitto with TLS only on a free port (a certificate for `127.0.0.1` and `localhost`
    /// signed by a certificate authority of the test's own), and the authority's PEM file.
    pub fn mosquitto_tls() -> Option<(Self, PathBuf)> {
        let program = on_path("mosquitto")?;
        let dir = tempfile::tempdir().ok()?;
        let (ca, cert, key) = test_certificates(dir.path());
        let addr = free_addr();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\ncertfile {}\nkeyfile {}\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 1000\n",
                addr.port(),
                cert.display(),
                key.display()
            ),
        )
        .ok()?;
        let args = vec!["-c".to_owned(), conf.display().to_string()];
        Some((Self::start(program, args, addr, dir), ca))
    }

    /// nats-server requiring TLS on a free port (as [`Self::mosquitto_tls`]), and the
    /// certificate authority's PEM file.
    pub fn nats_tls() -> Option<(Self, PathBuf)> {
        let program = on_path("nats-server")?;
        let dir = tempfile::tempdir().ok()?;
        let (ca, cert, key) = test_certificates(dir.path());
        let addr = free_addr();
        let port = addr.port().to_string();
        let args = [
            "-a",
            "127.0.0.1",
            "-p",
            &port,
            "--tls",
            "--tlscert",
            &cert.display().to_string(),
            "--tlskey",
            &key.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Some((Self::start(program, args, addr, dir), ca))
    }

    /// nats-server on a free port, if `nats-server` is on `PATH`.
    pub fn nats() -> Option<Self> {
        Self::nats_at(free_addr())
    }

    /// nats-server on a free port with more arguments, if `nats-server` is on `PATH`.
    pub fn nats_with(extra: &[&str]) -> Option<Self> {
        Self::nats_args(free_addr(), extra)
    }

    /// nats-server on `addr`, if `nats-server` is on `PATH`.
    pub fn nats_at(addr: SocketAddr) -> Option<Self> {
        Self::nats_args(addr, &[])
    }

    fn nats_args(addr: SocketAddr, extra: &[&str]) -> Option<Self> {
        let program = on_path("nats-server")?;
        let dir = tempfile::tempdir().ok()?;
        let port = addr.port().to_string();
        let args = ["-a", "127.0.0.1", "-p", &port]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect();
        Some(Self::start(program, args, addr, dir))
    }

    fn start(
        program: PathBuf,
        args: Vec<String>,
        addr: SocketAddr,
        dir: tempfile::TempDir,
    ) -> Self {
        let mut b = BrokerProcess {
            program,
            args,
            addr,
            child: None,
            _dir: dir,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut child = Command::new(&self.program)
                .args(&self.args)
                .current_dir(self._dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display()));
            loop {
                if TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_ok() {
                    self.child = Some(child);
                    return;
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port may still be held by the previous instance: try again
                }
                assert!(
                    Instant::now() < deadline,
                    "{} did not listen on {} within 10 s",
                    self.program.display(),
                    self.addr
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(
                Instant::now() < deadline,
                "{} kept exiting at start on {}",
                self.program.display(),
                self.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The broker's URL (`mqtt://127.0.0.1:PORT` or `nats://127.0.0.1:PORT`).
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    /// Kills the broker (SIGKILL, like a crash) and starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A certificate authority, and a certificate it signed for `127.0.0.1` and `localhost` with its
/// key, written into `dir` (readable by a broker that drops to a user of its own): the files
/// `ca.pem`, `server.pem`, `server.key`.
fn test_certificates(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    use std::os::unix::fs::PermissionsExt;
    let ca_key = KeyPair::generate().expect("a key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "nubo test authority");
    let ca = ca_params.self_signed(&ca_key).expect("a CA");
    let key = KeyPair::generate().expect("a key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("parameters");
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = params.signed_by(&key, &ca, &ca_key).expect("a certificate");
    let files = [
        ("ca.pem", ca.pem()),
        ("server.pem", cert.pem()),
        ("server.key", key.serialize_pem()),
    ];
    for (name, pem) in &files {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("a certificate file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// A loopback address with a port nobody listens on (now).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// The URL without its user information, when it has some (`mqtt://u:p@h:1` → `mqtt://h:1`).
pub fn without_credentials(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let (_, host) = rest.rsplit_once('@')?;
    Some(format!("{scheme}://{host}"))
}
