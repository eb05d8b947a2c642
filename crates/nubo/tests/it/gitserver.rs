//! A real git server on loopback for the tests: git's own smart-HTTP server (`git http-backend`,
//! run as a CGI program per request) behind a small HTTP front on a port the OS chose, with HTTP
//! Basic authentication on the repositories under `private/`. Every request it served is
//! recorded (path, and the user it authenticated), so a test can see that credentials were used.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use base64::Engine;
use tokio::io::AsyncWriteExt;

/// One request the server answered: its path and the user it authenticated.
#[derive(Debug, Clone)]
pub struct Served {
    pub path: String,
    pub user: Option<String>,
    pub status: u16,
}

#[derive(Clone)]
struct Config {
    root: PathBuf,
    user: String,
    password: String,
    served: Arc<Mutex<Vec<Served>>>,
}

/// The running server; stops when dropped.
pub struct GitServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Where its bare repositories are (`<name>.git`, `private/<name>.git`).
    pub root: PathBuf,
    served: Arc<Mutex<Vec<Served>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs a git command in `dir` (a test's own: no global configuration, a fixed author).
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "test")
        .env("GIT_AUTHOR_EMAIL", "test@localhost")
        .env("GIT_COMMITTER_NAME", "test")
        .env("GIT_COMMITTER_EMAIL", "test@localhost")
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl GitServer {
    /// Serves the repositories under `root`; those under `private/` need `user:password`.
    pub async fn start(root: &Path, user: &str, password: &str) -> GitServer {
        let served = Arc::new(Mutex::new(Vec::new()));
        let config = Config {
            root: root.to_owned(),
            user: user.to_owned(),
            password: password.to_owned(),
            served: served.clone(),
        };
        let app = axum::Router::new().fallback(handle).with_state(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        GitServer {
            url,
            root: root.to_owned(),
            served,
            task,
        }
    }

    /// Makes a bare repository `name` (`x.git`, `private/x.git`) whose first commit has `files`;
    /// returns a working clone of it (where a test commits and pushes, through the file system).
    pub fn repository(&self, name: &str, files: &[(&str, &str)], work: &Path) -> PathBuf {
        let bare = self.root.join(name);
        std::fs::create_dir_all(&bare).unwrap();
        git(&bare, &["init", "--quiet", "--bare", "-b", "main"]);
        let w = work.join(name.replace('/', "_"));
        std::fs::create_dir_all(&w).unwrap();
        git(&w, &["init", "--quiet", "-b", "main"]);
        for (path, text) in files {
            if let Some(dir) = w.join(path).parent() {
                std::fs::create_dir_all(dir).unwrap();
            }
            std::fs::write(w.join(path), text).unwrap();
        }
        git(&w, &["add", "."]);
        git(&w, &["commit", "--quiet", "-m", "first"]);
        git(&w, &["push", "--quiet", bare.to_str().unwrap(), "main"]);
        w
    }

    /// Commits `files` in the working clone `w` and pushes them; returns the new commit.
    pub fn push(&self, w: &Path, name: &str, files: &[(&str, &str)], message: &str) -> String {
        for (path, text) in files {
            if let Some(dir) = w.join(path).parent() {
                std::fs::create_dir_all(dir).unwrap();
            }
            std::fs::write(w.join(path), text).unwrap();
        }
        git(w, &["commit", "--quiet", "-am", message]);
        let bare = self.root.join(name);
        git(w, &["push", "--quiet", bare.to_str().unwrap(), "main"]);
        git(w, &["rev-parse", "HEAD"])
    }

    /// Every request answered so far.
    pub fn served(&self) -> Vec<Served> {
        self.served.lock().unwrap().clone()
    }
}

fn answer(status: u16, text: &str) -> Response {
    let mut r = Response::new(Body::from(text.to_owned()));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
    if status == 401 {
        r.headers_mut().insert(
            "www-authenticate",
            http::HeaderValue::from_static("Basic realm=\"git\""),
        );
    }
    r
}

async fn handle(State(c): State<Config>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let method = req.method().to_string();
    let headers = req.headers().clone();
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let user = header("authorization")
        .and_then(|h| h.strip_prefix("Basic ").map(str::to_owned))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|up| {
            let (u, p) = up.split_once(':')?;
            (u == c.user && p == c.password).then(|| u.to_owned())
        });
    let record = |status: u16| {
        c.served.lock().unwrap().push(Served {
            path: path.clone(),
            user: user.clone(),
            status,
        })
    };
    if path.starts_with("/private/") && user.is_none() {
        record(401);
        return answer(401, "authentication required");
    }
    let content_type = header("content-type").unwrap_or_default();
    let encoding = header("content-encoding").unwrap_or_default();
    let protocol = header("git-protocol").unwrap_or_default();
    let body: Bytes = axum::body::to_bytes(req.into_body(), 64 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_PROJECT_ROOT", &c.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", &path)
        .env("QUERY_STRING", &query)
        .env("REQUEST_METHOD", &method)
        .env("CONTENT_TYPE", &content_type)
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", &encoding)
        .env("GIT_PROTOCOL", &protocol)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("REMOTE_USER", user.clone().unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let out = child.wait_with_output().await.unwrap();
    let _ = writer.await;
    // CGI: headers, a blank line, the body.
    let raw = out.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((end, skip)) = split else {
        record(500);
        return answer(500, "git http-backend said nothing");
    };
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut status = 200;
    let mut resp = Response::new(Body::from(raw[end + skip..].to_vec()));
    for line in head.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("status") {
            status = v
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(500);
        } else if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(k.trim().as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            resp.headers_mut().insert(name, value);
        }
    }
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    record(status);
    resp
}
