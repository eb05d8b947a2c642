//! Extension hooks, as Stratos' agent runs them (§9.4 of the reference): a script
//! `<extensionsDir>/<EventName>.sh` per event, run with `sh` in the member's `app/` directory, with
//! the member's environment (its ports and launch parameters) and every value again under a
//! `STRATOS_` prefix, plus `EVENT`. A hook that exits non-zero, writes to stderr (Stratos' rule),
//! or runs longer than [`HOOK_TIMEOUT`] has failed, and says why; the agent reports it (a failed
//! start or activation hook fails the member). Events: `InstanceStartedEvent` (before the
//! workload starts), `InstanceActivatedEvent` (once it is Active), `clean` (before it stops on a
//! clean-up request).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// How long a hook may run.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// The hook of `event` in `dir`, if there is one.
pub fn hook(dir: Option<&Path>, event: &str) -> Option<PathBuf> {
    let path = dir?.join(format!("{event}.sh"));
    path.is_file().then_some(path)
}

/// Runs `script` for `event` with `env` (each value also as `STRATOS_<KEY>`) in `cwd`.
pub async fn run(
    script: &Path,
    event: &str,
    env: &BTreeMap<String, String>,
    cwd: &Path,
) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg(script)
        .current_dir(cwd)
        .env_clear()
        .envs(nubo_iaas::base_environment())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v).env(format!("STRATOS_{k}"), v);
    }
    cmd.env("EVENT", event).env("STRATOS_EVENT", event);
    let child = cmd
        .spawn()
        .map_err(|e| format!("hook {}: cannot run: {e}", script.display()))?;
    let out = tokio::time::timeout(HOOK_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            format!(
                "hook {} did not finish within {} s",
                script.display(),
                HOOK_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("hook {}: {e}", script.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr = stderr.trim();
    if !out.status.success() || !stderr.is_empty() {
        let tail: String = stderr
            .chars()
            .rev()
            .take(500)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(format!(
            "hook {} failed ({}){}",
            script.display(),
            out.status,
            if tail.is_empty() {
                String::new()
            } else {
                format!(": {tail}")
            }
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hooks_get_the_values_under_stratos_names_and_fail_loudly() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("seen");
        std::fs::write(
            dir.path().join("InstanceStartedEvent.sh"),
            format!(
                "echo \"$STRATOS_MEMBER_ID $MEMBER_ID $EVENT\" > {}\n",
                out.display()
            ),
        )
        .unwrap();
        std::fs::write(dir.path().join("clean.sh"), "echo oops >&2\n").unwrap();
        std::fs::write(dir.path().join("InstanceActivatedEvent.sh"), "exit 3\n").unwrap();
        let env = BTreeMap::from([("MEMBER_ID".to_owned(), "m-1".to_owned())]);
        let h = hook(Some(dir.path()), "InstanceStartedEvent").unwrap();
        run(&h, "InstanceStartedEvent", &env, dir.path())
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap().trim(),
            "m-1 m-1 InstanceStartedEvent"
        );
        let e = run(
            &hook(Some(dir.path()), "clean").unwrap(),
            "clean",
            &env,
            dir.path(),
        )
        .await
        .unwrap_err();
        assert!(e.contains("oops"), "{e}");
        let e = run(
            &hook(Some(dir.path()), "InstanceActivatedEvent").unwrap(),
            "InstanceActivatedEvent",
            &env,
            dir.path(),
        )
        .await
        .unwrap_err();
        assert!(e.contains("exit status: 3"), "{e}");
        assert!(hook(Some(dir.path()), "MemberActivatedEvent").is_none());
        assert!(hook(None, "clean").is_none());
    }
}
