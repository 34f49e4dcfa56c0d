//! The engine: the one face the API layer calls. Each method validates, delegates to the
//! stores and the container machinery, and returns an [`EngineError`] whose [`ErrorKind`] the
//! API maps to a status code in exactly one place.

mod archive;
mod containers;
mod exec;
mod health;
mod images;
mod io;
mod mounts;
mod networks;
mod stats;
mod update;
mod volumes;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;

pub use archive::CommitOptions;
pub use containers::{CreateRequest, WaitCondition, console_size, links_of_record};
pub use exec::{ExecConfig, ExecInfo};
pub use images::RemovedImage;
pub use io::{AttachIo, LogStream};
pub use networks::{IpamInfo, NetworkCreate, NetworkInfo, PoolRequest, mode_name, on_network};
pub use stats::StatsSample;
pub use update::{Change, ChangeKind, Update};
pub use volumes::VolumeInfo;

use crate::Stores;
use crate::container::launch::{BoxWrite, HelperCommand, LaunchError, Pty};
use crate::container::logs::Stream;
use crate::container::{ContainerRecord, SpecError};
use crate::content::ContentStore;
use crate::image::{ImageError, ImageStore};
use crate::snapshot::SnapshotStore;
use crate::volume::{VolumeError, VolumeStore};

/// How the engine is set up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where all state lives.
    pub root: PathBuf,
    /// How to start the single-threaded helper that creates container processes.
    pub helper: HelperCommand,
    /// Registries to reach over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// See [`Stores::host_loopback`].
    pub host_loopback: Option<String>,
    /// The bridge network containers join by default.
    pub bridge: BridgeConfig,
}

/// The default bridge network's settings.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    pub name: String,
    pub gateway: std::net::Ipv4Addr,
    pub prefix: u8,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig { name: "berth0".into(), gateway: std::net::Ipv4Addr::new(172, 29, 0, 1), prefix: 16 }
    }
}

/// The class of an engine error, for the API to pick a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    Unauthorized,
    Conflict,
    InvalidArgument,
    NotModified,
    Forbidden,
    Internal,
}

/// Errors of engine operations.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotModified(String),
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Network(Box<crate::network::NetworkError>),
    #[error(transparent)]
    Security(#[from] crate::container::security::SecurityError),
    #[error("setting up the container's cgroup")]
    Cgroup(#[from] crate::container::cgroup::CgroupError),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Work handed to a blocking thread panicked or was cancelled.
    #[error("an engine task failed")]
    Task(#[from] tokio::task::JoinError),
    /// A build's `RUN` failed: dockerd's message, and the exit code the client passes on.
    #[error("{message}")]
    CommandFailed { message: String, code: i64 },
}

impl EngineError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::NotFound(_) => ErrorKind::NotFound,
            EngineError::Conflict(_) => ErrorKind::Conflict,
            EngineError::InvalidArgument(_) | EngineError::Spec(_) | EngineError::CommandFailed { .. } => {
                ErrorKind::InvalidArgument
            }
            EngineError::NotModified(_) => ErrorKind::NotModified,
            EngineError::Forbidden(_) => ErrorKind::Forbidden,
            EngineError::Image(e) => match e {
                ImageError::NotFound(_)
                | ImageError::NoLocalTag(_)
                | ImageError::ManifestUnknown(_)
                | ImageError::WrongPlatform { .. }
                | ImageError::Denied { .. } => ErrorKind::NotFound,
                ImageError::InvalidReference(_)
                | ImageError::Invalid(_)
                | ImageError::NoPlatform { .. }
                | ImageError::BadPlatform(_) => ErrorKind::InvalidArgument,
                ImageError::Conflict(_) => ErrorKind::Conflict,
                ImageError::Unauthorized(_) => ErrorKind::Unauthorized,
                _ => ErrorKind::Internal,
            },
            EngineError::Volume(e) => match e {
                VolumeError::NotFound(_) => ErrorKind::NotFound,
                VolumeError::InvalidName(_) | VolumeError::BadOption { .. } | VolumeError::NoQuota => {
                    ErrorKind::InvalidArgument
                }
                VolumeError::InUse { .. } => ErrorKind::Conflict,
                VolumeError::Io { .. } | VolumeError::Mount { .. } => ErrorKind::Internal,
            },
            EngineError::Launch(
                LaunchError::Start { missing_command: true, .. } | LaunchError::ExecStart { missing_command: true, .. },
            ) => ErrorKind::InvalidArgument,
            EngineError::Network(e) if matches!(**e, crate::network::NetworkError::BadPort(_)) => {
                ErrorKind::InvalidArgument
            }
            EngineError::Security(e) => {
                use crate::container::seccomp::SeccompError as Sc;
                use crate::container::security::SecurityError as S;
                match e {
                    S::UnknownCapability { .. } | S::BadOption { .. } | S::DeviceInfo { .. } => {
                        ErrorKind::InvalidArgument
                    }
                    S::Seccomp(Sc::Decode(_) | Sc::Invalid(_)) => ErrorKind::InvalidArgument,
                    S::Device(crate::container::devices::DeviceError::BadRule(_)) => ErrorKind::InvalidArgument,
                    S::Seccomp(_) | S::Device(_) => ErrorKind::Internal,
                }
            }
            EngineError::Launch(_)
            | EngineError::Io { .. }
            | EngineError::Network(_)
            | EngineError::Cgroup(_)
            | EngineError::Task(_) => ErrorKind::Internal,
        }
    }
}

/// The ports a container record publishes, each with the container address it leads to.
fn published_of(r: &ContainerRecord) -> Vec<(crate::network::ports::HostPort, std::net::SocketAddr)> {
    let Ok(ip) = r.net.ip.parse::<std::net::IpAddr>() else { return vec![] };
    let mut out = Vec::new();
    for (key, bindings) in &r.net.ports {
        let (cport, proto) = key.split_once('/').unwrap_or((key, "tcp"));
        let Ok(cport) = cport.parse::<u16>() else { continue };
        for b in bindings {
            if let (Ok(hip), Ok(hport)) = (b.host_ip.parse(), b.host_port.parse()) {
                let p = crate::network::ports::HostPort { proto: proto.to_owned(), ip: hip, port: hport };
                out.push((p, std::net::SocketAddr::new(ip, cport)));
            }
        }
    }
    out
}

/// Runs `f` (filesystem work that may take long: a tree removed, walked or written) on one
/// of tokio's blocking threads, so the runtime's few workers go on answering other requests.
pub(crate) async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, EngineError>
where
    T: Send + 'static,
    E: Into<EngineError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await?.map_err(Into::into)
}

pub(crate) fn io_ctx(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> EngineError {
    let context = context.into();
    move |source| EngineError::Io { context, source }
}

/// Output of a running container, fanned out to attached clients.
#[derive(Debug, Clone)]
pub enum Output {
    Data(Stream, Bytes),
    /// The process's output ended (it exited).
    End,
}

/// What wait conditions watch: bumped on every exit, and set on removal.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lifecycle {
    pub exits: u64,
    pub exit_code: i64,
    pub removed: bool,
}

/// See [`Ctr::stdin`].
pub(crate) struct StdinQueue {
    pub tx: tokio::sync::mpsc::UnboundedSender<Option<Bytes>>,
    pub rx: Option<tokio::sync::mpsc::UnboundedReceiver<Option<Bytes>>>,
}

impl StdinQueue {
    pub fn new() -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        StdinQueue { tx, rx: Some(rx) }
    }

    /// Feeds queued input to `w` until the queue says close (or the process is gone).
    pub fn pump(&mut self, mut w: Option<BoxWrite>) {
        let Some(mut rx) = self.rx.take() else { return };
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Some(msg) = rx.recv().await {
                match (msg, w.as_mut()) {
                    (Some(data), Some(out)) => {
                        if out.write_all(&data).await.is_err() {
                            w = None;
                        }
                    }
                    (None, _) => break,
                    (Some(_), None) => {}
                }
            }
            if let Some(mut out) = w {
                let _ = out.shutdown().await;
            }
        });
    }
}

/// A container the engine holds: its record plus the live plumbing of a running process.
pub(crate) struct Ctr {
    pub rec: Mutex<ContainerRecord>,
    pub dir: PathBuf,
    pub output: Arc<io::Fanout>,
    /// Input for the container's stdin. Attach may write before the process exists (`docker
    /// run -i` attaches, then starts), so input queues here and a pump started with the process
    /// feeds it; `None` closes the process's stdin. A fresh queue is made for every run.
    pub stdin: Mutex<StdinQueue>,
    pub pty: Mutex<Option<Pty>>,
    pub life: watch::Sender<Lifecycle>,
    /// Serialises start, stop and remove of this container.
    pub op: tokio::sync::Mutex<()>,
    pub cgroup: Mutex<Option<crate::container::cgroup::Cgroup>>,
    /// Listeners of the published ports while it runs.
    pub published: Mutex<Option<crate::network::ports::Published>>,
    /// What its processes run under while it runs (`exec` takes the same).
    pub confinement: Mutex<Option<crate::container::security::Confinement>>,
}

impl Ctr {
    fn new(rec: ContainerRecord, dir: PathBuf) -> Arc<Ctr> {
        Arc::new(Ctr {
            rec: Mutex::new(rec),
            dir,
            output: Arc::new(io::Fanout::default()),
            stdin: Mutex::new(StdinQueue::new()),
            pty: Mutex::new(None),
            life: watch::channel(Lifecycle::default()).0,
            op: tokio::sync::Mutex::new(()),
            cgroup: Mutex::new(None),
            published: Mutex::new(None),
            confinement: Mutex::new(None),
        })
    }

    pub fn snapshot(&self) -> ContainerRecord {
        self.rec.lock().expect("container lock").clone()
    }

    /// Applies `f` to the record and writes it durably.
    pub fn update(&self, f: impl FnOnce(&mut ContainerRecord)) -> Result<ContainerRecord, EngineError> {
        let mut rec = self.rec.lock().expect("container lock");
        f(&mut rec);
        let path = self.dir.join("config.json");
        crate::fsutil::write_atomic(&path, &serde_json::to_vec_pretty(&*rec).expect("record serialises"))
            .map_err(io_ctx(format!("saving container {}", rec.id)))?;
        Ok(rec.clone())
    }
}

pub(crate) struct Inner {
    pub root: PathBuf,
    pub stores: Stores,
    pub volumes: VolumeStore,
    pub helper: HelperCommand,
    pub containers: Mutex<BTreeMap<String, Arc<Ctr>>>,
    pub execs: Mutex<HashMap<String, Arc<exec::Exec>>>,
    pub shutting_down: AtomicBool,
    pub bridge: Arc<crate::network::Bridge>,
    /// User-defined networks by ID.
    pub networks: Mutex<BTreeMap<String, Arc<crate::network::user::UserNetwork>>>,
    pub network_store: crate::network::user::NetworkStore,
    pub events: crate::events::Events,
    /// The user's machine's side of published ports, when the engine runs in a VM.
    pub host_side: Mutex<Option<Arc<dyn crate::network::ports::HostSide>>>,
    /// The classic builder's layer cache.
    pub build_cache: Mutex<crate::build::cache::BuildCache>,
    /// File systems whose changes reach their store behind the calls that made them.
    pub settle: Mutex<Option<Arc<dyn Settle>>>,
}

/// File systems whose changes reach where they are kept after the calls that made them
/// returned: the VM's shared folders, which answer removals, attribute changes and small
/// writes before the user's machine has done them. The engine waits on them when a
/// container's or an exec's process exits, before the exit is reported, so that what a
/// container left in a shared folder is on the user's machine when `docker run` returns.
pub trait Settle: Send + Sync {
    /// Done once every change made before the call has reached its store (or failed there).
    fn settled(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
}

/// The engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("root", &self.inner.root).finish()
    }
}

impl Engine {
    /// Opens the engine on `config.root`, finding every image, container and volume again.
    pub fn open(config: EngineConfig) -> Result<Engine, EngineError> {
        let root = &config.root;
        std::fs::create_dir_all(root).map_err(io_ctx(format!("creating {}", root.display())))?;
        let stores = Stores {
            content: ContentStore::open(&root.join("content")).map_err(ImageError::from)?,
            snapshots: SnapshotStore::open(&root.join("snapshots")).map_err(ImageError::from)?,
            images: Arc::new(Mutex::new(ImageStore::open(&root.join("images"))?)),
            insecure_registries: Arc::new(config.insecure_registries.clone()),
            host_loopback: config.host_loopback.as_deref().map(Arc::from),
        };
        let (network_store, network_records) = crate::network::user::NetworkStore::open(&root.join("networks"))
            .map_err(|e| EngineError::Network(Box::new(e)))?;
        let engine = Engine {
            inner: Arc::new(Inner {
                root: root.clone(),
                stores,
                volumes: VolumeStore::open(&root.join("volumes"))?,
                helper: config.helper,
                containers: Mutex::new(BTreeMap::new()),
                execs: Mutex::new(HashMap::new()),
                shutting_down: AtomicBool::new(false),
                events: crate::events::Events::default(),
                bridge: Arc::new(crate::network::Bridge::new(
                    &config.bridge.name,
                    config.bridge.gateway,
                    config.bridge.prefix,
                )),
                networks: Mutex::new(BTreeMap::new()),
                network_store,
                host_side: Mutex::new(None),
                build_cache: Mutex::new(crate::build::cache::BuildCache::open(&root.join("builder"))?),
                settle: Mutex::new(None),
            }),
        };
        for rec in network_records {
            engine.insert_network(rec);
        }
        engine.load_containers()?;
        Ok(engine)
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub fn stores(&self) -> &Stores {
        &self.inner.stores
    }

    /// Registries pulled from and pushed to over plain HTTP (loopback ones always are).
    pub fn insecure_registries(&self) -> &[String] {
        &self.inner.stores.insecure_registries
    }

    pub fn events(&self) -> &crate::events::Events {
        &self.inner.events
    }

    /// Has published ports listened on by `host` too (the user's machine, from the VM), for
    /// every container started from now on.
    pub fn set_host_side(&self, host: Arc<dyn crate::network::ports::HostSide>) {
        *self.inner.host_side.lock().expect("lock") = Some(host);
    }

    /// Has the engine wait on `files` before it reports a process's exit ([`Settle`]).
    pub fn set_settle(&self, files: Arc<dyn Settle>) {
        *self.inner.settle.lock().expect("lock") = Some(files);
    }

    /// Waits until what processes wrote through file systems that settle later is where it
    /// is kept ([`Settle`]).
    pub(crate) async fn settle_files(&self) {
        let files = self.inner.settle.lock().expect("lock").clone();
        if let Some(files) = files {
            files.settled().await;
        }
    }

    /// Every port the running containers publish, as the listening side sees them.
    pub fn published_ports(&self) -> Vec<crate::network::ports::HostPort> {
        let mut out: Vec<_> = self
            .containers()
            .into_iter()
            .filter(|r| r.running())
            .flat_map(|r| published_of(&r).into_iter().map(|(p, _)| p))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The container address a published port leads to, if a running container publishes it.
    pub fn published_target(&self, port: &crate::network::ports::HostPort) -> Option<std::net::SocketAddr> {
        self.containers()
            .into_iter()
            .filter(|r| r.running())
            .flat_map(|r| published_of(&r))
            .find_map(|(p, target)| (p == *port).then_some(target))
    }

    /// Emits a container event with dockerd's attributes (image, name, labels, extras).
    pub(crate) fn container_event(&self, rec: &ContainerRecord, action: &str, extra: &[(&str, &str)]) {
        let mut attrs: Vec<(&str, &str)> = vec![("image", rec.config.image.as_str()), ("name", rec.name.as_str())];
        attrs.extend(rec.config.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        attrs.extend_from_slice(extra);
        self.inner.events.emit("container", action, &rec.id, &attrs);
    }
}
