//! `ravel`: the command-line client of a Ravel system, talking to the
//! admin's HTTP API. The binary's `main` is [`main`] (`src/bin/ravel.rs`);
//! the testkit's `ravel-test-cli` calls it too, so tests run exactly this
//! code as a real process.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ravel_runtime::tls::Token;
use reqwest::Method;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "ravel",
    version,
    about = "Read and write a Ravel store; show its clusters"
)]
struct Cli {
    /// The admin's HTTP address.
    #[arg(
        long,
        env = "RAVEL_ADMIN_HTTP",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    admin: String,
    /// The CA certificate (PEM) of an admin that serves HTTPS: the admin
    /// is then dialled over https:// unless --admin names a scheme.
    #[arg(long, env = "RAVEL_CA", value_name = "FILE", global = true)]
    ca: Option<std::path::PathBuf>,
    /// A file holding the bearer token the admin requires (its
    /// auth_token_file).
    #[arg(long, env = "RAVEL_TOKEN_FILE", value_name = "FILE", global = true)]
    token_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Store VALUE under KEY. VALUE is JSON if it parses as JSON
    /// (42, true, {"a":1}, "quoted"), otherwise a string.
    Put { key: String, value: String },
    /// Print the value of KEY as JSON.
    Get { key: String },
    /// Delete KEY.
    Delete { key: String },
    /// Clusters, leaders, members, replication lag and relocation progress.
    Status {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        /// Print the status again every --interval-secs, with the
        /// relocation's rate and ETA, until interrupted.
        #[arg(long, conflicts_with = "json")]
        watch: bool,
        #[arg(long, default_value_t = 2, requires = "watch")]
        interval_secs: u64,
    },
    /// Write every key of every cluster to FILE: one consistent cut per
    /// cluster (its leader's read index), checksummed, with the admin's
    /// registry. Refused while keys move between clusters.
    Backup {
        #[arg(long, value_name = "FILE")]
        out: std::path::PathBuf,
    },
    /// Write every key of a backup FILE into this system (routed by its
    /// own clusters), after checking the whole file.
    Restore { file: std::path::PathBuf },
    /// Replicas: `ravel member remove NODE_ID`.
    Member {
        #[command(subcommand)]
        cmd: MemberCmd,
    },
}

#[derive(Subcommand)]
enum MemberCmd {
    /// Every replica: cluster, role, address, reachability and lag.
    List,
    /// Take replica NODE_ID out of its cluster's Raft group and the
    /// registry, for a host that is gone with its disk (a live replica
    /// leaves with `ravel-node kill`). Waits, up to --timeout-secs, while
    /// the last replica's cluster moves its keys away.
    Remove {
        node_id: String,
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ravel: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(cli))
}

/// An answer of the admin: status and JSON body (`Null` if empty).
pub(crate) struct JsonResponse {
    pub(crate) status: u16,
    pub(crate) body: Value,
}

impl JsonResponse {
    /// The admin's reason for a refusal, with the status.
    pub(crate) fn error(&self) -> String {
        let msg = (self.body.get("error").and_then(Value::as_str)).unwrap_or("unexpected response");
        format!("{msg} ({})", self.status)
    }
}

/// The admin's HTTP API as the CLI reaches it: address, TLS, token.
pub(crate) struct Admin {
    /// `http://host:port` or `https://host:port`.
    pub(crate) base: String,
    client: reqwest::Client,
    /// The `Authorization` header's value.
    bearer: Option<String>,
}

impl Admin {
    fn new(cli: &Cli) -> Result<Admin, String> {
        let mut client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .tcp_nodelay(true);
        if let Some(ca) = &cli.ca {
            let pem =
                std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("{}: not PEM certificates: {e}", ca.display()))?;
            if certs.is_empty() {
                return Err(format!("{}: holds no PEM certificate", ca.display()));
            }
            client = client.tls_built_in_root_certs(false);
            for cert in certs {
                client = client.add_root_certificate(cert);
            }
        }
        let bearer = match &cli.token_file {
            None => None,
            Some(f) => Some(Token::from_file(f).map_err(|e| e.to_string())?.bearer()),
        };
        let scheme = if cli.ca.is_some() { "https" } else { "http" };
        Ok(Admin {
            base: if cli.admin.contains("://") {
                cli.admin.clone()
            } else {
                format!("{scheme}://{}", cli.admin)
            },
            client: client.build().map_err(|e| e.to_string())?,
            bearer,
        })
    }

    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.client.request(method, format!("{}{path}", self.base));
        match &self.bearer {
            Some(b) => req.header(reqwest::header::AUTHORIZATION, b),
            None => req,
        }
    }
}

async fn call(
    admin: &Admin,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<JsonResponse, String> {
    let mut req = admin.request(method, path);
    if let Some(b) = body {
        req = req.json(&b);
    }
    answer(admin, req).await
}

/// Sends `req` to the admin and reads its JSON answer.
pub(crate) async fn answer(
    admin: &Admin,
    req: reqwest::RequestBuilder,
) -> Result<JsonResponse, String> {
    let resp = req
        .send()
        .await
        .map_err(|e| format!("cannot reach the admin at {}: {e}", admin.base))?;
    read_answer(resp).await
}

/// The admin's JSON answer in `resp`.
pub(crate) async fn read_answer(resp: reqwest::Response) -> Result<JsonResponse, String> {
    let status = resp.status().as_u16();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| format!("reading the admin's answer: {e}"))?;
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| format!("malformed answer from the admin: {e}"))?
    };
    Ok(JsonResponse { status, body })
}

fn fail(r: &JsonResponse) -> ExitCode {
    eprintln!("ravel: {}", r.error());
    // 404 is an answer, not a failure of the tool: exit 1 like grep.
    if r.status == 404 {
        ExitCode::from(1)
    } else {
        ExitCode::from(2)
    }
}

async fn run(cli: Cli) -> ExitCode {
    let admin = match Admin::new(&cli) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ravel: {e}");
            return ExitCode::from(2);
        }
    };
    let done = match &cli.cmd {
        Cmd::Backup { out } => Some(crate::backup_cli::backup(&admin, out).await),
        Cmd::Restore { file } => Some(crate::backup_cli::restore(&admin, file).await),
        _ => None,
    };
    if let Some(done) = done {
        return match done {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ravel: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Cmd::Status {
        watch: true,
        interval_secs,
        ..
    } = &cli.cmd
    {
        return watch_status(&admin, Duration::from_secs((*interval_secs).max(1))).await;
    }
    let result = match &cli.cmd {
        Cmd::Put { key, value } => {
            let v: Value =
                serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.clone()));
            call(
                &admin,
                Method::POST,
                "/put",
                Some(json!({"key": key, "val": v})),
            )
            .await
        }
        Cmd::Get { key } => call(&admin, Method::POST, "/get", Some(json!({"key": key}))).await,
        Cmd::Delete { key } => {
            call(&admin, Method::POST, "/delete", Some(json!({"key": key}))).await
        }
        Cmd::Status { .. }
        | Cmd::Member {
            cmd: MemberCmd::List,
        } => call(&admin, Method::GET, "/v1/cluster", None).await,
        Cmd::Member {
            cmd:
                MemberCmd::Remove {
                    node_id,
                    timeout_secs,
                },
        } => remove_member(&admin, node_id, Duration::from_secs(*timeout_secs)).await,
        Cmd::Backup { .. } | Cmd::Restore { .. } => unreachable!("run above"),
    };
    let r = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ravel: {e}");
            return ExitCode::from(2);
        }
    };
    if r.status != 200 {
        return fail(&r);
    }
    match cli.cmd {
        Cmd::Put { .. } | Cmd::Delete { .. } => println!("ok"),
        Cmd::Member {
            cmd: MemberCmd::List,
        } => print_members(&r.body),
        Cmd::Member { .. } => println!(
            "removed {} from {}",
            r.body["removed"].as_str().unwrap_or("?"),
            r.body["cluster_id"].as_str().unwrap_or("?")
        ),
        Cmd::Get { .. } => println!("{}", r.body["val"]),
        Cmd::Status { json: true, .. } => println!(
            "{}",
            serde_json::to_string_pretty(&r.body).unwrap_or_default()
        ),
        Cmd::Status { json: false, .. } => print_status(&r.body),
        Cmd::Backup { .. } | Cmd::Restore { .. } => unreachable!("run above"),
    }
    ExitCode::SUCCESS
}

/// `DELETE /v1/members/{id}`, again while the admin answers 503 (the
/// cluster moves its keys away, or has no leader yet), until `timeout`.
async fn remove_member(
    admin: &Admin,
    node_id: &str,
    timeout: Duration,
) -> Result<JsonResponse, String> {
    let path = format!("/v1/members/{node_id}");
    again_while_unavailable(timeout, || call(admin, Method::DELETE, &path, None)).await
}

/// Runs `attempt` again, a second apart, while the admin answers 503 (no
/// leader for a moment, keys moving), until `timeout`; the last answer.
/// Only for requests whose repetition leaves the same state.
pub(crate) async fn again_while_unavailable<F, Fut>(
    timeout: Duration,
    mut attempt: F,
) -> Result<JsonResponse, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<JsonResponse, String>>,
{
    let until = tokio::time::Instant::now() + timeout;
    loop {
        let r = attempt().await?;
        if r.status != 503 || tokio::time::Instant::now() >= until {
            return Ok(r);
        }
        eprintln!("ravel: {}; retrying", r.error());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `status --watch`: the status every `interval`, with the relocation's
/// rate and ETA from the progress between two polls.
async fn watch_status(admin: &Admin, interval: Duration) -> ExitCode {
    // (relocation id, when, keys moved, partitions pending)
    let mut last: Option<(u64, tokio::time::Instant, u64, u64)> = None;
    loop {
        match call(admin, Method::GET, "/v1/cluster", None).await {
            Err(e) => eprintln!("ravel: {e}"),
            Ok(r) if r.status != 200 => {
                fail(&r);
            }
            Ok(r) => {
                println!("--- {}", poll_stamp());
                print_status(&r.body);
                let now = tokio::time::Instant::now();
                let rel = r.body["relocation"].as_object().map(|x| {
                    (
                        x["id"].as_u64().unwrap_or(0),
                        x["moved_keys"].as_u64().unwrap_or(0),
                        x["partitions_pending"].as_u64().unwrap_or(0),
                    )
                });
                match (rel, last) {
                    (Some((id, keys, pending)), Some((lid, at, lkeys, lpending))) if id == lid => {
                        let secs = now.duration_since(at).as_secs_f64().max(0.001);
                        println!(
                            "{}",
                            progress_line(
                                keys - lkeys.min(keys),
                                lpending.saturating_sub(pending),
                                pending,
                                secs
                            )
                        );
                    }
                    (Some(_), _) => println!("rate: measuring (next poll)"),
                    (None, _) => {}
                }
                last = rel.map(|(id, keys, pending)| (id, now, keys, pending));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        }
    }
}

/// "rate: K keys/s, P partitions/s, ETA" from the progress over `secs`.
fn progress_line(keys: u64, partitions_done: u64, pending: u64, secs: f64) -> String {
    let eta = if pending == 0 {
        "ETA: finishing".to_string()
    } else if partitions_done == 0 {
        "ETA: unknown (no partition finished since the last poll)".to_string()
    } else {
        let eta = pending as f64 / (partitions_done as f64 / secs);
        format!("ETA: ~{:.0} s", eta.ceil())
    };
    format!(
        "rate: {:.0} keys/s, {:.2} partitions/s; {eta}",
        keys as f64 / secs,
        partitions_done as f64 / secs
    )
}

fn poll_stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("unix time {secs}")
}

/// `member list`: one line per replica.
fn print_members(s: &Value) {
    println!(
        "{:<20}  {:<20}  {:<8}  {:<21}  {:<11}  lag",
        "node", "cluster", "role", "address", "reachable"
    );
    for c in s["clusters"].as_array().into_iter().flatten() {
        let leader = c["leader"]["node_id"].as_str().unwrap_or("");
        for m in c["members"].as_array().into_iter().flatten() {
            let id = m["node_id"].as_str().unwrap_or("?");
            println!(
                "{:<20}  {:<20}  {:<8}  {:<21}  {:<11}  {}",
                id,
                c["cluster_id"].as_str().unwrap_or("?"),
                if id == leader { "leader" } else { "replica" },
                m["grpc_address"].as_str().unwrap_or("?"),
                m["reachable"]
                    .as_bool()
                    .map_or("?", |r| if r { "yes" } else { "no" }),
                m["lag"].as_u64().map_or("?".to_string(), |l| l.to_string()),
            );
        }
    }
}

fn print_status(s: &Value) {
    println!(
        "ring: {} partitions over {} cluster(s), load factor {}",
        s["partitions"],
        s["ring"].as_array().map_or(0, Vec::len),
        s["load_factor"]
    );
    match s["relocation"].as_object() {
        Some(r) => println!(
            "relocation #{}: {} of {} partitions pending, {} keys moved",
            r["id"], r["partitions_pending"], r["partitions_total"], r["moved_keys"]
        ),
        None => println!(
            "relocation: none in progress ({} done, {} keys moved in all)",
            s["relocations_done"], s["moved_keys_total"]
        ),
    }
    if let Some(e) = s["relocation_last_error"].as_object() {
        println!(
            "last relocation error (unix time {}): {}",
            e["at_unix"],
            e["message"].as_str().unwrap_or("?")
        );
    }
    for c in s["clusters"].as_array().into_iter().flatten() {
        let leader = c["leader"]["node_id"].as_str().unwrap_or("none");
        let state = if c["draining"] == true {
            "draining"
        } else if c["ready"] == true {
            "serving"
        } else {
            "starting"
        };
        println!(
            "\n{}  {}  partitions={}  leader={}",
            c["cluster_id"].as_str().unwrap_or("?"),
            state,
            c["partitions"],
            leader
        );
        for m in c["members"].as_array().into_iter().flatten() {
            let id = m["node_id"].as_str().unwrap_or("?");
            let role = if id == leader { "leader " } else { "replica" };
            let lag = match (m["reachable"].as_bool(), m["lag"].as_u64()) {
                (Some(false), _) => "unreachable".to_string(),
                (_, Some(l)) => format!("lag={l}"),
                _ => "lag=?".to_string(),
            };
            println!(
                "  {role} {id:>20}  {:<21}  applied={}  {lag}",
                m["grpc_address"].as_str().unwrap_or("?"),
                m["last_applied_index"]
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::progress_line;

    #[test]
    fn the_watch_line_gives_rate_and_eta() {
        assert_eq!(
            progress_line(2_000, 4, 10, 2.0),
            "rate: 1000 keys/s, 2.00 partitions/s; ETA: ~5 s"
        );
        assert!(progress_line(10, 0, 3, 2.0).contains("ETA: unknown"));
        assert!(progress_line(10, 3, 0, 2.0).contains("ETA: finishing"));
    }
}
