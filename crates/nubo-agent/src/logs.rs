//! The workload's output, bounded: written to `workload.log` until it reaches a size, then that
//! file becomes `workload.log.1` (replacing the previous one) and a new one starts. A member's
//! logs take at most twice the bound on disk, however long it runs.
//!
//! Each line is also shipped to the platform (`InstanceLog` batches on the bus, about four a
//! second), through a bounded queue: when the platform does not take them fast enough, lines are
//! dropped and counted (the next batch says how many), and the workload is never slowed down.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nubo_events::{Event, LogBatch, LogLine, LogStream};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

/// Bytes of output kept per file (two files: the current and the previous).
pub const WORKLOAD_LOG_MAX: u64 = 8 * 1024 * 1024;

/// A log file that rotates at a size.
pub struct RotatingLog {
    path: PathBuf,
    max: u64,
    file: std::fs::File,
    size: u64,
}

fn open(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl RotatingLog {
    /// Appends to `path`, rotating when it would grow past `max` bytes.
    pub fn open(path: &Path, max: u64) -> std::io::Result<Self> {
        let file = open(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog {
            path: path.to_owned(),
            max,
            file,
            size,
        })
    }

    /// Writes `data` (rotating first when it would not fit).
    pub fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + data.len() as u64 > self.max {
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            std::fs::rename(&self.path, &old)?;
            self.file = open(&self.path)?;
            self.size = 0;
        }
        self.file.write_all(data)?;
        self.size += data.len() as u64;
        Ok(())
    }
}

/// Longest line shipped (a longer one is cut there, and the rest shipped as lines of its own).
pub const MAX_LINE: usize = 16 * 1024;
/// Lines waiting to be shipped before new ones are dropped.
pub const SHIP_QUEUE: usize = 10_000;
/// How long lines wait to be shipped together.
pub const SHIP_EVERY: Duration = Duration::from_millis(250);
/// Most lines in one batch.
pub const BATCH_LINES: usize = 1_000;

/// The sending end of the shipping queue: never waits.
#[derive(Clone)]
pub struct Shipper {
    tx: mpsc::Sender<LogLine>,
    dropped: Arc<AtomicU64>,
}

impl Shipper {
    /// Starts shipping `member_id`'s lines on `events`.
    pub fn start(events: nubo_bus::EventBus, member_id: String) -> Shipper {
        let (tx, mut rx) = mpsc::channel::<LogLine>(SHIP_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let lost = dropped.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut lines = vec![first];
                let deadline = tokio::time::Instant::now() + SHIP_EVERY;
                while lines.len() < BATCH_LINES {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(l)) => lines.push(l),
                        Ok(None) | Err(_) => break,
                    }
                }
                let batch = LogBatch {
                    member_id: member_id.clone(),
                    lines,
                    dropped: lost.swap(0, Ordering::Relaxed),
                };
                // A bus that is away makes this wait: the queue fills, and lines are dropped.
                let _ = events.publish(&Event::InstanceLog(batch)).await;
            }
        });
        Shipper { tx, dropped }
    }

    /// Ships a line of the agent's own on the member's standard error (a hook's failure, say),
    /// so that `nubo logs` shows it.
    pub fn note(&self, text: &str) {
        self.ship(LogStream::Stderr, text.as_bytes());
    }

    fn ship(&self, stream: LogStream, text: &[u8]) {
        let text = String::from_utf8_lossy(text);
        let line = LogLine {
            at_ms: nubo_bus::now_ms(),
            stream,
            text: text.trim_end_matches('\r').to_owned(),
        };
        if self.tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Writes a piece of the workload's output to its log file.
pub fn keep(log: &Mutex<RotatingLog>, bytes: &[u8]) {
    if let Ok(mut l) = log.lock()
        && let Err(e) = l.write(bytes)
    {
        tracing::warn!(error = %e, "cannot write the workload's output");
    }
}

/// One stream's output cut into lines to ship: a line without its end waits for the rest, one
/// longer than [`MAX_LINE`] is cut there.
#[derive(Default)]
pub struct LineCutter {
    partial: Vec<u8>,
}

impl LineCutter {
    /// Ships each line `bytes` completes.
    pub fn take(&mut self, bytes: &[u8], stream: LogStream, shipper: &Shipper) {
        for &b in bytes {
            if b == b'\n' {
                shipper.ship(stream, &self.partial);
                self.partial.clear();
            } else {
                self.partial.push(b);
                if self.partial.len() >= MAX_LINE {
                    shipper.ship(stream, &self.partial);
                    self.partial.clear();
                }
            }
        }
    }

    /// Ships what is left (the output ended without a line end).
    pub fn finish(&mut self, stream: LogStream, shipper: &Shipper) {
        if !self.partial.is_empty() {
            shipper.ship(stream, &self.partial);
            self.partial.clear();
        }
    }
}

/// Copies `from` (a workload's standard output or error) into `log` until it ends, and ships
/// each line with `shipper`.
pub async fn pump(
    mut from: impl AsyncRead + Unpin,
    log: Arc<Mutex<RotatingLog>>,
    stream: LogStream,
    shipper: Option<Shipper>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut lines = LineCutter::default();
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                if let Some(s) = &shipper {
                    lines.finish(stream, s);
                }
                return;
            }
            Ok(n) => {
                keep(&log, &buf[..n]);
                if let Some(s) = &shipper {
                    lines.take(&buf[..n], stream, s);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_shipped_whole_cut_at_their_bound_and_dropped_when_the_queue_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Mutex::new(
            RotatingLog::open(&dir.path().join("w.log"), 1 << 20).unwrap(),
        ));
        let (tx, mut rx) = mpsc::channel(4);
        let shipper = Shipper {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        let long = "y".repeat(MAX_LINE + 10);
        let input = "one\r\ntw".to_owned();
        let rest = format!("o\n{long}\nlast without end");
        let (mut w, r) = tokio::io::duplex(64);
        let task = tokio::spawn(pump(r, log, LogStream::Stderr, Some(shipper.clone())));
        use tokio::io::AsyncWriteExt;
        w.write_all(input.as_bytes()).await.unwrap();
        w.write_all(rest.as_bytes()).await.unwrap();
        drop(w);
        // The queue holds 4: the fifth line is dropped and counted, not waited for.
        task.await.unwrap();
        let mut got = Vec::new();
        while let Ok(l) = rx.try_recv() {
            assert_eq!(l.stream, LogStream::Stderr);
            got.push(l.text);
        }
        assert_eq!(got[0], "one");
        assert_eq!(got[1], "two");
        assert_eq!(got[2].len(), MAX_LINE);
        assert_eq!(got[3], "y".repeat(10));
        assert_eq!(got.len(), 4);
        assert_eq!(shipper.dropped.load(Ordering::Relaxed), 1, "the last line");
        // The file has everything.
        let file = std::fs::read_to_string(dir.path().join("w.log")).unwrap();
        assert!(file.ends_with("last without end"));
    }

    #[test]
    fn the_log_rotates_at_its_bound_and_keeps_one_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("workload.log");
        let mut log = RotatingLog::open(&path, 100).unwrap();
        for i in 0..50 {
            log.write(format!("line {i:03}\n").as_bytes()).unwrap();
        }
        let now = std::fs::read_to_string(&path).unwrap();
        let before = std::fs::read_to_string(dir.path().join("workload.log.1")).unwrap();
        assert!(now.len() <= 100 && before.len() <= 100);
        assert!(now.ends_with("line 049\n"), "{now}");
        let number = |l: &str| l[5..8].parse::<u32>().unwrap();
        let first_now = number(now.lines().next().unwrap());
        let last_before = number(before.lines().last().unwrap());
        assert_eq!(last_before + 1, first_now, "nothing lost at the rotation");
        // Nothing else: two files at most.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
