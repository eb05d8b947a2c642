//! Health beyond open ports: an HTTP readiness path (the member is not Active before it answers)
//! and liveness path (a member that stops answering it is reported unhealthy, and replaced), and
//! a workload that is stopped (`SIGSTOP`), which still completes TCP handshakes but serves nothing.
//!
//! The paths come from the cartridge's properties `readinessPath` and `livenessPath`, in the
//! payload as `READINESS_PATH` and `LIVENESS_PATH`; they are asked on the member's first port,
//! over plain HTTP/1.1 on loopback. A 2xx or 3xx answer within 2 s is healthy.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Failed liveness probes in a row before the member is reported unhealthy.
pub const LIVENESS_FAILURES: u32 = 3;

/// Whether `GET path` on `127.0.0.1:port` answers 2xx or 3xx within [`PROBE_TIMEOUT`].
pub async fn http_ok(port: u16, path: &str) -> bool {
    tokio::time::timeout(PROBE_TIMEOUT, probe(port, path))
        .await
        .unwrap_or(false)
}

async fn probe(port: u16, path: &str) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    // The status line is all that is needed: `HTTP/1.x NNN …`.
    let mut head = [0u8; 32];
    let mut got = 0;
    while got < 12 {
        match s.read(&mut head[got..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    status_ok(&head[..got])
}

/// Whether an HTTP status line says 2xx or 3xx.
pub fn status_ok(line: &[u8]) -> bool {
    let Some(rest) = line.strip_prefix(b"HTTP/1.") else {
        return false;
    };
    matches!(rest.get(2), Some(b'2' | b'3')) && rest.get(1) == Some(&b' ')
}

/// Liveness over time: unhealthy after [`LIVENESS_FAILURES`] failed probes in a row.
#[derive(Debug, Default)]
pub struct Liveness {
    failures: u32,
}

impl Liveness {
    /// Records a probe; whether the member is still to be taken for alive.
    pub fn record(&mut self, ok: bool) -> bool {
        self.failures = if ok { 0 } else { self.failures + 1 };
        self.failures < LIVENESS_FAILURES
    }
}

/// Whether any of the workload's processes `pids` is stopped.
pub fn stopped(pids: &[i32]) -> bool {
    pids.iter().any(|p| nubo_iaas::proc::stopped(*p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert!(status_ok(b"HTTP/1.1 200 OK\r\n"));
        assert!(status_ok(b"HTTP/1.0 302 Found"));
        assert!(!status_ok(b"HTTP/1.1 503 Service Unavailable"));
        assert!(!status_ok(b"HTTP/1.1 404"));
        assert!(!status_ok(b"garbage"));
        assert!(!status_ok(b""));
    }

    #[test]
    fn liveness_fails_after_three_in_a_row() {
        let mut l = Liveness::default();
        assert!(l.record(false) && l.record(false));
        assert!(l.record(true), "a success resets it");
        assert!(l.record(false) && l.record(false));
        assert!(!l.record(false));
    }

    #[tokio::test]
    async fn probes_a_real_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 256];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let answer: &[u8] = if req.starts_with("GET /ready ") {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                } else {
                    b"HTTP/1.1 503 No\r\nContent-Length: 0\r\n\r\n"
                };
                let _ = s.write_all(answer).await;
            }
        });
        assert!(http_ok(port, "/ready").await);
        assert!(!http_ok(port, "/other").await);
        // Nothing listening.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(!http_ok(closed, "/").await);
    }

    #[test]
    fn a_stopped_process_is_seen() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let group = || nubo_iaas::proc::group_members(pid);
        assert!(!stopped(&group()));
        // SAFETY: signals to the test's own child.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !stopped(&group()) {
            assert!(std::time::Instant::now() < deadline, "not seen stopped");
            std::thread::sleep(Duration::from_millis(10));
        }
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = child.wait();
    }
}

/// How many TCP connections to `ports` on this host are established (from `/proc/net/tcp` and
/// `/proc/net/tcp6`): while a member drains, its requests in flight are its connections, since
/// load balancers close their idle connections to a member they no longer route to.
pub fn established(ports: &[u16]) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .map(|text| established_in(&text, ports))
        .sum()
}

/// [`established`] over the text of a `/proc/net/tcp` file.
fn established_in(text: &str, ports: &[u16]) -> usize {
    text.lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1);
            let state = fields.nth(1);
            let port = local
                .and_then(|l| l.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            state == Some("01") && port.is_some_and(|p| ports.contains(&p))
        })
        .count()
}

#[cfg(test)]
mod drain_tests {
    use super::*;

    #[test]
    fn established_connections_to_a_port_are_counted() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:1F90 0100007F:C351 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0000000000000000
";
        // The listener (0A) and a TIME_WAIT (06) are not requests; the client side's local port
        // is not 8080.
        assert_eq!(established_in(text, &[8080]), 1);
        assert_eq!(established_in(text, &[9090]), 0);
        assert_eq!(established_in(text, &[8080, 50000]), 2);
    }

    #[test]
    fn a_real_connection_shows_then_goes() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(established(&[port]), 0);
        let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (s, _) = l.accept().unwrap();
        assert_eq!(established(&[port]), 1);
        drop(c);
        drop(s);
        assert_eq!(established(&[port]), 0);
    }
}
