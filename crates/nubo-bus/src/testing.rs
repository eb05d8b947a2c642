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
