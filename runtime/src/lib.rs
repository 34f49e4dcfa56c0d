//! Berth's container engine: everything between "a Docker API request was parsed" and "the
//! kernel runs a process". It knows nothing of HTTP or VMs, and runs on any Linux.
//!
//! ```text
//!   Engine ── images ──► ImageStore (metadata) ──► ContentStore (blobs by digest)
//!     │                      pull / unpack ─────► SnapshotStore (overlay layers)
//!     ├──── containers ──► container::{spec, shim (single-threaded helper), logs}
//!     ├──── volumes ─────► VolumeStore
//!     └──── networks ────► network (bridge, NAT, published ports)
//! ```

pub mod build;
pub mod container;
pub mod content;
pub mod engine;
pub mod events;
pub mod fsutil;
pub mod image;
pub mod model;
pub mod names;
pub mod network;
pub mod snapshot;
pub mod volume;

use std::sync::{Arc, Mutex};

pub use engine::{BridgeConfig, Engine, EngineConfig, EngineError};

/// The stores every part of the engine shares; cheap to clone.
#[derive(Debug, Clone)]
pub struct Stores {
    pub content: content::ContentStore,
    pub snapshots: snapshot::SnapshotStore,
    pub images: Arc<Mutex<image::ImageStore>>,
    /// Registries (host[:port]) to reach over plain HTTP besides loopback ones.
    pub insecure_registries: Arc<Vec<String>>,
    /// Where the machine the user sits at is reached, when the engine runs in a VM (QEMU's
    /// user network: 10.0.2.2). Registries on loopback (`127.0.0.1:5000`, `localhost:5000`)
    /// mean the user's machine, so pulls from them go there.
    pub host_loopback: Option<Arc<str>>,
}
