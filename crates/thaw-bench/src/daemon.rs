//! Restores through a real daemon, for `thaw bench --compare`: a `thawd` served in
//! this process on a socket in the benchmark's home, a warm pool of running clones,
//! and each restore a `POST /v1/snapshots/{tag}/restore` on a fresh connection (as
//! curl or the CLI sends it), timed from before the connect to the whole answer.
//!
//! Where the time goes comes from three clocks: the client's (connect, whole exchange),
//! the daemon's `Server-Timing` header (admission, the restore itself, recording the
//! VM), and the clone's own breakdown (taking it from the pool, the agent's answer).

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use thaw::{Home, SnapshotTag};
use thaw_daemon::client::Client;

use crate::method::{ExternalMethod, ExternalRun, MethodReport, Sample};
use crate::sample::Stats;

/// The daemon method of the comparison.
#[derive(Debug, Clone, Default)]
pub struct DaemonRestores {
    /// Warm up the forwarded ports of pooled clones (`warm_ports` of the pool).
    pub warm_ports: bool,
    /// What "ready" means beyond the agent (the profile's, e.g. Redis answering `PING`
    /// for `--profile debian`). The daemon's answer means the agent answered; the rest
    /// is checked here, by the client, through the clone's forwarded port, and counts.
    pub ready: thaw::ready::ReadySpec,
}

/// One exchange, timed.
struct Timed {
    status: u16,
    body: Value,
    /// Before connecting → the whole answer read.
    total_ms: f64,
    connect_ms: f64,
    /// `Server-Timing` entries: name → milliseconds.
    server: Vec<(String, f64)>,
}

async fn timed(socket: &Path, method: &str, path: &str, body: Value) -> Result<Timed, String> {
    let payload = Bytes::from(serde_json::to_vec(&body).expect("JSON serializes"));
    let req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?)
        .uri(path)
        .header(HOST, "thawd")
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(payload))
        .map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connect to {}: {e}", socket.display()))?;
    let connect_ms = thaw::ms(t0.elapsed());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let server = resp
        .headers()
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .map(parse_server_timing)
        .unwrap_or_default();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let total_ms = thaw::ms(t0.elapsed());
    drop(sender);
    let _ = conn.await;
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(Timed {
        status,
        body,
        total_ms,
        connect_ms,
        server,
    })
}

/// `name;dur=1.25, other;dur=0.5` → pairs.
fn parse_server_timing(v: &str) -> Vec<(String, f64)> {
    v.split(',')
        .filter_map(|entry| {
            let mut parts = entry.trim().split(';');
            let name = parts.next()?.trim().to_owned();
            let dur = parts.find_map(|p| p.trim().strip_prefix("dur=")?.parse().ok())?;
            Some((name, dur))
        })
        .collect()
}

async fn wait_pool_full(client: &Client, tag: &SnapshotTag) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (_, pools) = client
            .request("GET", "/v1/pools", None)
            .await
            .map_err(|e| thaw_daemon::one_line(&e))?;
        let pool = pools
            .as_array()
            .and_then(|a| a.iter().find(|p| p["tag"] == tag.as_str()).cloned())
            .unwrap_or(Value::Null);
        if pool["size"].as_u64().is_some() && pool["ready"] == pool["size"] {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the daemon's pool did not fill: {pool}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl DaemonRestores {
    /// After the daemon's answer: waits, as a restore does, for the profile's readiness
    /// beyond the agent (`ready::wait_extra`) through the forwards the answer names;
    /// milliseconds it took, `None` when the profile has no such condition.
    async fn client_ready(
        &self,
        home: &Home,
        name: &str,
        clone: &Value,
    ) -> Result<Option<f64>, String> {
        if self.ready == thaw::ready::ReadySpec::default() {
            return Ok(None);
        }
        let ports: Vec<thaw::spec::PortForward> =
            serde_json::from_value(clone["ports"].clone()).map_err(|e| format!("ports: {e}"))?;
        let vm: thaw::VmName = name.parse().map_err(|e| format!("{e}"))?;
        let paths = thaw::vm::VmPaths::new(home, &vm);
        let t = Instant::now();
        thaw::ready::wait_extra(
            None,
            &self.ready,
            &ports,
            thaw::ports::DEFAULT_BIND,
            &paths,
            t + Duration::from_secs(60),
        )
        .await
        .map_err(|e| thaw_daemon::one_line(&e))?;
        Ok(Some(thaw::ms(t.elapsed())))
    }

    async fn measure(
        &self,
        home: &Home,
        socket: &Path,
        tag: &SnapshotTag,
        mem: u32,
        runs: u32,
        progress: &mut dyn FnMut(&str),
    ) -> Result<MethodReport, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            if let Some(c) = Client::connect_async(socket).await {
                break c;
            }
            if Instant::now() > deadline {
                return Err("the benchmark's thawd did not answer".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let pool_path = format!("/v1/snapshots/{tag}/pool");
        let (status, body) = client
            .request(
                "PUT",
                &pool_path,
                Some(json!({"size": 1, "mode": "running", "warm_ports": self.warm_ports})),
            )
            .await
            .map_err(|e| thaw_daemon::one_line(&e))?;
        if status != 200 {
            return Err(format!("PUT {pool_path} answered {status}: {body}"));
        }
        let mut samples = Vec::new();
        let mut parts: Vec<(&'static str, Vec<f64>)> = [
            "connect", "http", "admit", "restore", "record", "check", "take", "agent", "port",
        ]
        .into_iter()
        .map(|n| (n, Vec::new()))
        .collect();
        let mut from_pool = 0;
        for i in 0..runs {
            progress(&format!(
                "{mem} MiB: thawd, running pool: restore {}/{runs}",
                i + 1
            ));
            wait_pool_full(&client, tag).await?;
            let name = format!("m{mem}-thawd-{i}");
            let path = format!("/v1/snapshots/{tag}/restore");
            let t0 = Instant::now();
            let mut t = timed(socket, "POST", &path, json!({ "name": name })).await?;
            if t.status != 201 {
                return Err(format!("POST {path} answered {}: {}", t.status, t.body));
            }
            let clone = &t.body[0];
            let client_ready_ms = self.client_ready(home, &name, clone).await?;
            if client_ready_ms.is_some() {
                t.total_ms = thaw::ms(t0.elapsed());
            }
            let restore_ms = clone["restore_ms"].as_f64().unwrap_or(f64::NAN);
            let ready_ms = clone["ready_ms"].as_f64().unwrap_or(f64::NAN);
            from_pool += u32::from(clone["breakdown"]["source"] == "pool");
            let server = |n: &str| t.server.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
            // Request sent → vCPUs running, on the client's clock: the whole exchange
            // less what the daemon did after the clone ran (the agent's answer, and
            // recording the VM). Writing and reading the answer still count, so this
            // is an upper bound.
            let after_running = server("restore").map_or(ready_ms, |r| r - restore_ms)
                + server("record").unwrap_or(0.0);
            samples.push(Sample {
                running_ms: Some(t.total_ms - after_running),
                ready_ms: t.total_ms,
            });
            let handler: f64 = t.server.iter().map(|(_, v)| v).sum();
            for (k, v) in parts.iter_mut() {
                let x = match *k {
                    "connect" => Some(t.connect_ms),
                    "http" => {
                        Some(t.total_ms - client_ready_ms.unwrap_or(0.0) - t.connect_ms - handler)
                    }
                    "take" => clone["breakdown"]["take_ms"].as_f64(),
                    // Before the take: the snapshot opened and checked, the name claimed.
                    "check" => clone["breakdown"]["take_ms"]
                        .as_f64()
                        .map(|take| restore_ms - take),
                    "agent" => clone["breakdown"]["agent_ms"].as_f64(),
                    "port" => client_ready_ms,
                    other => server(other),
                };
                v.extend(x);
            }
            let (status, body) = client
                .request("DELETE", &format!("/v1/vms/{name}"), None)
                .await
                .map_err(|e| thaw_daemon::one_line(&e))?;
            if status != 200 {
                return Err(format!("DELETE /v1/vms/{name} answered {status}: {body}"));
            }
        }
        let _ = client
            .request("PUT", &pool_path, Some(json!({"size": 0})))
            .await;
        let breakdown: serde_json::Map<String, Value> = parts
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (format!("{k}_ms"), json!(Stats::of(v))))
            .collect();
        let mut m = MethodReport::new("thawd-pool-running", "thawd socket, running pool", mem)
            .with_samples(&[], &samples);
        m.detail = Some(json!({
            "from_pool": from_pool,
            "pool_size": 1,
            "warm_ports": self.warm_ports,
            "breakdown": breakdown,
            "note": "connect: client connect; http: the exchange outside the handler \
                     (parse, route, serialize, write, read); admit: the VM limit (SQLite); \
                     restore: the library's restore (check: opening and checking the \
                     snapshot, claiming the name; take: taking and renaming the pooled \
                     clone; agent: the guest agent's answer and clock check); record: \
                     recording the VM (SQLite); port: after the answer, the profile's \
                     readiness beyond the agent (Redis PING) through the clone's forward, \
                     checked by the client",
        }));
        Ok(m)
    }
}

impl ExternalMethod for DaemonRestores {
    fn run<'a>(
        &'a self,
        home: &'a Home,
        tag: &'a SnapshotTag,
        memory_mib: u32,
        runs: u32,
        progress: &'a mut dyn FnMut(&str),
    ) -> ExternalRun<'a> {
        Box::pin(async move {
            let config = thaw_daemon::ServeConfig::new(home.clone());
            let socket = config.socket.clone();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let serve = thaw_daemon::serve(config, async move {
                let _ = stopped.await;
            });
            let measure = async {
                let r = self
                    .measure(home, &socket, tag, memory_mib, runs, progress)
                    .await;
                let _ = stop.send(());
                r
            };
            let (served, measured) = tokio::join!(serve, measure);
            let _ = std::fs::remove_file(home.root().join(thaw_daemon::DB_FILE));
            match (served, measured) {
                (Err(e), _) => Err(format!("thawd: {}", thaw_daemon::one_line(&e))),
                (Ok(()), m) => m,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_timing_is_parsed() {
        assert_eq!(
            parse_server_timing("admit;dur=0.12, restore;desc=\"x\";dur=1.5,bad"),
            vec![("admit".to_owned(), 0.12), ("restore".to_owned(), 1.5)]
        );
    }
}
