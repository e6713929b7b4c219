//! The user-facing HTTP API.
//!
//! Compatible endpoints (wire-protocol.md §4), all `POST` with JSON bodies:
//! `/put` `{"key", "val"|"value"}`, `/get` `{"key"}`, `/delete` `{"key"}`.
//! Clean endpoints: `PUT`/`GET`/`DELETE /v1/kv/{key}` (the body of a `PUT`
//! is the JSON value) and `GET /v1/cluster`; `GET /healthz` (process up) and
//! `GET /readyz` (a cluster serves keys) for orchestrators. Operations:
//! `DELETE /v1/members/{node_id}` takes a replica out of its cluster's Raft
//! group and the registry (a host gone with its disk).
//!
//! Values keep their JSON type: the admin stores the JSON text itself.
//! Errors are `{"error": "..."}` with 400 (bad JSON, missing key), 404
//! (missing), 413 (too large), 503 (no cluster or no leader in time).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router as HttpRouter};
use serde_json::{json, Value};

use crate::kv::KvError;
use crate::router::Router;
use crate::state::AdminState;

/// An error answer: status and the message of `{"error": ...}`.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<KvError> for ApiError {
    fn from(e: KvError) -> Self {
        match e {
            KvError::Unavailable(m) => ApiError(StatusCode::SERVICE_UNAVAILABLE, m),
            KvError::Invalid(m) => ApiError(StatusCode::BAD_REQUEST, m),
            KvError::TooLarge(m) => ApiError(StatusCode::PAYLOAD_TOO_LARGE, m),
            KvError::Internal(m) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, m),
        }
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

/// The HTTP API over the admin's shared state.
pub fn router(state: Arc<AdminState>) -> HttpRouter {
    // Room for the largest value as JSON plus the envelope.
    let body_limit = state.limits.max_value_bytes * 2 + state.limits.max_key_bytes * 2 + 4096;
    HttpRouter::new()
        .route("/put", post(put_compat))
        .route("/get", post(get_compat))
        .route("/delete", post(delete_compat))
        .route("/v1/kv/{key}", get(get_v1).put(put_v1).delete(delete_v1))
        .route("/v1/cluster", get(cluster))
        .route(
            "/v1/members/{node_id}",
            axum::routing::delete(remove_member),
        )
        .route("/v1/backup", get(backup))
        .route(
            "/v1/restore",
            post(restore).layer(DefaultBodyLimit::max(
                crate::backup::MAX_FRAME as usize + 16,
            )),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// `GET /v1/backup`: the backup file, streamed (409 while keys move).
async fn backup(State(state): State<Arc<AdminState>>) -> Response {
    if let Some(why) = crate::backup::refuse_backup(&state) {
        return ApiError(StatusCode::CONFLICT, why).into_response();
    }
    (
        [("content-type", "application/octet-stream")],
        crate::backup::backup_body(state),
    )
        .into_response()
}

/// `POST /v1/restore`: one entries frame of a backup file, written.
async fn restore(
    State(state): State<Arc<AdminState>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    match crate::backup::restore_frame(&state, &body).await {
        Ok(n) => Ok(Json(json!({ "restored": n }))),
        Err(crate::backup::RestoreError::Bad(m)) => Err(bad(m)),
        Err(crate::backup::RestoreError::Write(e)) => Err(e.into()),
    }
}

/// With a token configured, every route but the probes and `/metrics`
/// needs `Authorization: Bearer <token>`: 401 otherwise.
async fn require_token(
    State(state): State<Arc<AdminState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let open = matches!(request.uri().path(), "/healthz" | "/readyz" | "/metrics");
    if let (Some(token), false) = (&state.token, open) {
        let given = request.headers().get(axum::http::header::AUTHORIZATION);
        if !token.admits(given.map(|v| v.as_bytes())) {
            let mut answer = ApiError(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (Authorization: Bearer ...)".into(),
            )
            .into_response();
            answer.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            return answer;
        }
    }
    next.run(request).await
}

fn parse_body(body: &Bytes) -> Result<serde_json::Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad("the body must be a JSON object")),
        Err(e) => Err(bad(format!("invalid JSON: {e}"))),
    }
}

fn key_of(body: &serde_json::Map<String, Value>) -> Result<String, ApiError> {
    match body.get("key") {
        Some(Value::String(k)) if !k.is_empty() => Ok(k.clone()),
        Some(Value::String(_)) => Err(bad("\"key\" must not be empty")),
        Some(_) => Err(bad("\"key\" must be a string")),
        None => Err(bad("missing \"key\"")),
    }
}

/// The HTTP API's view of the store: JSON values, size checks.
impl AdminState {
    fn check_key(&self, key: &str) -> Result<(), ApiError> {
        if key.len() > self.limits.max_key_bytes {
            return Err(ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "key is {} bytes; the limit is {}",
                    key.len(),
                    self.limits.max_key_bytes
                ),
            ));
        }
        Ok(())
    }

    async fn put_json(&self, key: &str, value: &Value) -> Result<(), ApiError> {
        self.check_key(key)?;
        let bytes = serde_json::to_vec(value).map_err(|e| bad(e.to_string()))?;
        if bytes.len() > self.limits.max_value_bytes {
            return Err(ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "value is {} bytes; the limit is {}",
                    bytes.len(),
                    self.limits.max_value_bytes
                ),
            ));
        }
        self.put(key.as_bytes(), &bytes).await?;
        Ok(())
    }

    async fn get_json(&self, key: &str) -> Result<Value, ApiError> {
        self.check_key(key)?;
        match self.get(key.as_bytes()).await? {
            None => Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("key {key:?} not found"),
            )),
            // Written by another client as raw bytes: give it back as text.
            Some(bytes) => Ok(serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))),
        }
    }

    async fn delete_json(&self, key: &str) -> Result<(), ApiError> {
        self.check_key(key)?;
        self.delete(key.as_bytes()).await?;
        Ok(())
    }
}

fn ok() -> Json<Value> {
    Json(json!({ "msg": "ok" }))
}

async fn put_compat(
    State(s): State<Arc<AdminState>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b = parse_body(&body)?;
    let key = key_of(&b)?;
    // Existing clients send "value" as well as "val".
    let value = b
        .get("val")
        .or_else(|| b.get("value"))
        .ok_or_else(|| bad("missing \"val\""))?;
    s.put_json(&key, value).await?;
    Ok(ok())
}

async fn get_compat(
    State(s): State<Arc<AdminState>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let key = key_of(&parse_body(&body)?)?;
    let val = s.get_json(&key).await?;
    Ok(Json(json!({ "key": key, "val": val })))
}

async fn delete_compat(
    State(s): State<Arc<AdminState>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let key = key_of(&parse_body(&body)?)?;
    s.delete_json(&key).await?;
    Ok(ok())
}

async fn put_v1(
    State(s): State<Arc<AdminState>>,
    Path(key): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let value: Value =
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid JSON value: {e}")))?;
    s.put_json(&key, &value).await?;
    Ok(ok())
}

async fn get_v1(
    State(s): State<Arc<AdminState>>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let val = s.get_json(&key).await?;
    Ok(Json(json!({ "key": key, "val": val })))
}

async fn delete_v1(
    State(s): State<Arc<AdminState>>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    s.delete_json(&key).await?;
    Ok(ok())
}

/// `DELETE /v1/members/{node_id}`: 200 once the replica is out of Raft
/// and the registry; 404 if it is not registered; 503 while its cluster
/// moves its keys away (it was the last voter: call again) or when its
/// cluster cannot be reached; 409 for the last voter of the only cluster.
async fn remove_member(
    State(s): State<Arc<AdminState>>,
    Path(node_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    use crate::departure::Departure;
    let status_err = |st: tonic::Status| {
        let code = match st.code() {
            tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
            tonic::Code::FailedPrecondition => StatusCode::CONFLICT,
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, st.message().to_string())
    };
    match s.remove_member(&node_id).await.map_err(status_err)? {
        Departure::Removed { cluster } => Ok(Json(
            json!({ "removed": node_id, "cluster_id": cluster }),
        )),
        Departure::Unknown => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no replica {node_id} is registered"),
        )),
        Departure::Draining { cluster } | Departure::NeedVoters { cluster } => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{node_id} is the last voter of {cluster}, which is moving its keys to the other clusters; call again"),
        )),
        Departure::OnlyCluster { cluster } => Err(ApiError(
            StatusCode::CONFLICT,
            format!("{node_id} is the last voter of {cluster}, the only cluster serving keys; it cannot go without losing them"),
        )),
    }
}

/// Prometheus metrics (text format).
async fn metrics(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(&s.registry),
    )
}

/// The admin process is up.
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready to serve keys: at least one cluster is on the ring.
async fn readyz(State(s): State<Arc<AdminState>>) -> Result<Json<Value>, ApiError> {
    let state = s.registry.snapshot();
    let ring = &state.ring;
    if ring.members.is_empty() {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "no cluster is serving yet".into(),
        ));
    }
    Ok(Json(
        json!({ "status": "ready", "clusters": ring.members.len(), "relocating": ring.relocation.is_some() }),
    ))
}

/// Each replica's own view (term, log, applied index), asked with a short
/// deadline; `None` for replicas that do not answer.
async fn replica_status(s: &AdminState, addr: &str) -> Option<ravel_proto::ext::StatusResponse> {
    let ch = s.router.pool().channel(addr).ok()?;
    let mut req = tonic::Request::new(ravel_proto::ext::StatusRequest {});
    req.set_timeout(std::time::Duration::from_millis(500));
    let mut client = Router::ext(ch);
    match tokio::time::timeout(std::time::Duration::from_millis(600), client.status(req)).await {
        Ok(Ok(r)) => Some(r.into_inner()),
        _ => None,
    }
}

async fn cluster(State(s): State<Arc<AdminState>>) -> Json<Value> {
    let state = s.registry.snapshot();
    let addrs: Vec<String> = state
        .clusters
        .values()
        .flat_map(|c| c.members.values().map(|m| m.grpc_address.clone()))
        .collect();
    let statuses: std::collections::HashMap<String, ravel_proto::ext::StatusResponse> =
        futures::future::join_all(
            addrs
                .iter()
                .map(|a| async { (a.clone(), replica_status(&s, a).await) }),
        )
        .await
        .into_iter()
        .filter_map(|(a, st)| st.map(|st| (a, st)))
        .collect();
    let ring = s.router.ring();
    let owners = ring.owners(&state.ring.members);
    let clusters: Vec<Value> = state
        .clusters
        .values()
        .map(|c| {
            let leader = c.leader_member().map(|(id, m)| json!({ "node_id": id, "grpc_address": m.grpc_address }));
            json!({
                "cluster_id": c.id,
                "ready": c.ready,
                "draining": state.ring.draining.contains(&c.id),
                "leader": leader,
                "members": c.members.iter().map(|(id, m)| {
                    let st = statuses.get(&m.grpc_address);
                    let leader_applied = c
                        .leader_member()
                        .and_then(|(_, lm)| statuses.get(&lm.grpc_address))
                        .map(|l| l.last_applied_index);
                    json!({
                        "node_id": id,
                        "grpc_address": m.grpc_address,
                        "raft_address": m.raft_address,
                        "reachable": st.is_some(),
                        "term": st.map(|x| x.term),
                        "last_log_index": st.map(|x| x.last_log_index),
                        "last_applied_index": st.map(|x| x.last_applied_index),
                        "lag": st.zip(leader_applied).map(|(x, l)| l.saturating_sub(x.last_applied_index)),
                    })
                }).collect::<Vec<_>>(),
                "partitions": owners.iter().filter(|o| **o == c.id).count(),
            })
        })
        .collect();
    let relocation = state.ring.relocation.as_ref().map(|r| {
        json!({
            "id": r.id,
            "from": r.from_members,
            "to": r.to_members,
            "partitions_total": r.total_partitions,
            "partitions_pending": r.pending.len(),
            "moved_keys": r.moved_keys,
        })
    });
    Json(json!({
        "partitions": ring.partitions,
        "load_factor": ring.load,
        "ring": state.ring.members,
        "clusters": clusters,
        "relocation": relocation,
        "relocations_done": state.ring.relocations_done,
        "moved_keys_total": state.ring.moved_keys_total,
        "relocation_last_error": s.metrics.last_relocation_error(),
    }))
}
