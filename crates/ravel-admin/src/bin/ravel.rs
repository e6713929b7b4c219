//! `ravel`: the command-line client of a Ravel system, talking to the
//! admin's HTTP API.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
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
    },
    /// Replicas: `ravel member remove NODE_ID`.
    Member {
        #[command(subcommand)]
        cmd: MemberCmd,
    },
}

#[derive(Subcommand)]
enum MemberCmd {
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

fn main() -> ExitCode {
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
struct JsonResponse {
    status: u16,
    body: Value,
}

async fn call(
    admin: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<JsonResponse, String> {
    let base = if admin.contains("://") {
        admin.to_string()
    } else {
        format!("http://{admin}")
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())?;
    let mut req = client.request(method, format!("{base}{path}"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("cannot reach the admin at {admin}: {e}"))?;
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
    let msg = r
        .body
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("unexpected response");
    eprintln!("ravel: {} ({})", msg, r.status);
    // 404 is an answer, not a failure of the tool: exit 1 like grep.
    if r.status == 404 {
        ExitCode::from(1)
    } else {
        ExitCode::from(2)
    }
}

async fn run(cli: Cli) -> ExitCode {
    let result = match &cli.cmd {
        Cmd::Put { key, value } => {
            let v: Value =
                serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.clone()));
            call(
                &cli.admin,
                Method::POST,
                "/put",
                Some(json!({"key": key, "val": v})),
            )
            .await
        }
        Cmd::Get { key } => call(&cli.admin, Method::POST, "/get", Some(json!({"key": key}))).await,
        Cmd::Delete { key } => {
            call(
                &cli.admin,
                Method::POST,
                "/delete",
                Some(json!({"key": key})),
            )
            .await
        }
        Cmd::Status { .. } => call(&cli.admin, Method::GET, "/v1/cluster", None).await,
        Cmd::Member {
            cmd:
                MemberCmd::Remove {
                    node_id,
                    timeout_secs,
                },
        } => remove_member(&cli.admin, node_id, Duration::from_secs(*timeout_secs)).await,
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
        Cmd::Member { .. } => println!(
            "removed {} from {}",
            r.body["removed"].as_str().unwrap_or("?"),
            r.body["cluster_id"].as_str().unwrap_or("?")
        ),
        Cmd::Get { .. } => println!("{}", r.body["val"]),
        Cmd::Status { json: true } => println!(
            "{}",
            serde_json::to_string_pretty(&r.body).unwrap_or_default()
        ),
        Cmd::Status { json: false } => print_status(&r.body),
    }
    ExitCode::SUCCESS
}

/// `DELETE /v1/members/{id}`, again while the admin answers 503 (the
/// cluster moves its keys away, or has no leader yet), until `timeout`.
async fn remove_member(
    admin: &str,
    node_id: &str,
    timeout: Duration,
) -> Result<JsonResponse, String> {
    let until = tokio::time::Instant::now() + timeout;
    loop {
        let r = call(
            admin,
            Method::DELETE,
            &format!("/v1/members/{node_id}"),
            None,
        )
        .await?;
        if r.status != 503 || tokio::time::Instant::now() >= until {
            return Ok(r);
        }
        if let Some(m) = r.body.get("error").and_then(Value::as_str) {
            eprintln!("ravel: {m}; retrying");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
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
