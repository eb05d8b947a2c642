//! The HTTP client: one request per command, errors turned into advice.

use std::fmt;

use anyhow::Context;
use reqwest::StatusCode;
use serde_json::Value;

use crate::Connection;

/// A request the API refused, with its JSON body.
#[derive(Debug)]
pub struct ApiFailure {
    /// HTTP status.
    pub status: StatusCode,
    /// The API's message.
    pub message: String,
    /// `(field, reason)` pairs.
    pub errors: Vec<(String, String)>,
    /// What to do next.
    pub hint: Option<String>,
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.status)?;
        for (field, reason) in &self.errors {
            if field.is_empty() {
                write!(f, "\n  - {reason}")?;
            } else {
                write!(f, "\n  - {field}: {reason}")?;
            }
        }
        if let Some(h) = &self.hint {
            write!(f, "\nhint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiFailure {}

/// Percent-encodes a path segment.
pub fn escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A client of one server.
pub struct ApiClient {
    http: reqwest::Client,
    /// Without a time limit on the whole answer: for answers that stream (`logs --follow`).
    streaming: reqwest::Client,
    conn: Connection,
}

impl ApiClient {
    /// A client for `conn`.
    pub fn new(conn: &Connection) -> anyhow::Result<Self> {
        Ok(ApiClient {
            http: Self::builder(conn, Some(std::time::Duration::from_secs(60)))?
                .build()
                .context("cannot set up the HTTP client")?,
            streaming: Self::builder(conn, None)?
                .connect_timeout(std::time::Duration::from_secs(30))
                .build()
                .context("cannot set up the HTTP client")?,
            conn: conn.clone(),
        })
    }

    /// The request with the connection's credentials: its password (Basic), else its token
    /// (Bearer).
    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match (&self.conn.password, &self.conn.token) {
            (None, Some(token)) => req.bearer_auth(token),
            (password, _) => req.basic_auth(&self.conn.user, password.as_deref()),
        }
    }

    /// Reads a streamed answer (newline-delimited), calling `line` with each line as it comes,
    /// until the server ends it.
    pub async fn follow(&self, path: &str, mut line: impl FnMut(&str)) -> anyhow::Result<()> {
        let url = format!("{}{path}", self.conn.url);
        let req = self.streaming.get(&url);
        let mut resp = match self.authorized(req).send().await {
            Ok(r) => r,
            Err(e) => return Err(self.transport_error(e)),
        };
        if !resp.status().is_success() {
            // The error as `send` explains it.
            return self.send("GET", path, None).await.map(|_| ());
        }
        let mut pending: Vec<u8> = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .context("the server closed the connection mid-answer")?
        {
            pending.extend_from_slice(&chunk);
            while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                let l: Vec<u8> = pending.drain(..=i).collect();
                line(String::from_utf8_lossy(&l[..i]).as_ref());
            }
        }
        Ok(())
    }

    fn builder(
        conn: &Connection,
        timeout: Option<std::time::Duration>,
    ) -> anyhow::Result<reqwest::ClientBuilder> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(concat!("nubo-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(t) = timeout {
            b = b.timeout(t);
        }
        if let Some(ca) = &conn.ca_cert {
            let pem = std::fs::read(ca)
                .with_context(|| format!("cannot read the CA certificate {}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{} is not a PEM certificate", ca.display()))?;
            b = b.add_root_certificate(cert);
        }
        if conn.insecure {
            b = b.danger_accept_invalid_certs(true);
        }
        Ok(b)
    }

    /// Sends a request and returns the JSON body of a successful answer.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.conn.url);
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self.authorized(self.http.request(method, &url));
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Err(self.transport_error(e)),
        };
        let status = resp.status();
        let text = resp
            .text()
            .await
            .context("the server closed the connection mid-answer")?;
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(json);
        }
        let message = json
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| json.as_str().unwrap_or("no details").to_owned());
        let errors = json
            .get("errors")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e.get("field")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    e.get("reason")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .filter(|(_, r)| !message.contains(r.as_str()))
            .collect();
        let hint = match status {
            StatusCode::UNAUTHORIZED => Some(
                "pass --user and --password (or set NUBO_USER and NUBO_PASSWORD); the admin password was printed at the server's first start".to_owned(),
            ),
            StatusCode::CONFLICT => Some("see what uses it with `describe`, or pick another id".to_owned()),
            StatusCode::NOT_FOUND => Some("list what exists with the `list` command".to_owned()),
            _ => None,
        };
        Err(ApiFailure {
            status,
            message,
            errors,
            hint,
        }
        .into())
    }

    fn transport_error(&self, e: reqwest::Error) -> anyhow::Error {
        let text = format!("{e:?}");
        let hint = if text.contains("Connection refused")
            || e.is_connect() && !text.contains("certificate") && !text.contains("Certificate")
        {
            format!(
                "nothing answers at {}: start the platform with `nubo server`, or point --server (NUBO_URL) at it",
                self.conn.url
            )
        } else if text.contains("certificate")
            || text.contains("Certificate")
            || text.contains("UnknownIssuer")
        {
            "the server's certificate is not trusted: pass --ca-cert <data-dir>/tls/cert.pem (NUBO_CA_CERT), or --insecure for a throwaway set-up".to_owned()
        } else if e.is_timeout() {
            "the server did not answer in time".to_owned()
        } else {
            "check --server (NUBO_URL)".to_owned()
        };
        anyhow::anyhow!("cannot reach {}: {e}\nhint: {hint}", self.conn.url)
    }
}
