//! Test support shared by every crate's tests.
//!
//! A suite that needs a real service (a broker, PostgreSQL) or a program finds it through an
//! environment variable or `PATH`. Without it, a plain `cargo test` skips the suite and says so
//! with a `SKIPPED` line written past the harness's capture (and, when `NUBO_TEST_SKIP_LOG`
//! names a file, a line there, which the full test run summarises). The full test run
//! (`scripts/test`) starts every service and sets `NUBO_TEST_REQUIRE_SERVICES=1`: a suite that
//! would skip for a missing service fails instead, naming the service.
//!
//! The Stratos samples are optional: `NUBO_SAMPLES`, else `../shared/stratos-samples` beside the
//! repository when it exists; a clone without them skips the sample suites, even in the full run.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Whether the full test run asked that no service-backed suite skip.
fn services_required() -> bool {
    std::env::var_os("NUBO_TEST_REQUIRE_SERVICES").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Says that `suite` is skipped and why: on the process's stderr past the harness's capture,
/// and in the skip log.
fn say_skipped(suite: &str, why: &str) {
    let line = format!("SKIPPED {suite}: {why}");
    if let Ok(mut err) = std::fs::OpenOptions::new().append(true).open("/dev/stderr") {
        let _ = writeln!(err, "{line}");
    }
    if let Some(log) = std::env::var_os("NUBO_TEST_SKIP_LOG")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
    {
        let _ = writeln!(f, "{suite}\t{why}");
    }
}

/// A suite needs something this machine lacks (`what`, and how to provide it: `how`). Returns
/// normally to let the test return early, after saying so; panics instead in the full test run.
///
/// # Panics
/// When `NUBO_TEST_REQUIRE_SERVICES` is set: the full run must run every service-backed suite.
pub fn skip(suite: &str, what: &str, how: &str) {
    assert!(
        !services_required(),
        "{suite} needs {what}, and the full test run requires it ({how}); it was missing"
    );
    say_skipped(suite, &format!("{what} is missing ({how})"));
}

/// A suite skipped for a missing service or program, `message` saying which suite and what is
/// missing (`the platform on NATS: NUBO_TEST_NATS_URL is not set (…)`). Returns normally to let
/// the test return early, after saying so; panics instead in the full test run.
///
/// # Panics
/// When `NUBO_TEST_REQUIRE_SERVICES` is set.
pub fn skipped(message: &str) {
    assert!(
        !services_required(),
        "not skipped in the full test run: {message}"
    );
    let (suite, why) = message.split_once(": ").unwrap_or((message, "skipped"));
    say_skipped(suite, why);
}

/// The value of `var` for a suite whose service the full test run cannot start here (a
/// Kubernetes cluster: no API server can be installed on these machines); `None` (the suite
/// skipped, and said so, even in the full run) when it is not set.
pub fn optional_service(var: &str, suite: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            say_skipped(
                suite,
                &format!("{var} is not set (the full test run cannot provide it on this machine)"),
            );
            None
        }
    }
}

/// The value of the environment variable `var` that points `suite` at its service; `None` (the
/// suite skipped, and said so) when it is not set. Fails in the full test run.
pub fn service(var: &str, suite: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            skip(suite, var, "scripts/test starts the service and sets it");
            None
        }
    }
}

/// Where `program` is on `PATH`, without saying anything when it is not.
pub fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// Where `program` is on `PATH`; `None` (the suite skipped, and said so) when it is not. Fails in
/// the full test run.
pub fn program(name: &str, suite: &str) -> Option<PathBuf> {
    let found = on_path(name);
    if found.is_none() {
        skip(
            suite,
            &format!("`{name}` on PATH"),
            "scripts/test installs it",
        );
    }
    found
}

/// The repository's root: the nearest directory holding `Cargo.lock` above this crate's (the
/// test runner's `CARGO_MANIFEST_DIR`).
pub fn workspace_root() -> PathBuf {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    start
        .ancestors()
        .find(|d| d.join("Cargo.lock").exists())
        .map(Path::to_path_buf)
        .unwrap_or(start)
}

/// Where the Stratos samples are, if anywhere: `NUBO_SAMPLES`, else `../shared/stratos-samples`
/// beside the repository.
pub fn samples_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("NUBO_SAMPLES").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => workspace_root().join("../shared/stratos-samples"),
    };
    dir.join("scenarios.json").exists().then_some(dir)
}

/// The Stratos samples for `suite`; `None` (the suite skipped, and said so, even in the full
/// run: a clone need not have them) when they are not found.
pub fn samples(suite: &str) -> Option<PathBuf> {
    let found = samples_dir();
    if found.is_none() {
        say_skipped(
            suite,
            "the Stratos samples are not found: set NUBO_SAMPLES to their folder (the one holding scenarios.json)",
        );
    }
    found
}
