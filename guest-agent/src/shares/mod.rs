//! Shared folders in the guest (the protocol is `berth_protocol::shares`): the streams the
//! host's file server opens, the calls sent on them, and one FUSE mount per share at the
//! host's own path ([`fs`]).
//!
//! The host keeps several streams open; each is a [`Lane`]. A call goes out on the lane with
//! the fewest calls in flight, and the lane's reader hands the answer with its id straight to
//! the call's continuation (which answers the kernel): no task is woken per call, as each
//! wake-up is a context switch that costs tens of microseconds under emulation. When the last
//! lane goes (the transport restarts), calls wait a while for the host to come back before
//! they fail.

mod behind;
mod fs;
mod heads;
mod known;
mod memory;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use berth_protocol::shares::{self as proto, Message, Reply, Request, Share, Stale, errno, read_message};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::listen::BoxIo;

/// How long a call waits for a host that has gone (a transport that restarts comes back in
/// well under this).
const NO_HOST_WAIT: Duration = Duration::from_secs(30);
/// How long a call waits for its answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// What is done with a call's answer (or its errno).
pub type Then = Box<dyn FnOnce(Result<Reply, i32>) + Send>;

/// A call sent and not answered yet.
struct Waiting {
    then: Then,
    since: Instant,
    /// The notices seen when it was sent ([`known::Known::generation`]).
    generation: u64,
}

type Pending = Arc<Mutex<HashMap<u64, Waiting>>>;

/// One stream to the host's file server.
struct Lane {
    frames: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
    in_flight: AtomicUsize,
    /// The stream has ended; calls put in now are failed by their sender.
    closed: AtomicBool,
}

impl Lane {
    /// Hands call `id` its answer (once: a late or unknown answer is dropped).
    fn answered(&self, id: u64, result: Result<Reply, i32>) {
        self.answered_with(id, result, Vec::new(), None)
    }

    /// [`Self::answered`], after noting how the call left the directories it changed
    /// (`dirs`) in `known`.
    fn answered_with(&self, id: u64, result: Result<Reply, i32>, dirs: Vec<proto::Attr>, known: Option<&known::Known>) {
        // Taken out first: the continuation may make calls of its own.
        let waiting = self.pending.lock().expect("lock").remove(&id);
        if let Some(w) = waiting {
            if let Some(known) = known.filter(|_| !dirs.is_empty()) {
                known.dir_attrs(dirs, w.generation);
            }
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            (w.then)(result);
        }
    }
}

#[derive(Default)]
struct Inner {
    lanes: Mutex<Vec<Arc<Lane>>>,
    lane_added: tokio::sync::Notify,
    /// A host has said which shares there are (and they are mounted).
    greeted: std::sync::atomic::AtomicBool,
    ids: AtomicU64,
    /// Mounted shares by path, and the host's root node of each.
    mounts: Mutex<HashMap<String, Mounted>>,
    /// Where shares are mounted: at their own paths (in the VM), or below this directory (an
    /// agent on the same machine as the file server, in tests).
    prefix: Option<std::path::PathBuf>,
    /// The marks of the raises under way (see [`fs::raise`]), and the last one given.
    raises: Mutex<HashSet<u32>>,
    raise_seq: AtomicU32,
    /// Where host changes go to be raised, one at a time, by one thread.
    raiser: OnceLock<std::sync::mpsc::Sender<Notice>>,
    /// Gone nodes handed to the kernel under names of the agent's own, by directory and name,
    /// to be deleted there (see [`fs::bury`]).
    ghosts: Mutex<HashMap<(u64, Vec<u8>), proto::Attr>>,
    /// Directories whose whole listing the guest knows.
    known: known::Known,
    /// Calls answered before the host did them, and those that must follow them.
    behind: Mutex<behind::Behind<Then>>,
    /// The next node or handle number the guest chooses itself ([`proto::GUEST_NUMBERS`]).
    numbers: AtomicU64,
    /// The lane their batches go on while any is on its way (the host does a lane's batches
    /// in the order they came; lanes race each other).
    behind_lane: Mutex<Option<Arc<Lane>>>,
    /// Small files' contents that came with their opens.
    heads: Mutex<heads::Heads>,
    /// Told each time a batch is answered ([`Shares::settle`]).
    batch_answered: tokio::sync::Notify,
    /// The memory the host shares for data, once a hello has offered it and it was found.
    memory: Mutex<Option<Arc<memory::Region>>>,
    /// Where that memory is when not on a device (an agent on the host's machine: tests).
    memory_file: Option<PathBuf>,
}

struct Mounted {
    root: Arc<AtomicU64>,
    /// Where it is mounted writable here: its path, or for a read-only share a private place
    /// (host changes are raised through it).
    raise_at: PathBuf,
    notifier: Option<Arc<fs::Changes>>,
    /// A read-only share's view at its path (dropped before the session unmounts).
    _view: Option<fs::ReadOnlyView>,
    _session: fuser::BackgroundSession,
}

/// A change on the host, as the lane that read it hands it on.
struct Notice {
    root: u64,
    stale: Vec<Stale>,
    path: PathBuf,
}

/// The longest [`Shares::settle`] waits.
const SETTLE_WAIT: Duration = Duration::from_secs(60);

impl berth_runtime::engine::Settle for Shares {
    fn settled(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let me = self.clone();
        Box::pin(async move { me.settle().await })
    }
}

/// The guest's side of shared folders; cheap to clone.
#[derive(Clone, Default)]
pub struct Shares(Arc<Inner>);

impl Shares {
    /// Shares mounted at their paths below `prefix` rather than at the paths themselves.
    /// `memory_file`: the shared memory's file, when it is not the VM's device.
    pub fn below(prefix: Option<PathBuf>, memory_file: Option<PathBuf>) -> Shares {
        Shares(Arc::new(Inner { prefix, memory_file, ..Default::default() }))
    }

    /// A slot of the shared memory for one call's data, if there is memory and a free slot.
    fn slot(&self) -> Option<memory::Slot> {
        self.0.memory.lock().expect("lock").as_ref()?.slot()
    }

    /// Takes up the memory a hello offers (or none): the region found before if it is still
    /// the host's, else looked for anew.
    fn offered(&self, want: Option<&proto::Memory>) {
        let mut held = self.0.memory.lock().expect("lock");
        match want {
            Some(w) if held.as_ref().is_some_and(|r| r.holds(w)) => {}
            Some(w) => *held = memory::Region::find(w, self.0.memory_file.as_deref()),
            None => *held = None,
        }
    }

    /// Sends `request` to the host on the least busy lane; `then` gets the answer, on the
    /// lane's reader. With no lane (no host, or it is reconnecting), a task on `rt` waits a
    /// while for one. A call that must follow calls answered early goes in their queue
    /// ([`behind`]); `node` is the node a call by handle is about.
    pub fn call(&self, request: Request, node: Option<u64>, then: Then, rt: &tokio::runtime::Handle) {
        let mut queue = self.0.behind.lock().expect("lock");
        // Nothing queued (most of the time): nothing to follow, and no nodes to gather.
        if !queue.busy() {
            drop(queue);
            return self.call_now(request, then, rt);
        }
        let mut nodes = behind::named(&request);
        nodes.extend(node);
        if queue.must_follow(&request, &nodes) {
            // Nobody waits for a release or the kernel's forgets.
            let waited = !matches!(request, Request::Release { .. } | Request::Forget { .. });
            let batch = queue.push(request, nodes, then, waited);
            return self.send_batch(queue, batch, rt);
        }
        drop(queue);
        self.call_now(request, then, rt)
    }

    /// Queues `request`, which the caller has answered its kernel for already, to be done on
    /// the host in order with the other calls queued ([`behind`]). `then` gets the host's
    /// answer: when it is a refusal, what the guest told its kernel was wrong, and `then` must
    /// drop what the guest knows that the refusal belies.
    /// `node` is the node a call by handle is about.
    pub fn call_behind(&self, request: Request, node: Option<u64>, then: Then, rt: &tokio::runtime::Handle) {
        let mut nodes = behind::named(&request);
        nodes.extend(node);
        let mut queue = self.0.behind.lock().expect("lock");
        let batch = queue.push(request, nodes, then, false);
        self.send_batch(queue, batch, rt)
    }

    /// Done once every call answered early so far has been done on the host (or refused
    /// there): a container's changes are on the host before its exit is told
    /// ([`berth_runtime::engine::Settle`]). A host that does not answer for
    /// [`SETTLE_WAIT`] is not waited for longer (its calls fail with the lane).
    pub async fn settle(&self) {
        let pushed = self.0.behind.lock().expect("lock").pushed();
        let answered = async {
            loop {
                let notified = self.0.batch_answered.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.0.behind.lock().expect("lock").answered(pushed) {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(SETTLE_WAIT, answered).await.is_err() {
            tracing::warn!("shares: changes answered early are not all done on the host after {SETTLE_WAIT:?}");
        }
    }

    /// A node or handle number of the guest's own choosing (see [`proto::Request::CreateAs`]).
    fn new_number(&self) -> u64 {
        proto::GUEST_NUMBERS + self.0.numbers.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether removals answered early are queued or on their way to the host.
    fn removals_pending(&self) -> bool {
        self.0.behind.lock().expect("lock").removals_pending()
    }

    /// The bytes of writes answered early that are queued or on their way to the host.
    fn data_pending(&self) -> usize {
        self.0.behind.lock().expect("lock").data_pending()
    }

    /// Whether calls answered early are queued or on their way to the host.
    fn behind_busy(&self) -> bool {
        self.0.behind.lock().expect("lock").busy()
    }

    /// Sends a batch the queue handed out (if any); once it is answered, each call's
    /// continuation gets its own result and the next batch goes.
    ///
    /// It is put on its lane before `queue`, the lock it was taken under, is let go: batches
    /// must reach the host in the order they left the queue, and one taken by another thread
    /// in between would overtake it (the first version sent the next batch after the one
    /// before's continuations had run, and a write was done on the host after the release
    /// of its handle: `two_containers_write_one_file` lost appends).
    fn send_batch(
        &self,
        queue: std::sync::MutexGuard<'_, behind::Behind<Then>>,
        batch: Option<Vec<behind::Queued<Then>>>,
        rt: &tokio::runtime::Handle,
    ) {
        let Some(batch) = batch else { return };
        let mut nodes = Vec::new();
        let mut calls = Vec::with_capacity(batch.len());
        let mut thens = Vec::with_capacity(batch.len());
        for q in batch {
            nodes.extend(q.nodes);
            calls.push(q.request);
            thens.push(q.then);
        }
        let tally = behind::Tally::of(&calls);
        let (me, rt2) = (self.clone(), rt.clone());
        let lane = {
            let mut pinned = self.0.behind_lane.lock().expect("lock");
            match pinned.as_ref().filter(|l| !l.closed.load(Ordering::SeqCst)) {
                Some(l) => Some(l.clone()),
                None => {
                    *pinned = self.least_busy();
                    pinned.clone()
                }
            }
        };
        let then: Then = Box::new(move |r| {
            let n = thens.len();
            let results = match r {
                Ok(Reply::Batch(results)) if results.len() == n => results,
                Ok(other) => {
                    tracing::warn!(?other, "shares: a batch's answer is not one result per call");
                    vec![Err(errno::EIO); n]
                }
                Err(e) => vec![Err(e); n],
            };
            // The host has done the batch: calls naming its nodes may go straight on now, and
            // the next batch goes (its answer is read on this thread, after these have run).
            let mut queue = me.0.behind.lock().expect("lock");
            let next = queue.done(n, &nodes, tally);
            if !queue.busy() {
                // The next batch may take any lane.
                *me.0.behind_lane.lock().expect("lock") = None;
            }
            me.send_batch(queue, next, &rt2);
            for (then, r) in thens.into_iter().zip(results) {
                then(r);
            }
            me.0.batch_answered.notify_waiters();
        });
        let request = Request::Batch { calls };
        match lane {
            Some(lane) => {
                let failed = self.post(&lane, request, then);
                drop(queue);
                if let Some(id) = failed {
                    lane.answered(id, Err(errno::EIO));
                }
            }
            // No host (it is reconnecting): what waits for one may go in any order, as it
            // will fail or go to a host that starts afresh.
            None => {
                drop(queue);
                self.call_now(request, then, rt)
            }
        }
    }

    fn call_now(&self, request: Request, then: Then, rt: &tokio::runtime::Handle) {
        match self.least_busy() {
            Some(lane) => self.send(&lane, request, then),
            None => {
                let me = self.clone();
                rt.spawn(async move {
                    match me.lane().await {
                        Some(lane) => me.send(&lane, request, then),
                        None => then(Err(errno::EIO)),
                    }
                });
            }
        }
    }

    /// The lane with the fewest calls in flight, if there is one.
    fn least_busy(&self) -> Option<Arc<Lane>> {
        self.0.lanes.lock().expect("lock").iter().min_by_key(|l| l.in_flight.load(Ordering::Relaxed)).cloned()
    }

    fn send(&self, lane: &Lane, request: Request, then: Then) {
        if matches!(request, Request::Forget { .. } | Request::Release { .. }) {
            // Never answered.
            let id = self.0.ids.fetch_add(1, Ordering::Relaxed);
            let sent = lane.frames.send(proto::encode(&Message::Call { id, request })).is_ok();
            return then(if sent { Ok(Reply::Ok) } else { Err(errno::EIO) });
        }
        if let Some(id) = self.post(lane, request, then) {
            lane.answered(id, Err(errno::EIO));
        }
    }

    /// Puts a call that is answered on `lane`, its continuation waiting for the answer;
    /// returns its id if it must be failed (by the caller, outside any lock it holds: the
    /// continuation may take them).
    fn post(&self, lane: &Lane, request: Request, then: Then) -> Option<u64> {
        let id = self.0.ids.fetch_add(1, Ordering::Relaxed);
        let generation = self.0.known.generation();
        lane.pending.lock().expect("lock").insert(id, Waiting { then, since: Instant::now(), generation });
        lane.in_flight.fetch_add(1, Ordering::Relaxed);
        // A lane closing meanwhile fails what it holds once it is marked closed: a call put in
        // after that fails here, or no answer would ever come for it.
        let failed = lane.frames.send(proto::encode(&Message::Call { id, request })).is_err()
            || lane.closed.load(Ordering::SeqCst);
        failed.then_some(id)
    }

    /// Waits until a host has connected and its shares are mounted, for at most `within`;
    /// whether one has.
    pub async fn greeted(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.0.lane_added.notified();
            if self.0.greeted.load(Ordering::SeqCst) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.0.greeted.load(Ordering::SeqCst);
            }
        }
    }

    /// The least busy lane, waiting a while for one when there is none.
    async fn lane(&self) -> Option<Arc<Lane>> {
        let deadline = tokio::time::Instant::now() + NO_HOST_WAIT;
        loop {
            let notified = self.0.lane_added.notified();
            if let Some(l) = self.least_busy() {
                return Some(l);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// Serves one stream the host opened to the shares port, until it closes.
    pub async fn stream(&self, io: BoxIo) {
        let (mut rd, mut wr) = tokio::io::split(io);
        let shares = match read_message(&mut rd).await {
            Ok(Some(Message::Hello { version, shares, memory })) if version == proto::VERSION => {
                self.offered(memory.as_ref());
                shares
            }
            other => {
                tracing::warn!(?other, "shares: not a hello of version {}", proto::VERSION);
                return;
            }
        };
        if wr.write_all(&proto::encode(&Message::Ready { version: proto::VERSION })).await.is_err() {
            return;
        }
        // A host that connects anew may number its nodes anew.
        self.0.known.clear();
        self.mount_all(&shares);
        let (frames, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let lane = Arc::new(Lane {
            frames,
            pending: Pending::default(),
            in_flight: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        });
        // Calls the host never answers fail after a while (the lane stays).
        let sweeper = {
            let lane = lane.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(CALL_TIMEOUT / 4).await;
                    let late: Vec<u64> = {
                        let pending = lane.pending.lock().expect("lock");
                        pending.iter().filter(|(_, w)| w.since.elapsed() > CALL_TIMEOUT).map(|(id, _)| *id).collect()
                    };
                    for id in late {
                        tracing::warn!(id, "shares: the host did not answer a call");
                        lane.answered(id, Err(errno::EIO));
                    }
                }
            })
        };
        self.0.lanes.lock().expect("lock").push(lane.clone());
        self.0.greeted.store(true, Ordering::SeqCst);
        self.0.lane_added.notify_waiters();
        let writer = tokio::spawn(async move {
            while let Some(f) = rx.recv().await {
                if wr.write_all(&f).await.is_err() {
                    break;
                }
            }
        });
        loop {
            match read_message(&mut rd).await {
                Ok(Some(Message::Answer { id, result, dirs })) => {
                    lane.answered_with(id, result, dirs, Some(&self.0.known))
                }
                Ok(Some(Message::Changed { root, stale, path })) => self.changed(root, stale, &path),
                Ok(Some(other)) => tracing::warn!(?other, "shares: unexpected message from the host"),
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(error = %e, "shares stream failed");
                    break;
                }
            }
        }
        writer.abort();
        sweeper.abort();
        self.0.lanes.lock().expect("lock").retain(|l| !Arc::ptr_eq(l, &lane));
        // Calls waiting on this lane fail now rather than at their timeout.
        lane.closed.store(true, Ordering::SeqCst);
        let waiting: Vec<Waiting> = lane.pending.lock().expect("lock").drain().map(|(_, w)| w).collect();
        for w in waiting {
            (w.then)(Err(errno::EIO));
        }
        tracing::info!("shares stream closed");
    }

    /// Mounts every share not mounted yet, at its path.
    fn mount_all(&self, shares: &[Share]) {
        let mut mounts = self.0.mounts.lock().expect("lock");
        for share in shares {
            if let Some(m) = mounts.get(&share.path) {
                // The same share again (another lane, or the host reconnected).
                m.root.store(share.root, Ordering::Relaxed);
                continue;
            }
            let at = match &self.0.prefix {
                Some(p) => p.join(share.path.trim_start_matches('/')),
                None => std::path::PathBuf::from(&share.path),
            };
            // A read-only share is mounted writable where only the agent sees it, and shown
            // at its path through a read-only bind: the kernel refuses writes there (EROFS,
            // `access(W_OK)` too) while raises of host changes, which set a time, still have
            // a writable mount to go through (the host refuses writes to it in any case).
            let private = share.read_only.then(|| {
                let base = match &self.0.prefix {
                    Some(p) => p.join(".writable"),
                    None => PathBuf::from("/run/berth/shares"),
                };
                base.join(mounts.len().to_string())
            });
            let mounted = fs::mount(self.clone(), share, private.as_deref().unwrap_or(&at)).and_then(|m| {
                let view = match &private {
                    Some(p) => Some(fs::ReadOnlyView::bind(p, &at)?),
                    None => None,
                };
                Ok((m, view))
            });
            match mounted {
                Ok(((root, session, notifier), view)) => {
                    tracing::info!(path = %share.path, read_only = share.read_only, "shared folder mounted");
                    let raise_at = private.unwrap_or(at);
                    mounts.insert(
                        share.path.clone(),
                        Mounted { root, raise_at, notifier: notifier.map(Arc::new), _view: view, _session: session },
                    );
                }
                Err(e) => tracing::error!(path = %share.path, error = %e, "mounting a shared folder"),
            }
        }
    }

    /// The host says something in share `root` changed behind the guest's back: the kernel's
    /// caches of it go, and the change is raised at `path` for the containers' watchers.
    ///
    /// Both happen on a thread of their own, never on the lane that read the notice: the
    /// kernel takes a directory's lock to drop an entry from it, and a lookup in that
    /// directory holds the lock until its answer comes, on a lane.
    fn changed(&self, root: u64, stale: Vec<Stale>, path: &[u8]) {
        use std::os::unix::ffi::OsStrExt;
        // At once, on the lane's reader: a lookup answered from what the guest knows after
        // this point must not use what the notice made wrong.
        {
            let mut heads = self.heads();
            for s in &stale {
                heads.changed(s.node);
                if s.gone != 0 {
                    heads.changed(s.gone);
                }
            }
        }
        for s in &stale {
            self.forget_nodes(self.0.known.stale(s.node));
        }
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(path));
        let raiser = self.0.raiser.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<Notice>();
            let me = self.clone();
            std::thread::spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    // A burst (a checkout, a build's output) is raised once per path.
                    let (mut raise, mut seen) = (Vec::new(), HashSet::new());
                    for n in batch {
                        let found = {
                            let mounts = me.0.mounts.lock().expect("lock");
                            mounts
                                .values()
                                .find(|m| m.root.load(Ordering::Relaxed) == n.root)
                                .map(|m| (m.notifier.clone(), m.raise_at.clone()))
                        };
                        let Some((notifier, at)) = found else { continue };
                        if let Some(notifier) = notifier {
                            for s in &n.stale {
                                if notifier.changed(s, n.root) {
                                    fs::bury(&me, &notifier, &at, n.path.parent(), s, n.root);
                                }
                            }
                        }
                        if seen.insert((at.clone(), n.path.clone())) {
                            raise.push((at, n.path));
                        }
                    }
                    for (at, path) in raise {
                        fs::raise(&me, &at, &path);
                    }
                }
            });
            tx
        });
        let _ = raiser.send(Notice { root, stale, path });
    }

    /// The gone node to answer a lookup of `name` in `dir` with, while it is being buried.
    fn ghost(&self, dir: u64, name: &[u8]) -> Option<proto::Attr> {
        let ghosts = self.0.ghosts.lock().expect("lock");
        if ghosts.is_empty() {
            return None;
        }
        ghosts.get(&(dir, name.to_vec())).cloned()
    }

    /// Lookups of `name` in `dir` are answered with gone node `attr` (`None`: no more).
    fn haunt(&self, dir: u64, name: &[u8], attr: Option<proto::Attr>) {
        let mut ghosts = self.0.ghosts.lock().expect("lock");
        match attr {
            Some(a) => ghosts.insert((dir, name.to_vec()), a),
            None => ghosts.remove(&(dir, name.to_vec())),
        };
    }

    /// The directories whose listing the guest knows.
    fn known(&self) -> &known::Known {
        &self.0.known
    }

    fn heads(&self) -> std::sync::MutexGuard<'_, heads::Heads> {
        self.0.heads.lock().expect("lock")
    }

    /// Gives back to the host one lookup of each of `nodes` (entries it sent that the kernel
    /// never got). With no lane there is no host holding them.
    fn forget_nodes(&self, nodes: Vec<u64>) {
        if nodes.is_empty() {
            return;
        }
        let Some(lane) = self.least_busy() else { return };
        let mut counts: HashMap<u64, u64> = HashMap::new();
        for n in nodes {
            *counts.entry(n).or_default() += 1;
        }
        self.send(&lane, Request::Forget { nodes: counts.into_iter().collect() }, Box::new(|_| {}));
    }

    /// A new mark for a raise (never 0), counted as under way until [`Shares::raised`].
    fn raise_mark(&self) -> u32 {
        let mark = self.0.raise_seq.fetch_add(1, Ordering::Relaxed) % 999_999_999 + 1;
        self.0.raises.lock().expect("lock").insert(mark);
        mark
    }

    fn raised(&self, mark: u32) {
        self.0.raises.lock().expect("lock").remove(&mark);
    }

    /// Whether a modification time of `nanos` past the epoch is the mark of a raise under way.
    fn is_raise(&self, nanos: u32) -> bool {
        self.0.raises.lock().expect("lock").contains(&nanos)
    }
}
