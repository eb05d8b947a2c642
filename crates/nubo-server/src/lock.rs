//! One server per data directory: an exclusive `flock` held for the server's lifetime.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// The held lock; released when dropped (or when the process dies).
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock or fails at once if another process holds it.
    pub fn acquire(path: &Path) -> std::io::Result<Self> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        // SAFETY: flock on a file descriptor we own; no memory is shared.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(DirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_second_lock_on_the_same_directory_fails() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nubo.lock");
        let first = super::DirLock::acquire(&p).unwrap();
        assert!(super::DirLock::acquire(&p).is_err());
        drop(first);
        assert!(super::DirLock::acquire(&p).is_ok());
    }
}
