//! `GET /api/applications/{id}/logs`: the workload output of an application's members, from this
//! server's log store (`nubo_logs`), the caller's tenant's only; `?follow=true` streams the lines
//! as they come (newline-delimited JSON) until the client goes.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http::{StatusCode, header};
use nubo_logs::Record;
use nubo_manager::Principal;
use nubo_model::Application;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use crate::AppState;
use crate::error::ApiError;

/// The query of a read.
#[derive(Debug, Deserialize)]
pub struct LogQuery {
    /// One member only.
    member: Option<String>,
    /// Lines since: milliseconds since the epoch, or an age (`30s`, `10m`, `2h`).
    since: Option<String>,
    /// The last this many lines only.
    tail: Option<usize>,
    /// Keep the answer open and send lines as they come.
    #[serde(default)]
    follow: bool,
}

/// `30s`, `10m`, `2h`, `1d` (an age before `now_ms`), or milliseconds since the epoch.
pub fn parse_since(text: &str, now_ms: u64) -> Option<u64> {
    let t = text.trim();
    if let Ok(ms) = t.parse::<u64>() {
        return Some(ms);
    }
    let (n, unit) = t.split_at(t.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    let ms = match unit {
        "s" => n.checked_mul(1_000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(now_ms.saturating_sub(ms))
}

fn line(r: &Record) -> Vec<u8> {
    let mut v = serde_json::to_vec(r).unwrap_or_default();
    v.push(b'\n');
    v
}

/// The handler.
pub async fn logs(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    // The application must be the caller's tenant's (404 otherwise).
    s.manager.get::<Application>(p.tenant_id, &id).await?;
    let logs = s.logs().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this server keeps no logs (it does not follow the bus)",
        )
    })?;
    let since_ms = match &q.since {
        Some(t) => Some(parse_since(t, nubo_bus::now_ms()).ok_or_else(|| {
            let mut e = ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "since `{t}`: give an age (30s, 10m, 2h, 1d) or milliseconds since the epoch"
                ),
            );
            e.errors.push(nubo_model::FieldError {
                field: "since".into(),
                reason: "not an age or a time".into(),
            });
            e
        })?),
        None => None,
    };
    let query = nubo_logs::Query {
        member_id: q.member.clone(),
        since_ms,
        tail: q.tail,
    };
    if !q.follow {
        return Ok(Json(logs.read(p.tenant_id, &id, &query)).into_response());
    }
    // Subscribed first, then the history: nothing falls between them (the seq tells what the
    // history had already).
    let rx = logs.subscribe();
    let history = logs.read(p.tenant_id, &id, &query);
    let last = history.last().map(|r| r.seq);
    let tenant = p.tenant_id;
    let head: Vec<u8> = history.iter().flat_map(line).collect();
    let stream = futures_util::stream::unfold(
        (Some(head), rx, last, query, id, tenant),
        |(head, mut rx, last, query, app, tenant)| async move {
            if let Some(h) = head {
                return Some((
                    Ok::<_, std::io::Error>(h),
                    (None, rx, last, query, app, tenant),
                ));
            }
            loop {
                match rx.recv().await {
                    Ok(t) => {
                        if last.is_some_and(|l| t.record.seq <= l)
                            || !query.matches(tenant, &app, &t.owner, &t.record)
                        {
                            continue;
                        }
                        let out = line(&t.record);
                        return Some((Ok(out), (None, rx, last, query, app, tenant)));
                    }
                    Err(RecvError::Lagged(n)) => {
                        let note = format!("{{\"skipped\":{n}}}\n").into_bytes();
                        return Some((Ok(note), (None, rx, last, query, app, tenant)));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    );
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn since_is_an_age_or_a_time() {
        let now = 10_000_000;
        assert_eq!(super::parse_since("30s", now), Some(now - 30_000));
        assert_eq!(super::parse_since("10m", now), Some(now - 600_000));
        assert_eq!(super::parse_since("2h", now), Some(now - 7_200_000));
        assert_eq!(super::parse_since("1d", 100), Some(0));
        assert_eq!(
            super::parse_since("1700000000000", now),
            Some(1_700_000_000_000)
        );
        assert_eq!(super::parse_since("soon", now), None);
        assert_eq!(super::parse_since("", now), None);
        assert_eq!(super::parse_since("99999999999999999999h", now), None);
    }
}
