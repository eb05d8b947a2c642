//! The workload's output, bounded: written to `workload.log` until it reaches a size, then that
//! file becomes `workload.log.1` (replacing the previous one) and a new one starts. A member's
//! logs take at most twice the bound on disk, however long it runs.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};

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

/// Copies `from` (a workload's standard output or error) into `log` until it ends.
pub async fn pump(mut from: impl AsyncRead + Unpin, log: Arc<Mutex<RotatingLog>>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Ok(mut l) = log.lock()
                    && let Err(e) = l.write(&buf[..n])
                {
                    tracing::warn!(error = %e, "cannot write the workload's output");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
