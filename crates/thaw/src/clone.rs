//! A clone's life up to "ready", in two halves that a warm pool can run apart:
//! [`prepare`] starts QEMU on the snapshot's RAM image and loads the device state
//! (vCPUs still paused); [`Prepared::finish`] resumes it, resynchronises the guest
//! agent, sets the guest clock from the host and runs the readiness checks.

use std::path::PathBuf;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ms;

use serde::{Deserialize, Serialize};
use thaw_qmp::Qmp;
use uuid::Uuid;

use crate::agent::Agent;
use crate::agent::AgentError;
use crate::fsutil::Context;
use crate::guestref;
use crate::home::{Home, SnapshotTag, VmName};
use crate::migration;
use crate::migration::Layout;
use crate::migration::MigrationError;
use crate::qemu::Qemu;
use crate::ready::{self, ReadyError, ReadySpec};
use crate::snapshot::{self, Memory, ParentRef, Snapshot, SnapshotCheckError};
use crate::spec::{Launch, PortForward};
use crate::vm::{self, Origin, VmError, VmPaths, VmState};

mod start;
pub use start::{HashGate, HashOutcome, StartOptions};

/// Where a restore's time went, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Breakdown {
    /// "spawn" (a new QEMU for this request) or "pool" (taken from a warm pool).
    pub source: String,
    /// Starting QEMU until QMP answers (0 when taken from a pool).
    pub spawn_ms: f64,
    /// Taking the clone from the pool and giving it its name (0 when spawned).
    pub take_ms: f64,
    /// Loading the device state, with waiting for its hash if that was still being
    /// computed (0 when taken from a pool: it was loaded before).
    pub state_load_ms: f64,
    /// `cont` until the vCPUs run (0 for a pool clone that was already running).
    pub resume_ms: f64,
    /// Agent resynchronisation, clock set, `--exec-after` and extra readiness.
    pub agent_ms: f64,
    /// Of `agent_ms`: connecting to the agent until its first answer (0 for a clone
    /// whose agent was connected before the request).
    #[serde(default)]
    pub agent_sync_ms: f64,
    /// Of `agent_ms`: reading the guest clock and setting it from the host's.
    #[serde(default)]
    pub clock_ms: f64,
    /// How the clock was set or checked: through the guest's clock channel (`port`),
    /// or the guest agent (`agent`).
    #[serde(default)]
    pub clock_via: ClockVia,
    /// Before any QEMU started: reading and checking the snapshot but for its hashes,
    /// which run while QEMU starts (0 when every clone came from a pool, which checked
    /// it when it was configured).
    #[serde(default)]
    pub check_ms: f64,
    /// For a clone from a running pool: how long before it was taken its agent last
    /// answered (the pool's health check, with the guest clock within
    /// [`CLOCK_TOLERANCE`]), when that was recent enough ([`AGENT_FRESH`]) for the
    /// take to ask nothing again. `None` when the agent was asked during the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_answered_ms_before: Option<f64>,
}

/// The channel a clone's clock went through (see [`crate::clockport`]).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ClockVia {
    /// The guest's `thaw-clock`, on its own virtio-serial port.
    Port,
    /// qemu-ga's `guest-set-time` / `guest-get-time`.
    #[default]
    Agent,
}

/// A clone that is ready: what `thaw restore` reports for each clone.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CloneReport {
    pub name: VmName,
    pub pid: u32,
    /// Request → vCPUs running.
    pub restore_ms: f64,
    /// Request → guest agent answers and clock set (and any extra readiness).
    pub ready_ms: f64,
    pub ports: Vec<PortForward>,
    /// The host address the forwards and the display listen on.
    #[serde(default = "crate::ports::default_bind")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "127.0.0.1"))]
    pub bind: std::net::Ipv4Addr,
    /// Where the clone's display listens (on `bind`), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnc: Option<crate::display::VncPorts>,
    /// For a lazily served snapshot: bytes fetched from the remote before this clone
    /// was ready (compressed, as stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetched_bytes: Option<u64>,
    /// For a lazily served snapshot: its chunks' stored size, each once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<u64>,
    /// Left paused at the snapshot point (`--paused`): `restore_ms` and `ready_ms` are
    /// request → state loaded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Where the time went.
    pub breakdown: Breakdown,
}

/// Starting or finishing one clone failed.
#[derive(Debug, thiserror::Error)]
pub enum CloneError {
    #[error(transparent)]
    Check(#[from] SnapshotCheckError),
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The clone's name could not be claimed (taken, or its directory not made);
    /// nothing of the clone is under that name.
    #[error(transparent)]
    Claim(VmError),
    #[error("loading the device state failed")]
    Migration(#[from] MigrationError),
    #[error("could not resume the clone")]
    Qmp(#[from] thaw_qmp::QmpError),
    #[error("the clone's guest agent did not answer")]
    Agent(#[from] AgentError),
    #[error(
        "the clone's guest agent did not answer within {0:?} of resuming; a clone's agent \
         answers at once if it was answering when the snapshot was taken, so it was \
         likely stopped, dead or hung in the snapshot"
    )]
    AgentSilent(Duration),
    #[error(transparent)]
    Ready(#[from] ReadyError),
    #[error("--exec-after exited with {code}: {stderr}")]
    ExecAfter { code: i32, stderr: String },
    #[error("could not move the port forwards ({0})")]
    Ports(String),
    /// The snapshot's hashes, computed while this clone's QEMU started, did not match
    /// (the restore reports the check's own error).
    #[error("the snapshot's check failed")]
    Unchecked,
}

/// How far a clone's clock may be from the host's before it is set at finish.
pub const CLOCK_TOLERANCE: Duration = Duration::from_millis(50);

/// How long a clone's `thaw-clock` may take to answer before the clock is set through
/// the agent instead: it runs in every guest thaw builds and answers in milliseconds,
/// so a guest that says nothing for this long does not have it running.
pub const CLOCK_PORT_WAIT: Duration = Duration::from_secs(3);

/// How long a restored clone's guest agent may take to first answer (less if the
/// request's timeout is shorter). The agent was running at the snapshot point, so it
/// answers as soon as the vCPUs run: ~0.1 s under TCG, a few seconds with dozens of
/// clones resuming at once on two cores. One that has not answered by then never will
/// (the snapshot holds it stopped or dead), and the restore fails naming that instead
/// of waiting out the whole timeout.
pub const AGENT_FIRST_ANSWER: Duration = Duration::from_secs(20);

/// The readiness timeout of a restore or reset when the request gives none (the CLI's
/// and the API's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How recent a running clone's last agent answer (clock within tolerance) must be
/// for finishing it to ask nothing again: a running pool checks its clones every
/// second ([`crate::pool`]), so a clone it holds is never older than this.
pub const AGENT_FRESH: Duration = Duration::from_secs(2);

/// A running clone's guest agent and when it last answered with the guest clock
/// within [`CLOCK_TOLERANCE`]; shared by a pooled clone and the pool's health check
/// (one request at a time: the lock is held for a whole exchange).
#[derive(Clone)]
pub struct AgentWatch(Arc<tokio::sync::Mutex<Watched>>);

struct Watched {
    agent: Agent,
    answered: Option<Instant>,
}

impl AgentWatch {
    fn new(agent: Agent, answered: Option<Instant>) -> AgentWatch {
        AgentWatch(Arc::new(tokio::sync::Mutex::new(Watched {
            agent,
            answered,
        })))
    }

    /// Asks the guest its time (and sets it if it is off), unless it answered less
    /// than `min_age` ago; gives up after `timeout`. Returns how long ago it had
    /// answered when it was not asked.
    pub async fn check(
        &self,
        min_age: Duration,
        timeout: Duration,
    ) -> Result<Option<Duration>, AgentError> {
        let mut w = self.0.lock().await;
        if let Some(age) = w.answered.map(|t| t.elapsed()).filter(|age| *age < min_age) {
            return Ok(Some(age));
        }
        tokio::time::timeout(timeout, w.agent.sync_time(CLOCK_TOLERANCE))
            .await
            .map_err(|_| AgentError::Timeout(timeout))??;
        w.answered = Some(Instant::now());
        Ok(None)
    }

    /// Records an answer of the guest (through another channel) just now.
    pub async fn answered_now(&self) {
        self.0.lock().await.answered = Some(Instant::now());
    }

    /// Sets the guest clock from the host's without reading it first: for a clone
    /// resumed from a snapshot just now, whose clock stands at the snapshot's time.
    pub async fn set_clock(&self, timeout: Duration) -> Result<(), AgentError> {
        let mut w = self.0.lock().await;
        tokio::time::timeout(timeout, w.agent.set_time(CLOCK_TOLERANCE))
            .await
            .map_err(|_| AgentError::Timeout(timeout))??;
        w.answered = Some(Instant::now());
        Ok(())
    }
}

/// How long a clone resumed just now may take to first answer: [`AGENT_FIRST_ANSWER`]
/// within a request's usual timeout (up to [`DEFAULT_TIMEOUT`]); a caller that asks
/// for longer (`thaw bench --density`: a hundred clones resuming at once on two cores
/// answered after up to 37 s) waits all of it.
fn first_answer_wait(timeout: Duration) -> Duration {
    if timeout > DEFAULT_TIMEOUT {
        timeout
    } else {
        timeout.min(AGENT_FIRST_ANSWER)
    }
}

/// What finishing a clone needs from the request.
#[derive(Debug, Clone)]
pub struct FinishOptions {
    pub timeout: Duration,
    pub ready: ReadySpec,
    pub exec_after: Option<String>,
    /// The VNC password of a display that asks for one.
    pub vnc_password: Option<String>,
}

/// A clone whose QEMU runs with the device state loaded.
pub struct Prepared {
    pub state: VmState,
    pub paths: VmPaths,
    child: Child,
    qmp: Qmp,
    agent: Option<AgentWatch>,
    running: bool,
    /// When `cont` completed, if it ran while serving a request (see `resume`).
    resumed_at: Option<Instant>,
    pub breakdown: Breakdown,
}

/// Which host ports a clone's forwards get when it starts, and on which host address
/// its forwards and display listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    /// Free ones on this address, picked now.
    Fresh(std::net::Ipv4Addr),
    /// None yet: the clone takes over another VM's ports (and address) later
    /// ([`Prepared::take_ports`]); its display listens on this address meanwhile.
    None(std::net::Ipv4Addr),
}

impl Ports {
    fn bind(self) -> std::net::Ipv4Addr {
        match self {
            Ports::Fresh(bind) | Ports::None(bind) => bind,
        }
    }
}

/// Starts QEMU for a clone of `snap` in `paths.dir` (which must exist and be empty)
/// and loads the snapshot's device state. The clone gets host ports as `ports` says,
/// its own disk layers and (unless `opts.keep_vmgenid`) a fresh VM Generation ID.
pub async fn prepare(
    qemu: &Qemu,
    snap: &Snapshot,
    paths: VmPaths,
    name: VmName,
    opts: StartOptions,
    ports: Ports,
) -> Result<Prepared, CloneError> {
    let t0 = Instant::now();
    if opts.hashes.as_ref().is_some_and(HashGate::failed) {
        return Err(CloneError::Unchecked);
    }
    let (ram, ram_offset) = snap.ram_image();
    // The guest's files on this machine: those the snapshot's links point to.
    let spec = &guestref::resolve(&snap.dir, &snap.manifest.spec);
    guestref::copy_links(&snap.dir, &paths.dir)
        .at("link the guest files into", &paths.dir)
        .map_err(VmError::from)?;
    let vmgenid = if opts.keep_vmgenid {
        snap.manifest.vmgenid
    } else {
        Uuid::new_v4()
    };
    // Every clone needs its own host ports; the snapshot's are taken. A clone that
    // takes over another VM's ports (reset) starts with none and gets them later.
    let bind = ports.bind();
    let ports = match ports {
        Ports::Fresh(bind) => spec
            .net
            .iter()
            .flat_map(|n| n.guest_ports.iter())
            .map(|&guest| {
                let host = crate::ports::free_on(bind)
                    .at("pick a port for", &paths.dir)
                    .map_err(VmError::from)?;
                Ok(PortForward { host, guest })
            })
            .collect::<Result<Vec<_>, VmError>>()?,
        Ports::None(_) => Vec::new(),
    };
    let overlays = clone_disks(snap, &paths)?;
    crate::firmware::vars_for_clone(&snap.dir, &paths.dir)
        .at("copy the UEFI variables for", &paths.dir)
        .map_err(VmError::from)?;
    let vnc = crate::display::ports_for_clone(spec.display.as_ref(), bind)
        .at("pick a VNC port for", &paths.dir)
        .map_err(VmError::from)?;
    let efivars = crate::firmware::vars_file(&paths.dir);
    // The guest never boots again: a stand-in for the kernel, and no initrd.
    let boot_stub = match &spec.kernel {
        Some(kernel) => crate::bootstub::kernel_stub(kernel, &paths.dir)
            .at("read the kernel header of", kernel)
            .map_err(VmError::from)?,
        None => None,
    };
    let display_name = name.to_string();
    let launch = Launch {
        name: &display_name,
        qemu: qemu.version,
        tcg_tb_size_mib: qemu.tcg_tb_size_mib,
        ram: &ram,
        ram_offset,
        share_ram: false,
        qmp_socket: &paths.qmp(),
        status_socket: &paths.status_qmp(),
        agent_socket: &paths.agent(),
        clock_pipe: &paths.clock_pipe(),
        console_log: &paths.console(),
        vmgenid,
        incoming: true,
        disk_overlays: &overlays,
        ports: &ports.clone(),
        bind,
        efivars: &efivars,
        vnc,
        boot_stub: boot_stub.as_deref(),
    };
    let mut state = VmState {
        name,
        pid: 0,
        spec: spec.clone(),
        qemu_version: qemu.version,
        vmgenid,
        ram: ram.clone(),
        ram_shared: false,
        origin: Origin::Restored {
            snapshot: snap.manifest.tag.clone(),
        },
        created_unix_ms: vm::now_ms(),
        disk_overlays: overlays.clone(),
        ports,
        bind,
        lineage: Some(ParentRef {
            tag: snap.manifest.tag.clone(),
            manifest_blake3: snap.manifest_blake3.clone(),
        }),
        vnc,
        labels: Default::default(),
        expires_unix_ms: None,
    };
    let spawned = vm::spawn(qemu, spec, &launch, &paths, opts.die_with_owner, |pid| {
        state.pid = pid;
        state.save_in(&paths)
    })
    .await?;
    let spawn_ms = ms(t0.elapsed());
    // Waiting for the hashes counts as loading the state.
    let t1 = Instant::now();
    if let Some(gate) = &opts.hashes {
        if !gate.passed().await {
            return Err(CloneError::Unchecked);
        }
    }
    let layout = match snap.manifest.memory {
        Memory::Raw => Layout::Raw,
        Memory::Mapped { .. } => Layout::Mapped,
    };
    migration::load(&spawned.qmp, &snap.state_path(), layout).await?;
    Ok(Prepared {
        state,
        paths,
        child: spawned.child,
        qmp: spawned.qmp,
        agent: None,
        running: false,
        resumed_at: None,
        breakdown: Breakdown {
            source: "spawn".into(),
            spawn_ms,
            state_load_ms: ms(t1.elapsed()),
            ..Breakdown::default()
        },
    })
}

/// Gives a clone its disks: hard links to the snapshot's chain of layers and a copy
/// of its template as the clone's own top layer. Returns the top layers.
fn clone_disks(snap: &Snapshot, paths: &VmPaths) -> Result<Vec<PathBuf>, VmError> {
    let disks = &snap.manifest.disks;
    if disks.is_empty() {
        return Ok(Vec::new());
    }
    let dir = paths.disks();
    std::fs::create_dir_all(&dir)
        .at("create", &dir)
        .map_err(VmError::from)?;
    let from = snap.dir.join("disks");
    let mut tops = Vec::new();
    for (i, d) in disks.iter().enumerate() {
        crate::disk::link_chain(&from, &dir, i, d.layers)
            .at("link the disk layers into", &dir)
            .map_err(VmError::from)?;
        // A copy of the snapshot's empty template: no qemu-img on the restore path.
        let top = paths.disk_layer(i, d.layers);
        std::fs::copy(snap.dir.join(snapshot::template_file(i)), &top)
            .at("create the disk overlay", &top)
            .map_err(VmError::from)?;
        tops.push(top);
    }
    Ok(tops)
}

impl Prepared {
    pub fn pid(&self) -> u32 {
        self.state.pid
    }

    /// The clone's QMP connection.
    pub fn qmp(&self) -> &Qmp {
        &self.qmp
    }

    pub fn tag(&self) -> Option<&SnapshotTag> {
        match &self.state.origin {
            Origin::Restored { snapshot } => Some(snapshot),
            Origin::Booted => None,
        }
    }

    /// Resumes the vCPUs.
    pub async fn resume(&mut self) -> Result<(), CloneError> {
        if !self.running {
            let t = Instant::now();
            self.qmp.execute("cont", None).await?;
            self.running = true;
            self.resumed_at = Some(Instant::now());
            self.breakdown.resume_ms = ms(t.elapsed());
        }
        Ok(())
    }

    /// Resumes, synchronises the agent and sets the clock: the state a "running" pool
    /// keeps its clones in. The agent connection stays open.
    pub async fn warm_up(&mut self, timeout: Duration) -> Result<(), CloneError> {
        self.resume().await?;
        let (agent, by_port) = self.reach_agent_setting_clock(timeout).await;
        let mut agent = agent?;
        if !matches!(by_port, Some((Ok(()), _))) {
            agent.set_time(CLOCK_TOLERANCE).await?;
        }
        // Resumed before any request: nothing of it counts towards one.
        self.resumed_at = None;
        self.breakdown.resume_ms = 0.0;
        self.agent = Some(AgentWatch::new(agent, Some(Instant::now())));
        Ok(())
    }

    /// Connects to the agent of a clone resumed just now (its first answer within
    /// `wait`) while, when the guest has a clock channel, its clock is set through
    /// that: the two are independent. The clock's outcome and time, `None` without a
    /// channel; on failure the caller sets the clock through the agent.
    async fn reach_agent_setting_clock(
        &self,
        wait: Duration,
    ) -> (
        Result<Agent, AgentError>,
        Option<(Result<(), ()>, Duration)>,
    ) {
        let port_clock = async {
            let t = Instant::now();
            match self.state.spec.clock_port {
                true => Some((self.set_clock_by_port(wait).await, t.elapsed())),
                false => None,
            }
        };
        let agent_socket = self.paths.agent();
        tokio::join!(Agent::connect(&agent_socket, wait), port_clock)
    }

    /// Sets the clock of a clone resumed just now through its clock channel (one
    /// system call in the guest); on failure says why: the caller then sets it
    /// through the agent.
    async fn set_clock_by_port(&self, timeout: Duration) -> Result<(), ()> {
        let wait = timeout.min(CLOCK_PORT_WAIT);
        match crate::clockport::set(&self.paths.clock_pipe(), CLOCK_TOLERANCE, wait).await {
            Ok(_) => Ok(()),
            // A QEMU that ended (e.g. a lazily served snapshot it could not read) is
            // reported by the step that follows, in one line; no warning about it here.
            Err(_) if !self.state.is_alive() => Err(()),
            Err(e) => {
                tracing::warn!(
                    "{}; setting the clock through the guest agent instead",
                    crate::one_line(&e)
                );
                Err(())
            }
        }
    }

    /// The agent of a warmed-up (running) clone, for health checks while it waits.
    pub fn agent_watch(&self) -> Option<AgentWatch> {
        self.agent.clone()
    }

    /// Moves the clone onto `ports` of `bind` (another VM's host ports and address,
    /// being freed): its own forwards, if it has any, are removed and these added,
    /// through QEMU's monitor. A port the ended VM held can take a few milliseconds
    /// after its exit to be free again (the kernel closes the socket asynchronously),
    /// so adding is retried.
    pub async fn take_ports(
        &mut self,
        ports: &[PortForward],
        bind: std::net::Ipv4Addr,
    ) -> Result<(), CloneError> {
        for f in &self.state.ports {
            let rule = format!("hostfwd_remove net0 tcp:{}:{}", self.state.bind, f.host);
            // Prints its result only when nothing matched.
            let _ = self.hmp(&rule).await?;
        }
        self.state.ports.clear();
        self.state.bind = bind;
        for f in ports {
            let rule = format!("hostfwd_add net0 tcp:{bind}:{}-:{}", f.host, f.guest);
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                let out = self.hmp(&rule).await?;
                if out.is_empty() {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(CloneError::Ports(format!("{rule}: {out}")));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            self.state.ports.push(*f);
        }
        Ok(())
    }

    /// Moves the clone's VNC server onto `ports.port` of `bind` (another VM's, being
    /// freed), with QMP `display-update`; retried while the ended VM's socket closes.
    /// The websocket port, if any, stays the clone's own (QEMU cannot move it at run
    /// time).
    pub async fn take_vnc(
        &mut self,
        ports: crate::display::VncPorts,
        bind: std::net::Ipv4Addr,
    ) -> Result<(), CloneError> {
        let Some(mine) = self.state.vnc else {
            return Ok(());
        };
        let args = serde_json::json!({
            "type": "vnc",
            "addresses": [{"type": "inet", "host": bind.to_string(), "port": ports.port.to_string()}],
        });
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match self.qmp.execute("display-update", Some(args.clone())).await {
                Ok(_) => break,
                Err(e) if Instant::now() >= deadline => {
                    return Err(CloneError::Ports(format!("VNC port {}: {e}", ports.port)))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
        self.state.vnc = Some(crate::display::VncPorts {
            port: ports.port,
            websocket: mine.websocket,
        });
        Ok(())
    }

    /// A human monitor command; returns what it printed, trimmed.
    async fn hmp(&self, command: &str) -> Result<String, CloneError> {
        let out = self
            .qmp
            .execute(
                "human-monitor-command",
                Some(serde_json::json!({ "command-line": command })),
            )
            .await?;
        Ok(out.as_str().unwrap_or("").trim().to_owned())
    }

    /// Moves the clone to its final name and directory (a pool clone is prepared
    /// under a placeholder), claiming the name unless the caller `claimed` it: then
    /// [`CloneError::Claim`] if it is taken, and nothing moved. QEMU keeps its open
    /// files and sockets across the move.
    pub fn claim_name(
        &mut self,
        home: &Home,
        name: &VmName,
        claimed: bool,
    ) -> Result<(), CloneError> {
        let to = VmPaths::new(home, name);
        let mut state = self.state.clone();
        state.disk_overlays = state
            .disk_overlays
            .iter()
            .map(|p| to.disks().join(p.file_name().expect("a layer file")))
            .collect();
        state.name = name.clone();
        // The record as it will be, written where the clone is now, then published
        // with the directory by one rename: `vms/<name>` never holds another record.
        state.prepare_in(&self.paths).map_err(CloneError::Claim)?;
        vm::move_dir_to(home, &self.paths.dir, name, claimed).map_err(CloneError::Claim)?;
        self.state = state;
        self.paths = to;
        Ok(())
    }

    /// Resumes (if paused), resynchronises the agent, sets the guest clock from the
    /// host, runs `exec_after` and waits for the extra readiness. `t0` is when the
    /// request arrived.
    pub async fn finish(
        mut self,
        opts: &FinishOptions,
        t0: Instant,
    ) -> Result<CloneReport, CloneError> {
        if let Some(password) = &opts.vnc_password {
            crate::display::set_password(&self.qmp, password).await?;
        }
        self.resume().await?;
        // vCPUs running: when `cont` completed, or now for a clone that was running.
        let restore_ms = ms(self
            .resumed_at
            .unwrap_or_else(Instant::now)
            .saturating_duration_since(t0));
        let t1 = Instant::now();
        // The agent is resynchronised (it may have been mid-request at the snapshot)
        // and the guest clock, frozen at the snapshot, is set from the host. A running
        // clone whose agent answered, clock in tolerance, within AGENT_FRESH (a running
        // pool's health check) is not asked again: it has run since.
        // A clone resumed by this request has the snapshot's time: it is set without
        // being read first, through the clock channel (while the agent is being
        // reached: the two are independent) or else through the agent.
        let (watch, port_clock) = match self.agent.take() {
            Some(w) => (w, None),
            None => {
                let wait = first_answer_wait(opts.timeout);
                let (agent, port_clock) = self.reach_agent_setting_clock(wait).await;
                let agent = match agent {
                    Ok(agent) => agent,
                    Err(AgentError::Timeout(_)) => return Err(CloneError::AgentSilent(wait)),
                    Err(e) => return Err(e.into()),
                };
                (AgentWatch::new(agent, None), Some(port_clock))
            }
        };
        self.breakdown.agent_sync_ms = ms(t1.elapsed());
        tracing::debug!(ms = ms(t0.elapsed()), "agent synchronised");
        let t2 = Instant::now();
        let answered_before = if let Some(port_clock) = port_clock {
            match port_clock {
                Some((Ok(()), took)) => {
                    self.breakdown.clock_via = ClockVia::Port;
                    // Its own time, overlapping the agent's first answer.
                    self.breakdown.clock_ms = ms(took);
                    watch.answered_now().await;
                }
                _ => {
                    self.breakdown.clock_via = ClockVia::Agent;
                    watch.set_clock(opts.timeout).await?;
                    self.breakdown.clock_ms = ms(t2.elapsed());
                }
            }
            None
        } else {
            watch.check(AGENT_FRESH, opts.timeout).await?
        };
        if self.breakdown.clock_via == ClockVia::Agent {
            self.breakdown.clock_ms = ms(t2.elapsed());
        }
        self.breakdown.agent_answered_ms_before = answered_before.map(ms);
        tracing::debug!(ms = ms(t0.elapsed()), "guest clock checked or set");
        if let Some(cmd) = &opts.exec_after {
            let argv = ["/bin/sh".to_owned(), "-c".to_owned(), cmd.clone()];
            let out = watch.0.lock().await.agent.exec(&argv, opts.timeout).await?;
            if out.exit_code != 0 {
                return Err(CloneError::ExecAfter {
                    code: out.exit_code,
                    stderr: String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                        .to_owned(),
                });
            }
        }
        ready::wait_extra(
            Some(&self.qmp),
            &opts.ready,
            &self.state.ports,
            self.state.bind,
            &self.paths,
            t0 + opts.timeout,
        )
        .await?;
        self.breakdown.agent_ms = ms(t1.elapsed());
        let pid = self.pid();
        // The process outlives this handle; whoever stops it reaps it.
        drop(self.child);
        Ok(CloneReport {
            fetched_bytes: None,
            stored_bytes: None,
            name: self.state.name.clone(),
            pid,
            restore_ms,
            ready_ms: ms(t0.elapsed()),
            ports: self.state.ports.clone(),
            bind: self.state.bind,
            vnc: self.state.vnc,
            paused: false,
            breakdown: self.breakdown,
        })
    }

    /// Leaves the clone paused at the snapshot point (state loaded, vCPUs stopped): its
    /// screen, memory and devices are exactly the snapshot's until `thaw resume`. Sets
    /// the VNC password first, if the display asks for one.
    pub async fn leave_paused(
        self,
        vnc_password: Option<&str>,
        t0: Instant,
    ) -> Result<CloneReport, CloneError> {
        if let Some(password) = vnc_password {
            crate::display::set_password(&self.qmp, password).await?;
        }
        let pid = self.pid();
        drop(self.child);
        Ok(CloneReport {
            fetched_bytes: None,
            stored_bytes: None,
            name: self.state.name.clone(),
            pid,
            restore_ms: ms(t0.elapsed()),
            ready_ms: ms(t0.elapsed()),
            ports: self.state.ports.clone(),
            bind: self.state.bind,
            vnc: self.state.vnc,
            paused: true,
            breakdown: self.breakdown,
        })
    }

    /// Ends the clone's QEMU and removes its directory.
    pub async fn discard(mut self) {
        let _ = self.qmp.execute("quit", None).await;
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.paths.dir);
    }

    pub fn dir(&self) -> PathBuf {
        self.paths.dir.clone()
    }
}
