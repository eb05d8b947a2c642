//! An in-process fake of the Kubernetes API server, for tests: pods and services in namespaces
//! (create, get, list and watch by label, delete), resource versions, watches that replay from
//! a version, a kubelet that makes a new pod Running and Ready after a delay, and the knobs a
//! test needs (end a pod, delete one behind Nubo's back, cut the watches, hold pods Pending,
//! demand a bearer token). Only what Nubo calls is served; the rest answers 404.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::mpsc;

type Key = (String, String, String);

struct Watcher {
    kind: String,
    namespace: String,
    selector: Vec<(String, String)>,
    tx: mpsc::UnboundedSender<Vec<u8>>,
}

struct Inner {
    objects: BTreeMap<Key, Value>,
    version: u64,
    log: Vec<(u64, String, &'static str, Value)>,
    watchers: Vec<Watcher>,
    next_ip: u32,
    ready_after: Duration,
    hold: bool,
    token: Option<String>,
    requests: Vec<String>,
}

/// The fake API server (stopped when dropped).
pub struct FakeApiServer {
    inner: Arc<Mutex<Inner>>,
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    (
        code,
        axum::Json(json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "reason": reason, "message": message, "code": code.as_u16()})),
    )
        .into_response()
}

fn selector(q: &HashMap<String, String>) -> Vec<(String, String)> {
    q.get("labelSelector")
        .map(|s| {
            s.split(',')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((
                        k.trim().to_owned(),
                        v.trim().trim_start_matches('=').to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn matches(obj: &Value, sel: &[(String, String)]) -> bool {
    sel.iter()
        .all(|(k, v)| obj["metadata"]["labels"][k].as_str() == Some(v.as_str()))
}

fn kind_of(plural: &str) -> Option<&'static str> {
    match plural {
        "pods" => Some("Pod"),
        "services" => Some("Service"),
        _ => None,
    }
}

impl Inner {
    /// Records a change: a new resource version, the event kept for watches from older ones
    /// and sent to the watches open now.
    fn changed(&mut self, plural: &str, ty: &'static str, obj: &mut Value) {
        self.version += 1;
        obj["metadata"]["resourceVersion"] = json!(self.version.to_string());
        self.log
            .push((self.version, plural.to_owned(), ty, obj.clone()));
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let line = format!("{}\n", json!({"type": ty, "object": obj})).into_bytes();
        self.watchers.retain(|w| {
            if w.kind != plural || w.namespace != ns || !matches(obj, &w.selector) {
                return !w.tx.is_closed();
            }
            w.tx.send(line.clone()).is_ok()
        });
    }
}

type Shared = Arc<Mutex<Inner>>;

/// The server's state for a request, which it records (`request`), when its bearer token is
/// the one the server wants; else the answer (401).
fn admit<'a>(
    s: &'a Shared,
    headers: &HeaderMap,
    request: String,
) -> Result<std::sync::MutexGuard<'a, Inner>, Box<Response>> {
    let Ok(mut inner) = s.lock() else {
        return Err(Box::new(StatusCode::INTERNAL_SERVER_ERROR.into_response()));
    };
    inner.requests.push(request);
    if !authorized(&inner, headers) {
        return Err(Box::new(status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized".into(),
        )));
    }
    Ok(inner)
}

fn authorized(inner: &Inner, headers: &HeaderMap) -> bool {
    match &inner.token {
        None => true,
        Some(t) => headers
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .is_some_and(|h| h == format!("Bearer {t}")),
    }
}

async fn collection(
    State(s): State<Shared>,
    Path((ns, plural)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let Some(kind) = kind_of(&plural) else {
        return status(StatusCode::NOT_FOUND, "NotFound", format!("no {plural}"));
    };
    let mut inner = match admit(&s, &headers, format!("GET {plural}")) {
        Ok(i) => i,
        Err(r) => return *r,
    };
    let sel = selector(&q);
    if q.get("watch").is_some_and(|w| w == "1" || w == "true") {
        let from: u64 = q
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let (tx, rx) = mpsc::unbounded_channel::<Vec<u8>>();
        for (v, k, ty, obj) in &inner.log {
            if *v > from
                && *k == plural
                && obj["metadata"]["namespace"] == ns.as_str()
                && matches(obj, &sel)
            {
                let _ = tx.send(format!("{}\n", json!({"type": ty, "object": obj})).into_bytes());
            }
        }
        inner.watchers.push(Watcher {
            kind: plural,
            namespace: ns,
            selector: sel,
            tx,
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
        });
        return (
            [("content-type", "application/json")],
            Body::from_stream(stream),
        )
            .into_response();
    }
    let items: Vec<Value> = inner
        .objects
        .iter()
        .filter(|((k, n, _), o)| *k == plural && *n == ns && matches(o, &sel))
        .map(|(_, o)| o.clone())
        .collect();
    axum::Json(json!({"kind": format!("{kind}List"), "apiVersion": "v1",
        "metadata": {"resourceVersion": inner.version.to_string()}, "items": items}))
    .into_response()
}

async fn create(
    State(s): State<Shared>,
    Path((ns, plural)): Path<(String, String)>,
    headers: HeaderMap,
    axum::Json(mut obj): axum::Json<Value>,
) -> Response {
    if kind_of(&plural).is_none() {
        return status(StatusCode::NOT_FOUND, "NotFound", format!("no {plural}"));
    }
    let mut inner = match admit(&s, &headers, format!("POST {plural}")) {
        Ok(i) => i,
        Err(r) => return *r,
    };
    let Some(name) = obj["metadata"]["name"].as_str().map(str::to_owned) else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.name: Required value".into(),
        );
    };
    let key = (plural.clone(), ns.clone(), name.clone());
    if inner.objects.contains_key(&key) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{plural} \"{name}\" already exists"),
        );
    }
    obj["metadata"]["namespace"] = json!(ns);
    obj["metadata"]["uid"] = json!(format!("uid-{}", inner.version + 1));
    if plural == "services" {
        let taken: Vec<i64> = inner
            .objects
            .iter()
            .filter(|((k, _, _), _)| k == "services")
            .flat_map(|(_, o)| {
                o["spec"]["ports"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|p| p["nodePort"].as_i64())
            })
            .collect();
        let node_port = obj["spec"]["type"] == "NodePort";
        let mut ports = obj["spec"]["ports"].as_array().cloned().unwrap_or_default();
        for p in &mut ports {
            if let Some(n) = p["nodePort"].as_i64() {
                if taken.contains(&n) {
                    return status(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        format!(
                            "spec.ports[0].nodePort: Invalid value: {n}: provided port is already allocated"
                        ),
                    );
                }
            } else if node_port {
                let free = (30000..=32767).find(|n| !taken.contains(n)).unwrap_or(0);
                p["nodePort"] = json!(free);
            }
        }
        obj["spec"]["ports"] = json!(ports);
        obj["spec"]["clusterIP"] = json!(format!("10.96.0.{}", inner.version % 250 + 1));
    } else {
        obj["status"] = json!({"phase": "Pending"});
    }
    inner.changed(&plural, "ADDED", &mut obj);
    inner.objects.insert(key, obj.clone());
    if plural == "pods" && !inner.hold {
        // The kubelet: Running and Ready after a while.
        let after = inner.ready_after;
        let shared = s.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let Ok(mut inner) = shared.lock() else { return };
            inner.next_ip += 1;
            let ip = format!("10.244.0.{}", inner.next_ip % 250 + 1);
            let key = ("pods".to_owned(), ns, name);
            let Some(mut pod) = inner.objects.get(&key).cloned() else {
                return;
            };
            if pod["status"]["phase"] != "Pending" {
                return;
            }
            pod["status"] = json!({"phase": "Running", "podIP": ip,
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "workload", "ready": true, "restartCount": 0,
                    "image": pod["spec"]["containers"][0]["image"], "imageID": "",
                    "state": {"running": {}}}]});
            inner.changed("pods", "MODIFIED", &mut pod);
            inner.objects.insert(key, pod);
        });
    }
    (StatusCode::CREATED, axum::Json(obj)).into_response()
}

async fn one(
    State(s): State<Shared>,
    Path((ns, plural, name)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let inner = match admit(&s, &headers, format!("GET {plural}/{name}")) {
        Ok(i) => i,
        Err(r) => return *r,
    };
    match inner.objects.get(&(plural.clone(), ns, name.clone())) {
        Some(o) => axum::Json(o.clone()).into_response(),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{plural} \"{name}\" not found"),
        ),
    }
}

async fn delete(
    State(s): State<Shared>,
    Path((ns, plural, name)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut inner = match admit(&s, &headers, format!("DELETE {plural}/{name}")) {
        Ok(i) => i,
        Err(r) => return *r,
    };
    match inner.objects.remove(&(plural.clone(), ns, name.clone())) {
        Some(mut o) => {
            inner.changed(&plural, "DELETED", &mut o);
            axum::Json(o).into_response()
        }
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{plural} \"{name}\" not found"),
        ),
    }
}

impl FakeApiServer {
    /// Starts one on a loopback port the OS chooses.
    pub async fn start() -> FakeApiServer {
        let inner = Arc::new(Mutex::new(Inner {
            objects: BTreeMap::new(),
            version: 1,
            log: Vec::new(),
            watchers: Vec::new(),
            next_ip: 0,
            ready_after: Duration::from_millis(100),
            hold: false,
            token: None,
            requests: Vec::new(),
        }));
        let app = Router::new()
            .route(
                "/api/v1/namespaces/{ns}/{plural}",
                get(collection).post(create),
            )
            .route(
                "/api/v1/namespaces/{ns}/{plural}/{name}",
                get(one).delete(delete),
            )
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeApiServer { inner, url, task }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut inner = self.inner.lock().expect("the fake's state");
        f(&mut inner)
    }

    /// Its URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Demands this bearer token from now on.
    pub fn require_token(&self, token: &str) {
        self.with(|i| i.token = Some(token.to_owned()));
    }

    /// New pods stay Pending (`true`), or the kubelet makes them Ready after `ready_after`.
    pub fn hold_pods(&self, hold: bool) {
        self.with(|i| i.hold = hold);
    }

    /// The objects of a kind (`pods`, `services`) in every namespace.
    pub fn objects(&self, plural: &str) -> Vec<Value> {
        self.with(|i| {
            i.objects
                .iter()
                .filter(|((k, _, _), _)| k == plural)
                .map(|(_, o)| o.clone())
                .collect()
        })
    }

    /// The calls made so far (`POST pods`, `DELETE pods/NAME`, …).
    pub fn requests(&self) -> Vec<String> {
        self.with(|i| i.requests.clone())
    }

    /// A pod's container ends with `code` (the pod Failed, as with `restartPolicy: Never`).
    pub fn end_pod(&self, namespace: &str, name: &str, code: i32) {
        self.with(|i| {
            let key = ("pods".to_owned(), namespace.to_owned(), name.to_owned());
            if let Some(mut pod) = i.objects.get(&key).cloned() {
                pod["status"]["phase"] = json!("Failed");
                pod["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
                pod["status"]["containerStatuses"] = json!([{"name": "workload", "ready": false,
                    "restartCount": 0, "image": "", "imageID": "",
                    "state": {"terminated": {"exitCode": code, "reason": "Error"}}}]);
                i.changed("pods", "MODIFIED", &mut pod);
                i.objects.insert(key, pod);
            }
        });
    }

    /// Deletes a pod behind Nubo's back (`kubectl delete pod`).
    pub fn delete_pod(&self, namespace: &str, name: &str) {
        self.with(|i| {
            if let Some(mut o) =
                i.objects
                    .remove(&("pods".to_owned(), namespace.to_owned(), name.to_owned()))
            {
                i.changed("pods", "DELETED", &mut o);
            }
        });
    }

    /// Cuts every open watch (as an API server's restart or a lost connection does).
    pub fn cut_watches(&self) {
        self.with(|i| i.watchers.clear());
    }
}
