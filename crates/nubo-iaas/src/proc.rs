//! Process facts from `/proc`: start times (to tell a live process from a reused pid), sessions,
//! process groups, and resource use.

/// Fields of `/proc/<pid>/stat` after the command name.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The process's start time (clock ticks since boot), or `None` when it does not exist (or is a zombie).
pub fn start_time(pid: i32) -> Option<u64> {
    let f = stat_fields(pid)?;
    if f.first().map(String::as_str) == Some("Z") {
        return None;
    }
    f.get(19)?.parse().ok()
}

/// Whether the process is stopped (`SIGSTOP`, `SIGTSTP`, or traced): state `T` or `t`.
pub fn stopped(pid: i32) -> bool {
    stat_fields(pid)
        .and_then(|f| f.first().cloned())
        .is_some_and(|s| s == "T" || s == "t")
}

/// The process's session id.
pub fn session(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(3)?.parse().ok()
}

/// The process's group id.
pub fn group(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(2)?.parse().ok()
}

/// CPU time used (user + system, clock ticks) and resident memory (bytes) of one process.
pub fn usage(pid: i32) -> Option<(u64, u64)> {
    let f = stat_fields(pid)?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let rss_pages: u64 = f.get(21)?.parse().ok()?;
    Some((utime + stime, rss_pages * page_size()))
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as u64 } else { 4096 }
}

/// Clock ticks per second.
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if n > 0 { n as u64 } else { 100 }
}

/// Every pid on the machine.
pub fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// Pids whose process group is `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|p| group(*p) == Some(pgid))
        .collect()
}

/// Sends `signal` to every process of the session led by `sid` (and its process group), without
/// asking whether `sid` is still the process meant: for a session this process created and has
/// not reaped yet. A recorded pid goes through [`signal_recorded_session`].
pub fn kill_session(sid: i32, signal: i32) {
    if sid <= 1 {
        return;
    }
    for pid in all_pids() {
        if session(pid) == Some(sid) {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid, signal) };
        }
    }
    // SAFETY: plain kill(2) on the process group.
    unsafe { libc::kill(-sid, signal) };
}

/// Signals the session a recorded process leads (the process, its children, whatever they left
/// in its session and process group), only when that is still what the record says:
/// - the pid runs with the recorded start time and leads its own session: it and its session
///   are signalled;
/// - the pid runs but is another process (its start time differs: the pid was reused, after a
///   reboot for example) or leads no session: nothing is signalled;
/// - the pid is gone: what is left in its session and group is signalled (the kernel reserves a
///   session or group id while a process uses it, so those are the recorded process's own
///   descendants).
///
/// Returns whether anything was signalled.
pub fn signal_recorded_session(pid: i32, recorded_start: u64, signal: i32) -> bool {
    if pid <= 1 {
        return false;
    }
    if let Some(now) = start_time(pid)
        && (now != recorded_start || session(pid) != Some(pid))
    {
        return false;
    }
    kill_session(pid, signal);
    true
}

/// Signals one recorded process, only while the pid still has the recorded start time.
pub fn signal_recorded(pid: i32, recorded_start: u64, signal: i32) -> bool {
    if pid <= 1 || start_time(pid) != Some(recorded_start) {
        return false;
    }
    // SAFETY: plain kill(2) on a pid checked to be the recorded process.
    unsafe { libc::kill(pid, signal) };
    true
}

/// Total memory of the host in bytes.
pub fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(1 << 30)
}

#[cfg(test)]
mod tests {
    #[test]
    fn facts_about_this_process() {
        let me = std::process::id() as i32;
        assert!(super::start_time(me).is_some());
        assert!(super::session(me).is_some());
        let (_, rss) = super::usage(me).unwrap();
        assert!(rss > 0);
        assert!(super::host_memory() > rss);
        assert!(super::start_time(i32::MAX).is_none());
    }

    #[test]
    fn a_reused_pid_is_left_alone() {
        use std::os::unix::process::CommandExt;
        // A live session leader, as an unrelated process holding a recorded pid would be.
        let mut child = unsafe {
            std::process::Command::new("sleep")
                .arg("30")
                .pre_exec(|| {
                    libc::setsid();
                    Ok(())
                })
                .spawn()
                .unwrap()
        };
        let pid = child.id() as i32;
        let start = (0..100)
            .find_map(|_| {
                std::thread::sleep(std::time::Duration::from_millis(10));
                (super::session(pid) == Some(pid)).then(|| super::start_time(pid))
            })
            .flatten()
            .unwrap();
        // A record of another process that had this pid: another start time.
        assert!(!super::signal_recorded_session(
            pid,
            start + 1,
            libc::SIGKILL
        ));
        assert!(child.try_wait().unwrap().is_none(), "still running");
        // The record of this very process: signalled.
        assert!(super::signal_recorded_session(pid, start, libc::SIGKILL));
        let status = child.wait().unwrap();
        assert!(!status.success());
        // A process that leads no session of its own is never signalled through a record.
        let me = std::process::id() as i32;
        if super::session(me) != Some(me) {
            let mine = super::start_time(me).unwrap();
            assert!(!super::signal_recorded_session(me, mine, 0));
        }
    }
}
