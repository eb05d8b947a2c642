//! Git artifacts (Stratos' artifact checkout): the member's repository is cloned into its
//! application directory (`app/`) before the workload starts, and fetched again when the
//! platform asks (`InstanceArtifactUpdate`).
//!
//! The `git` command does the work (gix has no push, which commit-back needs, and its HTTP
//! credential handling differs from git's). A private repository's credentials come from the
//! platform's API, with the member's token, for each clone or fetch; they are handed to git as an
//! HTTP header in its environment (`GIT_CONFIG_*`), never on a command line (which any user can
//! read in `/proc`), in a URL, or in a file: `.git/config` names the plain URL only.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use nubo_iaas::AgentPayload;

/// How long one git command may take.
pub const GIT_TIMEOUT: Duration = Duration::from_secs(300);
/// Clone attempts before the member is reported failed (Stratos' `artifact.clone.retries`).
pub const CLONE_ATTEMPTS: u32 = 3;

/// Where the repository is and how to get in.
#[derive(Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Repository {
    /// Its URL.
    pub repo_url: String,
    /// User name (private repositories).
    #[serde(default)]
    pub repo_username: Option<String>,
    /// Password (private repositories): kept in memory only.
    #[serde(default)]
    pub repo_password: Option<String>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("repo_url", &self.repo_url)
            .field("repo_username", &self.repo_username)
            .finish_non_exhaustive()
    }
}

/// The platform API's base URL, from the payload's metadata service URL.
pub(crate) fn api_base(p: &AgentPayload) -> Option<String> {
    let url = p.parameters.get("METADATA_SERVICE_URL")?;
    Some(
        url.trim_end_matches('/')
            .trim_end_matches("/metadata/api")
            .to_owned(),
    )
}

/// The member's repository, with its credentials, read from the platform's API with the
/// member's token; without a way to the API, the payload's `REPO_URL` alone (a public one).
/// `None`: the member has no repository.
pub async fn repository(p: &AgentPayload) -> anyhow::Result<Option<Repository>> {
    let Some(url) = p.parameters.get("REPO_URL").filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let (Some(base), Some(token)) = (api_base(p), p.parameters.get("TOKEN")) else {
        return Ok(Some(Repository {
            repo_url: url.clone(),
            repo_username: None,
            repo_password: None,
        }));
    };
    let client = api_client(p, Duration::from_secs(30))?;
    let answer = client
        .get(format!("{base}/agent/api/repository"))
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("cannot reach the platform's API at {base}"))?;
    match answer.status().as_u16() {
        200 => Ok(Some(answer.json().await.context(
            "the platform's API answered something else than a repository",
        )?)),
        404 => Ok(None),
        code => {
            let text = answer.text().await.unwrap_or_default();
            anyhow::bail!(
                "the platform's API refused the member's repository ({code}): {}",
                text.chars().take(300).collect::<String>()
            )
        }
    }
}

/// A tenant's repository, for a member of a multi-tenant application.
#[derive(Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantRepository {
    /// The tenant.
    pub tenant_domain: String,
    /// Its repository.
    #[serde(flatten)]
    pub repo: Repository,
}

/// The repositories the tenants signed up to the member's multi-tenant application with, read
/// from the platform's API with the member's token.
pub async fn signups(p: &AgentPayload) -> anyhow::Result<Vec<TenantRepository>> {
    agent_api_get(p, "signups", "the signups", Duration::from_secs(30)).await
}

/// `GET <api>/agent/api/<path>` with the member's token, read as JSON (`what` names it in
/// errors).
pub(crate) async fn agent_api_get<T: serde::de::DeserializeOwned>(
    p: &AgentPayload,
    path: &str,
    what: &str,
    timeout: Duration,
) -> anyhow::Result<T> {
    let (Some(base), Some(token)) = (api_base(p), p.parameters.get("TOKEN")) else {
        anyhow::bail!(
            "the platform gave this member no way to its API (no METADATA_SERVICE_URL or TOKEN)"
        );
    };
    let answer = api_client(p, timeout)?
        .get(format!("{base}/agent/api/{path}"))
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("cannot reach the platform's API at {base}"))?;
    anyhow::ensure!(
        answer.status().is_success(),
        "the platform's API refused {what} ({})",
        answer.status()
    );
    answer
        .json()
        .await
        .with_context(|| format!("the platform's API answered something else than {what}"))
}

/// Whether `domain` can name a directory of `tenants/` (a domain name's characters only).
fn tenant_dir_name(domain: &str) -> bool {
    !domain.is_empty()
        && !domain.starts_with('.')
        && domain.len() <= 253
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
}

/// Brings `app/tenants/` in line with the tenants signed up: each new one's repository checked
/// out in `tenants/<tenant-domain>/` (and, when `fetch`, the others' fetched again), the
/// directories of tenants no longer signed up removed. Returns the tenants served.
pub async fn sync_tenants(
    app: &Path,
    p: &AgentPayload,
    fetch: bool,
) -> anyhow::Result<Vec<String>> {
    let list = signups(p).await?;
    let root = app.join("tenants");
    std::fs::create_dir_all(&root).with_context(|| format!("cannot make {}", root.display()))?;
    let mut served = Vec::new();
    for t in &list {
        if !tenant_dir_name(&t.tenant_domain) {
            tracing::warn!(tenant = %t.tenant_domain, "a tenant domain that cannot name a directory: skipped");
            continue;
        }
        let dir = root.join(&t.tenant_domain);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot make {}", dir.display()))?;
        let result = if dir.join(".git").exists() {
            if !fetch {
                served.push(t.tenant_domain.clone());
                continue;
            }
            update(&dir, &t.repo).await
        } else {
            checkout_with(&dir, &t.repo, Duration::from_millis(500)).await
        };
        match result {
            Ok(commit) => {
                tracing::debug!(tenant = %t.tenant_domain, %commit, "tenant's artifacts current");
                served.push(t.tenant_domain.clone());
            }
            Err(e) => {
                tracing::warn!(tenant = %t.tenant_domain, error = %e, "cannot check a tenant's repository out")
            }
        }
    }
    for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !list.iter().any(|t| t.tenant_domain == name) {
            let _ = std::fs::remove_dir_all(entry.path());
            tracing::info!(tenant = %name, "a tenant's artifacts removed: no longer signed up");
        }
    }
    Ok(served)
}

/// A client of the platform's API that trusts its certificate (`METADATA_SERVICE_CA`).
pub(crate) fn api_client(p: &AgentPayload, timeout: Duration) -> anyhow::Result<reqwest::Client> {
    let mut client = reqwest::Client::builder().timeout(timeout).use_rustls_tls();
    if let Some(ca) = p.parameters.get("METADATA_SERVICE_CA") {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {ca}"))?;
        client = client.add_root_certificate(
            reqwest::Certificate::from_pem(&pem).context("the API's certificate is not PEM")?,
        );
    }
    client.build().context("cannot make an HTTPS client")
}

/// A git command in `dir`, with nothing of the user's or the system's git configuration, no
/// prompt, and the repository's credentials (if any) as an HTTP header in its environment.
fn git(dir: &Path, repo: &Repository, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("git");
    cmd.env_clear()
        .envs(nubo_iaas::base_environment())
        .env("HOME", dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env(
            "GIT_SSH_COMMAND",
            "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new",
        )
        // The committer of commit-back, and no question asked of anyone.
        .env("GIT_AUTHOR_NAME", "nubo")
        .env("GIT_AUTHOR_EMAIL", "nubo@localhost")
        .env("GIT_COMMITTER_NAME", "nubo")
        .env("GIT_COMMITTER_EMAIL", "nubo@localhost");
    if let Some(user) = &repo.repo_username {
        let pair = format!("{user}:{}", repo.repo_password.as_deref().unwrap_or(""));
        let header = format!(
            "Authorization: Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        );
        cmd.env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "http.extraHeader")
            .env("GIT_CONFIG_VALUE_0", header);
    }
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs a git command; its standard output, or why it failed (its last words).
async fn run(dir: &Path, repo: &Repository, args: &[&str]) -> Result<String, String> {
    let child = git(dir, repo, args)
        .spawn()
        .map_err(|e| format!("cannot run git: {e} (git must be installed where members run)"))?;
    let out = tokio::time::timeout(GIT_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            format!(
                "git {} took more than {} s",
                args.first().unwrap_or(&""),
                GIT_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("git failed: {e}"))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let last: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    Err(format!(
        "git {} failed ({}): {}",
        args.first().unwrap_or(&""),
        out.status,
        last[last.len().saturating_sub(3)..].join(" | ")
    ))
}

/// The commit checked out in `dir`.
pub async fn head(dir: &Path, repo: &Repository) -> Result<String, String> {
    run(dir, repo, &["rev-parse", "HEAD"]).await
}

/// Checks the repository out into `app` (the member's application directory, which a start
/// hook may have put files in already): a repository there is made or reused, then the latest
/// commit fetched and checked out, with a few attempts. Returns the commit.
pub async fn checkout(app: &Path, repo: &Repository) -> Result<String, String> {
    checkout_with(app, repo, Duration::from_secs(2)).await
}

/// [`checkout`], waiting `pause` between attempts.
async fn checkout_with(app: &Path, repo: &Repository, pause: Duration) -> Result<String, String> {
    if !app.join(".git").exists() {
        run(app, repo, &["init", "--quiet"]).await?;
        run(app, repo, &["remote", "add", "origin", &repo.repo_url]).await?;
    }
    let mut last = String::new();
    for attempt in 1..=CLONE_ATTEMPTS {
        match update(app, repo).await {
            Ok(commit) => return Ok(commit),
            Err(e) => {
                tracing::warn!(attempt, error = %e, "checkout failed");
                last = e;
                if attempt < CLONE_ATTEMPTS {
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
    Err(last)
}

/// Fetches the latest commit of the repository's default branch and checks it out (the files
/// the workload changed are reset, as Stratos' agent does when commits are not enabled).
/// Returns the commit.
pub async fn update(app: &Path, repo: &Repository) -> Result<String, String> {
    // The URL was checked when the application was defined: it starts with its scheme, so git
    // cannot read it as an option.
    run(app, repo, &["remote", "set-url", "origin", &repo.repo_url]).await?;
    run(app, repo, &["fetch", "--quiet", "origin", "HEAD"]).await?;
    run(app, repo, &["reset", "--quiet", "--hard", "FETCH_HEAD"]).await?;
    head(app, repo).await
}

/// The repository's default branch (`main`), as the remote names it.
pub async fn default_branch(app: &Path, repo: &Repository) -> Result<String, String> {
    let out = run(app, repo, &["ls-remote", "--symref", "origin", "HEAD"]).await?;
    out.lines()
        .find_map(|l| l.strip_prefix("ref: refs/heads/"))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .ok_or_else(|| "the repository names no default branch".to_owned())
}

/// Stratos' commit-back: commits what the workload changed in `app` and pushes it to the
/// repository's default branch. `Ok(None)` when nothing changed. A push refused because the
/// branch moved meanwhile is tried again once, after a fetch and a rebase; a conflict leaves the
/// changes committed here only, and says so.
pub async fn commit_back(
    app: &Path,
    repo: &Repository,
    member_id: &str,
) -> Result<Option<String>, String> {
    run(app, repo, &["add", "--all"]).await?;
    if run(app, repo, &["status", "--porcelain"]).await?.is_empty() {
        return Ok(None);
    }
    let message = format!("nubo: the changes of member {member_id}");
    run(app, repo, &["commit", "--quiet", "-m", &message]).await?;
    let branch = default_branch(app, repo).await?;
    let target = format!("HEAD:refs/heads/{branch}");
    if run(app, repo, &["push", "--quiet", "origin", &target])
        .await
        .is_err()
    {
        run(app, repo, &["fetch", "--quiet", "origin", &branch]).await?;
        if let Err(e) = run(app, repo, &["rebase", "--quiet", "FETCH_HEAD"]).await {
            let _ = run(app, repo, &["rebase", "--abort"]).await;
            return Err(format!(
                "the changes conflict with the repository's `{branch}`: kept here, not pushed ({e})"
            ));
        }
        run(app, repo, &["push", "--quiet", "origin", &target]).await?;
    }
    head(app, repo).await.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(dir: &Path, script: &str) {
        let ok = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .status()
            .unwrap()
            .success();
        assert!(ok, "{script}");
    }

    #[tokio::test]
    async fn a_repository_is_cloned_then_updated_to_its_latest_commit() {
        let dir = tempfile::tempdir().unwrap();
        let origin = dir.path().join("origin");
        std::fs::create_dir(&origin).unwrap();
        sh(
            &origin,
            "git init -q -b main && echo v1 > index.html && git add . && git commit -qm v1",
        );
        let repo = Repository {
            repo_url: format!("file://{}", origin.display()),
            repo_username: None,
            repo_password: None,
        };
        let app = dir.path().join("member/app");
        std::fs::create_dir_all(&app).unwrap();
        // A start hook put a file there first.
        std::fs::write(app.join("from-hook.txt"), "x").unwrap();
        let first = checkout(&app, &repo).await.unwrap();
        assert!(app.join("from-hook.txt").exists());
        assert_eq!(first.len(), 40, "{first}");
        assert_eq!(
            std::fs::read_to_string(app.join("index.html")).unwrap(),
            "v1\n"
        );
        sh(&origin, "echo v2 > index.html && git commit -qam v2");
        // The workload changed a file meanwhile: the update resets it.
        std::fs::write(app.join("index.html"), "scribbled").unwrap();
        let second = update(&app, &repo).await.unwrap();
        assert_ne!(first, second);
        assert_eq!(
            std::fs::read_to_string(app.join("index.html")).unwrap(),
            "v2\n"
        );
        // A checkout already there is updated, not cloned again.
        sh(&origin, "echo v3 > index.html && git commit -qam v3");
        let third = checkout(&app, &repo).await.unwrap();
        assert_ne!(second, third);
        // A repository that is not there: the reason, after the attempts.
        let missing = Repository {
            repo_url: format!("file://{}/nothing", dir.path().display()),
            ..repo.clone()
        };
        let empty = dir.path().join("other/app");
        std::fs::create_dir_all(&empty).unwrap();
        let err = checkout_with(&empty, &missing, Duration::from_millis(10))
            .await
            .unwrap_err();
        assert!(err.contains("git fetch failed"), "{err}");
        // Commit-back: what the workload wrote goes to the repository's default branch, even
        // when the branch moved meanwhile (a rebase, then the push).
        let bare = dir.path().join("bare.git");
        sh(
            dir.path(),
            &format!(
                "git clone -q --bare {} {}",
                origin.display(),
                bare.display()
            ),
        );
        let shared = Repository {
            repo_url: format!("file://{}", bare.display()),
            ..repo.clone()
        };
        let app2 = dir.path().join("m2/app");
        std::fs::create_dir_all(&app2).unwrap();
        checkout(&app2, &shared).await.unwrap();
        assert_eq!(default_branch(&app2, &shared).await.unwrap(), "main");
        assert_eq!(
            commit_back(&app2, &shared, "m2").await.unwrap(),
            None,
            "nothing changed"
        );
        let elsewhere = dir.path().join("elsewhere");
        sh(
            dir.path(),
            &format!("git clone -q {} {}", bare.display(), elsewhere.display()),
        );
        sh(
            &elsewhere,
            "echo other > other.txt && git add . && git commit -qm other && git push -q origin main",
        );
        std::fs::write(app2.join("uploaded.txt"), "from the workload").unwrap();
        let pushed = commit_back(&app2, &shared, "m2").await.unwrap().unwrap();
        sh(&elsewhere, "git pull -q origin main");
        assert_eq!(
            std::fs::read_to_string(elsewhere.join("uploaded.txt")).unwrap(),
            "from the workload"
        );
        assert!(elsewhere.join("other.txt").exists());
        let log = std::process::Command::new("git")
            .args(["log", "-1", "--format=%H %s"])
            .current_dir(&elsewhere)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&log.stdout);
        assert!(log.starts_with(&pushed), "{log}");
        assert!(log.contains("the changes of member m2"), "{log}");
        // Credentials never show in a Debug of the repository.
        let private = Repository {
            repo_password: Some("hunter2".into()),
            repo_username: Some("u".into()),
            ..repo
        };
        assert!(!format!("{private:?}").contains("hunter2"));
    }
}
