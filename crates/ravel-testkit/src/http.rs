//! A JSON client for the admin's HTTP API, as users call it.

use std::time::Duration;

/// An answer of the admin: status and JSON body (`Null` if empty).
#[derive(Debug, Clone)]
pub struct JsonResponse {
    pub status: u16,
    pub body: serde_json::Value,
}

/// Sends `method path` with an optional raw body to the admin at `addr`
/// (`host:port`).
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<JsonResponse, String> {
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())?;
    let mut req = client
        .request(method, format!("http://{addr}{path}"))
        .header("content-type", "application/json");
    if let Some(b) = body {
        req = req.body(b.to_vec());
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    let body = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).map_err(|e| format!("body is not JSON: {e}"))?
    };
    Ok(JsonResponse { status, body })
}
