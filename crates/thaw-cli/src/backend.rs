//! The one seam between the commands and where the operations run: in this process
//! (the library, [`Local`]) or in the daemon serving this home (its [`Client`]). Every
//! command the daemon serves goes through [`Ops`]; the rest (guests, the store, the
//! screen, `up`) always run here.

use anyhow::{bail, Result};
use thaw::boot::BootReport;
use thaw::cancel::CancellationToken;
use thaw::clone::CloneReport;
use thaw::control::{self, VmInfo};
use thaw::guestio::exec::{ExecEvent, ExecSpec};
use thaw::guestio::files::{self, Copied};
use thaw::pool::{PoolConfig, PoolStatus};
use thaw::profile::BootOptions;
use thaw::qemu::Qemu;
use thaw::reset::{ResetReport, ResetRequest};
use thaw::restore::RestoreRequest;
use thaw::screen::{KeysSent, Screenshot};
use thaw::snapshot::catalog::{self, SnapshotInfo};
use thaw::snapshot::take::{self, SnapshotReport, SnapshotRequest};
use thaw::{Accel, Home, SnapshotTag, VmName};
use thaw_daemon::client::Client;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::remote;
pub(crate) use crate::transfer::Exported;

/// What a command asks of thaw, wherever it runs.
pub(crate) trait Ops {
    /// Boots what `options` describe (progress lines on stderr unless `json`).
    async fn boot(&self, options: BootOptions, json: bool) -> Result<BootReport>;
    /// Runs a command in the guest, its output sent to `out` as it comes; its exit code.
    async fn exec_stream(
        &self,
        name: &VmName,
        spec: &ExecSpec,
        stdin: Option<&mut (dyn AsyncRead + Unpin + Send)>,
        out: mpsc::Sender<ExecEvent>,
    ) -> Result<i32>;
    /// Copies `src` into guest file `path` (or `path/file_name` if it is a directory).
    async fn upload(
        &self,
        name: &VmName,
        src: &mut (dyn AsyncRead + Unpin + Send),
        path: &str,
        file_name: &str,
        mode: u32,
    ) -> Result<Copied>;
    /// Copies guest file `path` to `dst`.
    async fn download(
        &self,
        name: &VmName,
        path: &str,
        dst: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<Copied>;
    async fn snapshot(&self, req: &SnapshotRequest) -> Result<SnapshotReport>;
    async fn restore(&self, req: &RestoreRequest) -> Result<Vec<CloneReport>>;
    async fn reset(&self, req: &ResetRequest) -> Result<ResetReport>;
    async fn list(&self) -> Result<Vec<VmInfo>>;
    /// The names of every VM (cheaper than [`Ops::list`] where it can be).
    async fn vm_names(&self) -> Result<Vec<VmName>>;
    async fn snapshots(&self) -> Result<Vec<SnapshotInfo>>;
    async fn stop(&self, name: &VmName) -> Result<()>;
    /// Sets a VM's time to live to `ttl` from now.
    async fn set_ttl(&self, name: &VmName, ttl: std::time::Duration) -> Result<VmInfo>;
    async fn pause(&self, name: &VmName) -> Result<()>;
    async fn resume(&self, name: &VmName) -> Result<()>;
    async fn remove_snapshot(&self, tag: &SnapshotTag, recursive: bool)
        -> Result<Vec<SnapshotTag>>;
    async fn set_pool(&self, tag: &SnapshotTag, config: PoolConfig) -> Result<PoolStatus>;
    async fn pools(&self) -> Result<Vec<PoolStatus>>;
    /// Follows the daemon's events: `each` gets every one until the daemon ends the
    /// stream or `each` returns false.
    async fn events(&self, each: &mut dyn FnMut(serde_json::Value) -> bool) -> Result<()>;
    /// A VM's console: `each` gets its bytes (`true`: the whole of it at once), and with
    /// `follow` what the guest writes next until the VM ends.
    async fn console(
        &self,
        name: &VmName,
        follow: bool,
        each: &mut dyn FnMut(&[u8], bool) -> Result<()>,
    ) -> Result<()>;
    /// Writes a PNG of the VM's screen to `file`.
    async fn screenshot(&self, name: &VmName, file: &std::path::Path) -> Result<Screenshot>;
    /// Types `text` (`Ok(..)`) or presses key combinations (`Err(..)`) on its keyboard.
    async fn keys(&self, name: &VmName, what: Result<&str, &[String]>) -> Result<KeysSent>;
    /// The daemon these operations go to, if they go to one.
    fn daemon(&self) -> Option<&Client> {
        None
    }
    /// Pushes (`pull` false) or pulls a snapshot to or from `remote` (`s3://...`).
    async fn transfer(
        &self,
        pull: bool,
        tag: &SnapshotTag,
        remote: &str,
        json: bool,
    ) -> Result<thaw::store::TransferReport>;
    /// Writes snapshot `tag` as one file at `file` (here).
    async fn export(&self, tag: &SnapshotTag, file: &std::path::Path) -> Result<Exported>;
    /// Imports the file `file` (here) `thaw export` wrote; the snapshot's tag.
    async fn import(&self, file: &std::path::Path) -> Result<SnapshotTag>;
    /// A VM named `name`, else a snapshot tagged `name`.
    async fn inspect(&self, name: &str) -> Result<thaw::control::Inspection>;
    /// `thaw up`: the boot through the cache (progress on stderr unless `json`).
    async fn up(&self, options: thaw::up::UpOptions, json: bool) -> Result<thaw::up::UpReport>;
}

/// The library, in this process. An interrupt (`cancel`) rolls back what it started.
pub(crate) struct Local {
    pub home: Home,
    pub cancel: CancellationToken,
    /// Whether the commands act on this host's home (no `-H`/`THAW_HOST`): then `thaw
    /// ls` and `thaw snapshots` also show the VMs parked here.
    pub parked_here: bool,
}

const POOLS_NEED_THE_DAEMON: &str = "warm pools live in the daemon: start it with `thaw serve`";

fn qemu() -> Result<Qemu> {
    Ok(Qemu::find(&thaw::guest::cache_dir())?)
}

impl Ops for Local {
    async fn boot(&self, options: BootOptions, json: bool) -> Result<BootReport> {
        let req = thaw::profile::resolve(options, Accel::detect(), &mut crate::progress(json))?;
        let qemu = qemu()?;
        Ok(thaw::boot::boot_cancellable(&self.home, &qemu, &req, &self.cancel).await?)
    }

    async fn exec_stream(
        &self,
        name: &VmName,
        spec: &ExecSpec,
        stdin: Option<&mut (dyn AsyncRead + Unpin + Send)>,
        out: mpsc::Sender<ExecEvent>,
    ) -> Result<i32> {
        Ok(thaw::guestio::exec::exec(&self.home, name, spec, stdin, out).await?)
    }

    async fn upload(
        &self,
        name: &VmName,
        src: &mut (dyn AsyncRead + Unpin + Send),
        path: &str,
        file_name: &str,
        mode: u32,
    ) -> Result<Copied> {
        let mut agent = files::connect(&self.home, name).await?;
        let path = files::target(&mut agent, path, file_name).await?;
        Ok(files::upload(&mut agent, src, &path, mode).await?)
    }

    async fn download(
        &self,
        name: &VmName,
        path: &str,
        dst: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<Copied> {
        let mut agent = files::connect(&self.home, name).await?;
        Ok(files::download(&mut agent, path, dst).await?)
    }

    async fn snapshot(&self, req: &SnapshotRequest) -> Result<SnapshotReport> {
        Ok(take::take_cancellable(&self.home, req, &self.cancel).await?)
    }

    async fn restore(&self, req: &RestoreRequest) -> Result<Vec<CloneReport>> {
        let qemu = qemu()?;
        let cancel = &self.cancel;
        Ok(thaw::restore::restore_cancellable(&self.home, &qemu, req, None, cancel).await?)
    }

    async fn reset(&self, req: &ResetRequest) -> Result<ResetReport> {
        let qemu = qemu()?;
        let cancel = &self.cancel;
        Ok(thaw::reset::reset_cancellable(&self.home, &qemu, req, None, cancel).await?)
    }

    async fn list(&self) -> Result<Vec<VmInfo>> {
        Ok(control::list(&self.home).await)
    }

    async fn vm_names(&self) -> Result<Vec<VmName>> {
        Ok(thaw::vm::list_names(&self.home))
    }

    async fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        Ok(catalog::list(&self.home))
    }

    async fn stop(&self, name: &VmName) -> Result<()> {
        Ok(control::stop(&self.home, name).await?)
    }

    async fn set_ttl(&self, name: &VmName, ttl: std::time::Duration) -> Result<VmInfo> {
        Ok(thaw::control::extend_ttl(&self.home, name, ttl).await?)
    }

    async fn pause(&self, name: &VmName) -> Result<()> {
        Ok(control::pause(&self.home, name).await?)
    }

    async fn resume(&self, name: &VmName) -> Result<()> {
        Ok(control::resume(&self.home, name).await?)
    }

    async fn remove_snapshot(
        &self,
        tag: &SnapshotTag,
        recursive: bool,
    ) -> Result<Vec<SnapshotTag>> {
        Ok(catalog::remove(&self.home, tag, recursive)?)
    }

    async fn set_pool(&self, _: &SnapshotTag, _: PoolConfig) -> Result<PoolStatus> {
        bail!(POOLS_NEED_THE_DAEMON)
    }

    async fn pools(&self) -> Result<Vec<PoolStatus>> {
        bail!(POOLS_NEED_THE_DAEMON)
    }

    async fn events(&self, _each: &mut dyn FnMut(serde_json::Value) -> bool) -> Result<()> {
        bail!("events come from the daemon: start it with `thaw serve` (or set THAW_HOST)")
    }

    async fn console(
        &self,
        name: &VmName,
        follow: bool,
        each: &mut dyn FnMut(&[u8], bool) -> Result<()>,
    ) -> Result<()> {
        let vm = thaw::vm::VmState::load(&self.home, name)?;
        let path = thaw::vm::VmPaths::new(&self.home, name).console();
        if !follow {
            return each(&thaw::console::read(&path), true);
        }
        // Until the VM ends (then what it wrote last), or Ctrl-C ends thaw.
        let mut console = thaw::console::Follow::new(&path);
        loop {
            let alive = vm.is_alive();
            let text = console.read_new()?;
            if !text.is_empty() {
                each(&text, false)?;
            }
            if !alive {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    async fn screenshot(&self, name: &VmName, file: &std::path::Path) -> Result<Screenshot> {
        Ok(thaw::screen::screenshot(&self.home, name, file).await?)
    }

    async fn keys(&self, name: &VmName, what: Result<&str, &[String]>) -> Result<KeysSent> {
        Ok(match what {
            Ok(text) => thaw::screen::type_text(&self.home, name, text).await?,
            Err(combos) => thaw::screen::send_keys(&self.home, name, combos).await?,
        })
    }

    async fn transfer(
        &self,
        pull: bool,
        tag: &SnapshotTag,
        remote: &str,
        _json: bool,
    ) -> Result<thaw::store::TransferReport> {
        let remote = thaw::store::Remote::from_env(remote)?;
        let mut bars = crate::progress::Bars::new();
        Ok(match pull {
            false => thaw::store::push(&self.home, tag, &remote, &mut bars).await?,
            true => thaw::store::pull(&self.home, tag, &remote, &mut bars).await?,
        })
    }

    async fn export(&self, tag: &SnapshotTag, file: &std::path::Path) -> Result<Exported> {
        let r = thaw::store::export(&self.home, tag, file, &mut crate::progress::Bars::new())?;
        Ok(Exported {
            chunks: r.chunks,
            bytes: r.file_bytes,
        })
    }

    async fn import(&self, file: &std::path::Path) -> Result<SnapshotTag> {
        Ok(thaw::store::import(
            &self.home,
            file,
            &mut crate::progress::Bars::new(),
        )?)
    }

    async fn inspect(&self, name: &str) -> Result<thaw::control::Inspection> {
        Ok(thaw::control::inspect(&self.home, name).await?)
    }

    async fn up(&self, options: thaw::up::UpOptions, json: bool) -> Result<thaw::up::UpReport> {
        let req = thaw::up::UpRequest {
            boot: thaw::profile::resolve(
                options.boot,
                Accel::detect(),
                &mut crate::progress(json),
            )?,
            remote: options
                .remote
                .map(|r| thaw::store::Remote::from_env(&r))
                .transpose()?,
        };
        let cache = thaw::guest::cache_dir();
        let qemu = Qemu::find(&cache)?;
        Ok(thaw::up::up(
            &self.home,
            &qemu,
            &cache,
            &req,
            &mut crate::progress::Bars::new(),
            &self.cancel,
        )
        .await?)
    }
}

impl Ops for Client {
    fn daemon(&self) -> Option<&Client> {
        Some(self)
    }

    async fn boot(&self, options: BootOptions, _: bool) -> Result<BootReport> {
        remote::boot(self, &options).await
    }

    async fn exec_stream(
        &self,
        name: &VmName,
        spec: &ExecSpec,
        stdin: Option<&mut (dyn AsyncRead + Unpin + Send)>,
        out: mpsc::Sender<ExecEvent>,
    ) -> Result<i32> {
        remote::exec_stream(self, name, spec, stdin, out).await
    }

    async fn upload(
        &self,
        name: &VmName,
        src: &mut (dyn AsyncRead + Unpin + Send),
        path: &str,
        file_name: &str,
        mode: u32,
    ) -> Result<Copied> {
        remote::upload(self, name, src, path, file_name, mode).await
    }

    async fn download(
        &self,
        name: &VmName,
        path: &str,
        dst: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<Copied> {
        remote::download(self, name, path, dst).await
    }

    async fn snapshot(&self, req: &SnapshotRequest) -> Result<SnapshotReport> {
        remote::snapshot(self, req).await
    }

    async fn restore(&self, req: &RestoreRequest) -> Result<Vec<CloneReport>> {
        remote::restore(self, req).await
    }

    async fn reset(&self, req: &ResetRequest) -> Result<ResetReport> {
        remote::reset(self, req).await
    }

    async fn list(&self) -> Result<Vec<VmInfo>> {
        remote::list(self).await
    }

    async fn vm_names(&self) -> Result<Vec<VmName>> {
        Ok(remote::list(self)
            .await?
            .into_iter()
            .map(|v| v.name)
            .collect())
    }

    async fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        remote::snapshots(self).await
    }

    async fn stop(&self, name: &VmName) -> Result<()> {
        remote::stop(self, name).await
    }

    async fn set_ttl(&self, name: &VmName, ttl: std::time::Duration) -> Result<VmInfo> {
        remote::set_ttl(self, name, ttl).await
    }

    async fn pause(&self, name: &VmName) -> Result<()> {
        remote::pause(self, name).await
    }

    async fn resume(&self, name: &VmName) -> Result<()> {
        remote::resume(self, name).await
    }

    async fn remove_snapshot(
        &self,
        tag: &SnapshotTag,
        recursive: bool,
    ) -> Result<Vec<SnapshotTag>> {
        remote::remove_snapshot(self, tag, recursive).await
    }

    async fn set_pool(&self, tag: &SnapshotTag, config: PoolConfig) -> Result<PoolStatus> {
        remote::set_pool(self, tag, config).await
    }

    async fn pools(&self) -> Result<Vec<PoolStatus>> {
        remote::pools(self).await
    }

    async fn events(&self, each: &mut dyn FnMut(serde_json::Value) -> bool) -> Result<()> {
        Ok(Client::events(self, each).await?)
    }

    async fn console(
        &self,
        name: &VmName,
        follow: bool,
        each: &mut dyn FnMut(&[u8], bool) -> Result<()>,
    ) -> Result<()> {
        remote::console(self, name, follow, each).await
    }

    async fn screenshot(&self, name: &VmName, file: &std::path::Path) -> Result<Screenshot> {
        remote::screenshot(self, name, file).await
    }

    async fn keys(&self, name: &VmName, what: Result<&str, &[String]>) -> Result<KeysSent> {
        remote::keys(self, name, what).await
    }

    async fn transfer(
        &self,
        pull: bool,
        tag: &SnapshotTag,
        remote: &str,
        json: bool,
    ) -> Result<thaw::store::TransferReport> {
        remote::transfer(self, pull, tag, remote, json).await
    }

    async fn export(&self, tag: &SnapshotTag, file: &std::path::Path) -> Result<Exported> {
        crate::transfer::export(self, tag, file).await
    }

    async fn import(&self, file: &std::path::Path) -> Result<SnapshotTag> {
        crate::transfer::import(self, file).await
    }

    async fn inspect(&self, name: &str) -> Result<thaw::control::Inspection> {
        crate::transfer::inspect(self, name).await
    }

    async fn up(&self, options: thaw::up::UpOptions, json: bool) -> Result<thaw::up::UpReport> {
        crate::transfer::up(self, &options, json).await
    }
}
