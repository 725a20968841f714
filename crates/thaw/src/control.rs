//! Operations on VMs that exist: run a command in one, list them with their real
//! state, stop, resume.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use thaw_qmp::Qmp;

use crate::agent::{Agent, AgentError, ExecOutput};
use crate::fsutil::Context;
use crate::home::{Home, VmName};
use crate::migration::{self, MigrationError};
use crate::spec::PortForward;
use crate::vm::{self, Origin, VmError, VmState};

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// Runs a command in the guest through its agent.
/// A command as a client asks to run it: `POST /v1/vms/{name}/exec`'s body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"command": ["/bin/sh", "-c", "uname -a"], "timeout_secs": 30})))]
pub struct ExecOptions {
    /// The command and its arguments (not empty).
    pub command: Vec<String>,
    /// Seconds the command may run (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

impl ExecOptions {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.unwrap_or(60))
    }
}

pub async fn exec(
    home: &Home,
    name: &VmName,
    argv: &[String],
    timeout: Duration,
) -> Result<ExecOutput, ExecError> {
    let state = VmState::load_running(home, name)?;
    if let Ok(qmp) = Qmp::connect(&state.paths(home).qmp()).await {
        crate::snapshot::take::cancel_abandoned(&state.paths(home), &qmp).await;
    }
    let mut agent = Agent::connect(&state.paths(home).agent(), Duration::from_secs(10)).await?;
    Ok(agent.exec(argv, timeout).await?)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VmInfo {
    pub name: VmName,
    pub pid: Option<u32>,
    /// "running", "paused", "dead" (QEMU is gone) or "unresponsive" (QMP did not answer,
    /// or QEMU runs but its record was never written).
    pub state: String,
    /// QEMU's own run state when it answered (e.g. "postmigrate").
    pub qemu_status: Option<String>,
    pub origin: Option<Origin>,
    pub memory_mib: Option<u32>,
    pub cpus: Option<u32>,
    pub created_unix_ms: Option<u64>,
    /// Host ports forwarded to guest ports.
    pub ports: Vec<PortForward>,
    /// The host address the forwards and the display listen on (`--bind`), when the
    /// VM's record could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, example = "127.0.0.1"))]
    pub bind: Option<std::net::Ipv4Addr>,
    /// Where the VM's display listens (on `bind`), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnc: Option<crate::display::VncPorts>,
    /// Labels given at boot or restore.
    #[cfg_attr(feature = "openapi", schema(value_type = std::collections::BTreeMap<String, String>))]
    pub labels: crate::lifetime::Labels,
    /// When its time to live ends (unix ms), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_unix_ms: Option<u64>,
    /// Seconds left of its time to live, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
    /// Why a dead VM ended, when thaw knows (a lazily served snapshot that could not
    /// be read: the chunk and why, or its server ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What `thaw inspect NAME` shows: a VM (its record and its state now) or, when no VM
/// has that name, a snapshot (the summary of its manifest, as `snapshots` lists it).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Inspection {
    Vm {
        /// The VM's record (`vm.json`); not through a daemon on another host, whose
        /// API gives the VM as it is now (`live`).
        #[serde(skip_serializing_if = "Option::is_none")]
        record: Option<Box<VmState>>,
        live: VmInfo,
    },
    Snapshot(crate::snapshot::catalog::SnapshotInfo),
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("no VM or snapshot named {0:?}")]
    NotFound(String),
    #[error(transparent)]
    Vm(#[from] vm::VmError),
}

/// A VM named `name`, else a snapshot tagged `name` (see [`Inspection`]).
pub async fn inspect(home: &Home, name: &str) -> Result<Inspection, InspectError> {
    if let Ok(vm_name) = name.parse::<VmName>() {
        if home.vm_dir(&vm_name).is_dir() {
            let record = Some(Box::new(VmState::load(home, &vm_name)?));
            let live = info(home, vm_name).await;
            return Ok(Inspection::Vm { record, live });
        }
    }
    crate::snapshot::catalog::list(home)
        .into_iter()
        .find(|s| s.tag.as_str() == name)
        .map(Inspection::Snapshot)
        .ok_or_else(|| InspectError::NotFound(name.to_owned()))
}

/// Lists every VM with its state as QEMU reports it now.
pub async fn list(home: &Home) -> Vec<VmInfo> {
    // What a killed `thaw reset` left would otherwise run unlisted.
    crate::reset::recover_interrupted(home);
    // Without a daemon, expiry is enforced whenever VMs are listed.
    reap_expired(home).await;
    // Every VM is asked at once: one whose QMP is busy (a restore or snapshot holds
    // it) costs the listing its 2 s timeout once, not once per VM.
    let mut asked = tokio::task::JoinSet::new();
    for (i, name) in vm::list_names(home).into_iter().enumerate() {
        let home = home.clone();
        asked.spawn(async move { (i, info(&home, name).await) });
    }
    let mut out = Vec::new();
    while let Some(joined) = asked.join_next().await {
        out.push(joined.expect("listing a VM panicked"));
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, info)| info).collect()
}

/// One VM as [`list`] shows it.
///
/// # Errors
/// [`VmError::NotFound`] when there is no VM `name`.
pub async fn get(home: &Home, name: &VmName) -> Result<VmInfo, VmError> {
    crate::reset::recover_interrupted(home);
    reap_expired(home).await;
    if !home.vm_dir(name).is_dir() {
        return Err(VmError::NotFound(name.clone()));
    }
    Ok(info(home, name.clone()).await)
}

/// One VM as [`list`] shows it.
async fn info(home: &Home, name: VmName) -> VmInfo {
    let Ok(state) = VmState::load(home, &name) else {
        // No readable record: thaw died between starting QEMU and writing it (or
        // while claiming the name). Dead unless a QEMU runs from the directory,
        // which no command could then manage but `thaw stop`.
        let running = vm::pids_using(&home.vm_dir(&name)).first().copied();
        return VmInfo {
            name,
            pid: running,
            state: if running.is_some() {
                "unresponsive"
            } else {
                "dead"
            }
            .into(),
            qemu_status: None,
            origin: None,
            memory_mib: None,
            cpus: None,
            created_unix_ms: None,
            ports: Vec::new(),
            bind: None,
            vnc: None,
            labels: Default::default(),
            expires_unix_ms: None,
            expires_in_secs: None,
            reason: None,
        };
    };
    let mut reason = None;
    let (st, qemu_status) = if !state.is_alive() {
        reason = crate::lazy::failure_of(home, state.pid).or_else(|| {
            crate::lazy_restore::server_gone(home, &name).map(|pid| {
                format!("the lazy snapshot server (pid {pid}) that served its snapshot ended")
            })
        });
        ("dead".to_owned(), None)
    } else if let Some(server) = crate::lazy_restore::server_gone(home, &name) {
        // What it has not read yet can never be read: it must not run on.
        crate::lazy_restore::end_orphan(state.pid);
        reason = Some(format!(
            "the lazy snapshot server (pid {server}) that served its snapshot ended; \
             the clone was stopped"
        ));
        ("dead".to_owned(), None)
    } else {
        match query_status(&state.paths(home)).await {
            Some(s) => (
                if s == "running" { "running" } else { "paused" }.to_owned(),
                Some(s),
            ),
            None => ("unresponsive".to_owned(), None),
        }
    };
    VmInfo {
        name,
        pid: Some(state.pid),
        state: st,
        qemu_status,
        origin: Some(state.origin.clone()),
        memory_mib: Some(state.spec.memory_mib),
        cpus: Some(state.spec.cpus),
        created_unix_ms: Some(state.created_unix_ms),
        ports: state.ports.clone(),
        bind: Some(state.bind),
        vnc: state.vnc,
        expires_in_secs: state.expires_unix_ms.map(crate::lifetime::secs_left),
        expires_unix_ms: state.expires_unix_ms,
        labels: state.labels,
        reason,
    }
}

/// QEMU's run state; a running VM's migration that a killed snapshot left is
/// cancelled first, so that "running" stays true. Asked on the VM's status monitor (a
/// restore or snapshot in progress holds the other), or the one monitor of a VM
/// started before thaw gave it a second.
async fn query_status(paths: &vm::VmPaths) -> Option<String> {
    let q = async {
        let status = paths.status_qmp();
        let socket = if status.exists() { status } else { paths.qmp() };
        let qmp = Qmp::connect(&socket).await.ok()?;
        crate::snapshot::take::cancel_abandoned(paths, &qmp).await;
        let st = qmp.execute("query-status", None).await.ok()?;
        st["status"].as_str().map(str::to_owned)
    };
    tokio::time::timeout(Duration::from_secs(2), q)
        .await
        .ok()
        .flatten()
}

/// Stops a VM (whatever its state) and removes its directory.
pub async fn stop(home: &Home, name: &VmName) -> Result<(), VmError> {
    crate::reset::recover_interrupted(home);
    let dir = home.vm_dir(name);
    match VmState::load(home, name) {
        Ok(state) => {
            vm::terminate(&state, home).await;
            vm::reap(state.pid);
        }
        Err(VmError::NotFound(n)) => return Err(VmError::NotFound(n)),
        // A directory without a readable record (thaw died while creating it): end any
        // QEMU that runs from it, found by its command line.
        Err(_) => {
            for pid in vm::pids_using(&dir) {
                vm::kill(pid);
                vm::wait_gone(
                    pid,
                    dir.as_os_str().as_encoded_bytes(),
                    Duration::from_secs(5),
                )
                .await;
            }
        }
    }
    std::fs::remove_dir_all(&dir)
        .at("remove", &dir)
        .map_err(VmError::from)
}

/// Pauses a running VM's vCPUs (QMP `stop`); `resume` continues it. Its screen, memory
/// and devices hold still meanwhile (a screenshot of a paused VM is what a `--stop`
/// snapshot of it will hold).
pub async fn pause(home: &Home, name: &VmName) -> Result<(), VmError> {
    let state = VmState::load_running(home, name)?;
    let qmp = Qmp::connect(&state.paths(home).qmp()).await?;
    qmp.execute("stop", None).await?;
    Ok(())
}

/// Resumes a paused VM, for example one left paused by an interrupted snapshot (whose
/// migration, if it still waits, is cancelled first).
pub async fn resume(home: &Home, name: &VmName) -> Result<(), ResumeError> {
    let state = VmState::load_running(home, name)?;
    let qmp = Qmp::connect(&state.paths(home).qmp())
        .await
        .map_err(VmError::from)?;
    migration::cancel_pending(&qmp).await?;
    migration::resume_after(&qmp).await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("could not resume the VM")]
    Migration(#[from] MigrationError),
}
/// [`vm::extend_ttl`], then the VM as `thaw ls` shows it. A VM already expired is gone
/// ([`VmError::NotFound`]).
pub async fn extend_ttl(
    home: &Home,
    name: &VmName,
    ttl: std::time::Duration,
) -> Result<VmInfo, VmError> {
    reap_expired(home).await;
    vm::extend_ttl(home, name, ttl)?;
    get(home, name).await
}

/// Stops and removes every VM whose TTL has passed; returns their names.
pub async fn reap_expired(home: &Home) -> Vec<VmName> {
    let now = crate::lifetime::now_unix_ms();
    let mut gone = Vec::new();
    for name in vm::list_names(home) {
        let Ok(state) = VmState::load(home, &name) else {
            continue;
        };
        if state.expires_unix_ms.is_some_and(|e| e <= now) && stop(home, &name).await.is_ok() {
            gone.push(name);
        }
    }
    gone
}
