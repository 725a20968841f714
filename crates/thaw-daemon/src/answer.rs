//! The daemon's own answers (those that are not a report of the library): typed, so
//! that the handlers and the OpenAPI document (see [`crate::openapi`]) say the same.

use serde::{Deserialize, Serialize};
use thaw::{SnapshotTag, VmName};
use utoipa::ToSchema;

/// `GET /v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: HealthStatus,
    /// The daemon's version.
    pub version: String,
    /// The daemon's process id.
    pub pid: u32,
    /// VMs the daemon answers for.
    pub vms: u32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Ok,
}

/// `DELETE /v1/vms/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Stopped {
    pub stopped: VmName,
}

/// `POST /v1/vms/{name}/pause`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Paused {
    pub paused: VmName,
}

/// `POST /v1/vms/{name}/resume`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Resumed {
    pub resumed: VmName,
}

/// `DELETE /v1/snapshots/{tag}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Removed {
    /// The tags removed, children before their parents.
    pub removed: Vec<SnapshotTag>,
}

/// Every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Error {
    /// What was wrong and what to do, on one line.
    pub error: String,
}

/// `POST /v1/vms/{name}/ttl`'s body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"ttl": "10m"}))]
pub struct TtlOptions {
    /// The new time to live, from now: `30s`, `10m`, `2h`, `1d` or a bare number of
    /// seconds.
    pub ttl: String,
}
