//! Calls the guest answers before the host has done them ("write-behind"), and the order the
//! host does them in.
//!
//! A trip to the host costs a millisecond or more under emulation, and some calls have an
//! outcome the guest knows before the host does: removing a name the guest's kernel holds,
//! in a directory the host watches and the guest has changed before (so it knows the
//! directory's attributes). `rm -rf` of a tree made one such trip per file. Those calls are
//! answered to the kernel at once and queued here; the queue goes to the host in
//! [`Request::Batch`]es, all on one stream while any is on its way, which the host does one
//! after another in the order they came. While one is on its way, what the guest queues
//! meanwhile waits for its answer and goes in the next, unless the guest waits for one of
//! those calls (then a second goes at once; never more than [`MAX_ON_WAY`]) or they fill a
//! frame. So a burst of removals or new files costs a trip per batch, not per file, and each
//! batch is as large as what the guest did during the trip before: each batch costs the
//! emulated guest as much CPU as a call of its own (a frame through its console each way, and
//! the wake-ups), and the first version, which sent a batch whenever fewer than two were on
//! their way, sent one for every two calls of an untar.
//!
//! Order is what keeps this true. A call that names a node a queued call names (a lookup in a
//! directory a removal is under way in, the kernel forgetting it, a read of the file) goes in
//! the queue behind it rather than straight to the host, and so do removals of directories and
//! renames while anything is queued (they name directories by name, not by node), calls
//! answered with a node's attributes while a removal is (its link count may be the old one),
//! and lookups and listings while an attribute change is; everything else goes straight on,
//! unordered, as before. Such a call is sent at once behind the
//! batches on their way if there is room, else rides in the next.
//!
//! A call answered early that the host then refuses is logged, and what the guest knows of
//! its directory is dropped, so the next look finds the name as the host has it (see
//! [`super::Shares::call_behind`]). Only calls whose failure loses nothing go behind: a name
//! left in place, never data.

use std::collections::{HashMap, VecDeque};

use berth_protocol::shares::{MAX_IO, Request};

/// The most calls in one batch.
const MAX_CALLS: usize = 1024;
/// The most batches on their way at once.
pub const MAX_ON_WAY: usize = 2;

/// A call in the queue: the request, the nodes it names, what the caller left with it (its
/// continuation), and whether the guest waits for its answer.
pub struct Queued<T> {
    pub request: Request,
    pub nodes: Vec<u64>,
    pub then: T,
    waited: bool,
}

/// The queue, and the batch on its way.
pub struct Behind<T> {
    queue: VecDeque<Queued<T>>,
    /// Batches on their way to the host.
    on_way: usize,
    /// How many queued or sent calls name each node.
    nodes: HashMap<u64, usize>,
    /// What the queued or sent calls do that others must not overtake ([`Tally`]).
    tally: Tally,
    /// How many queued calls the guest waits for, and how much the queued calls weigh
    /// ([`weight`]).
    waited: usize,
    weight: usize,
    /// Calls queued so far, and answered so far: batches are answered in the order they
    /// went, and take the oldest calls, so every call up to the `answered`th is done.
    pushed: u64,
    answered: u64,
}

impl<T> Default for Behind<T> {
    fn default() -> Self {
        Behind {
            queue: VecDeque::new(),
            on_way: 0,
            nodes: HashMap::new(),
            tally: Tally::default(),
            waited: 0,
            weight: 0,
            pushed: 0,
            answered: 0,
        }
    }
}

/// The nodes `r` names itself (calls by handle name none: their callers add the node).
pub fn named(r: &Request) -> Vec<u64> {
    match r {
        Request::Lookup { parent, .. }
        | Request::Survey { parent, .. }
        | Request::MkNod { parent, .. }
        | Request::MkDir { parent, .. }
        | Request::Unlink { parent, .. }
        | Request::RmDir { parent, .. }
        | Request::Symlink { parent, .. }
        | Request::Create { parent, .. } => vec![*parent],
        Request::GetAttr { node, .. }
        | Request::SetAttr { node, .. }
        | Request::ReadLink { node }
        | Request::Open { node, .. }
        | Request::List { node, .. }
        | Request::StatFs { node }
        | Request::GetXattr { node, .. }
        | Request::ListXattr { node }
        | Request::SetXattr { node, .. }
        | Request::RemoveXattr { node, .. } => vec![*node],
        Request::CreateAs { parent, node, .. } => vec![*parent, *node],
        Request::Rename { parent, new_parent, .. } => vec![*parent, *new_parent],
        Request::Link { node, new_parent, .. } => vec![*node, *new_parent],
        Request::Forget { nodes } => nodes.iter().map(|(n, _)| *n).collect(),
        Request::Read { .. }
        | Request::Write { .. }
        | Request::ReadShared { .. }
        | Request::WriteShared { .. }
        | Request::Fsync { .. }
        | Request::Release { .. }
        | Request::ReadDir { .. }
        | Request::Batch { .. } => Vec::new(),
    }
}

/// What calls do that others must not overtake.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Tally {
    /// Calls that remove a name: they change a link count, of a node they do not name.
    pub unlinks: usize,
    /// Calls that change a node's attributes (its mode, times, or size and times by a
    /// write): a lookup's or a listing's answer carries the attributes of nodes it does not
    /// name.
    pub changes: usize,
    /// The data of writes.
    pub bytes: usize,
}

impl Tally {
    /// What `requests` do.
    pub fn of(requests: &[Request]) -> Tally {
        let mut t = Tally::default();
        for r in requests {
            match r {
                Request::Unlink { .. } => t.unlinks += 1,
                Request::SetAttr { .. } => t.changes += 1,
                Request::Write { data, .. } => {
                    t.changes += 1;
                    t.bytes += data.len();
                }
                _ => {}
            }
        }
        t
    }

    fn add(&mut self, o: Tally) {
        self.unlinks += o.unlinks;
        self.changes += o.changes;
        self.bytes += o.bytes;
    }

    fn take(&mut self, o: Tally) {
        self.unlinks -= o.unlinks;
        self.changes -= o.changes;
        self.bytes -= o.bytes;
    }
}

/// About how many bytes a call and its answer take in a frame, so that a batch fits in one
/// frame both ways.
fn weight(r: &Request) -> usize {
    match r {
        Request::Write { data, .. } => data.len() + 64,
        Request::SetXattr { value, .. } => value.len() + 64,
        Request::Read { size, .. } => *size as usize + 64,
        // Listings and data of unknown size.
        Request::Survey { .. }
        | Request::List { .. }
        | Request::ReadDir { .. }
        | Request::ReadLink { .. }
        | Request::GetXattr { .. }
        | Request::ListXattr { .. } => MAX_IO / 2,
        _ => 256,
    }
}

impl<T> Behind<T> {
    /// Whether calls are queued or on their way.
    pub fn busy(&self) -> bool {
        self.on_way > 0 || !self.queue.is_empty()
    }

    /// How many calls have been queued so far.
    pub fn pushed(&self) -> u64 {
        self.pushed
    }

    /// Whether the first `pushed` calls queued have been answered.
    pub fn answered(&self, pushed: u64) -> bool {
        self.answered >= pushed
    }

    /// Whether removals are queued or on their way.
    pub fn removals_pending(&self) -> bool {
        self.tally.unlinks > 0
    }

    /// The bytes of writes queued or on their way.
    pub fn data_pending(&self) -> usize {
        self.tally.bytes
    }

    /// Whether `request`, which names `nodes`, must go after what is queued.
    pub fn must_follow(&self, request: &Request, nodes: &[u64]) -> bool {
        self.busy()
            && (matches!(request, Request::RmDir { .. } | Request::Rename { .. })
                || (self.tally.unlinks > 0
                    && matches!(
                        request,
                        Request::GetAttr { .. }
                            | Request::SetAttr { .. }
                            | Request::Write { .. }
                            | Request::WriteShared { .. }
                    ))
                || (self.tally.changes > 0
                    && matches!(
                        request,
                        Request::Lookup { .. }
                            | Request::Survey { .. }
                            | Request::List { .. }
                            | Request::ReadDir { .. }
                    ))
                || nodes.iter().any(|n| self.nodes.contains_key(n)))
    }

    /// Queues a call (`waited`: the guest waits for its answer); returns a batch to send now,
    /// if one should go ([`Self::next`]).
    pub fn push(&mut self, request: Request, nodes: Vec<u64>, then: T, waited: bool) -> Option<Vec<Queued<T>>> {
        for n in &nodes {
            *self.nodes.entry(*n).or_default() += 1;
        }
        self.tally.add(Tally::of(std::slice::from_ref(&request)));
        self.pushed += 1;
        self.waited += usize::from(waited);
        self.weight += weight(&request);
        self.queue.push_back(Queued { request, nodes, then, waited });
        self.next()
    }

    /// The oldest batch on its way was answered (it held `calls` calls, named `nodes`, and
    /// did `tally`: [`Tally::of`]); the next batch to send, if any.
    pub fn done(&mut self, calls: usize, nodes: &[u64], tally: Tally) -> Option<Vec<Queued<T>>> {
        self.answered += calls as u64;
        self.tally.take(tally);
        for n in nodes {
            if let Some(c) = self.nodes.get_mut(n) {
                *c -= 1;
                if *c == 0 {
                    self.nodes.remove(n);
                }
            }
        }
        self.on_way -= 1;
        self.next()
    }

    /// Takes the next batch if one should go: when none is on its way, or fewer than
    /// [`MAX_ON_WAY`] are and the guest waits for a queued call or the queue fills a frame.
    /// The batch is the oldest calls, as many as fit in a frame (at least one).
    fn next(&mut self) -> Option<Vec<Queued<T>>> {
        if self.on_way >= MAX_ON_WAY || self.queue.is_empty() {
            return None;
        }
        if self.on_way > 0 && self.waited == 0 && self.weight < MAX_IO && self.queue.len() < MAX_CALLS {
            return None;
        }
        let mut batch = Vec::new();
        let mut size = 0;
        while let Some(q) = self.queue.front() {
            let w = weight(&q.request);
            if !batch.is_empty() && (size + w > MAX_IO || batch.len() >= MAX_CALLS) {
                break;
            }
            size += w;
            self.weight -= w;
            let q = self.queue.pop_front().expect("a call at the front");
            self.waited -= usize::from(q.waited);
            batch.push(q);
        }
        self.on_way += 1;
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unlink(parent: u64, name: &str) -> Request {
        Request::Unlink { parent, name: name.as_bytes().to_vec() }
    }

    const T1: Tally = Tally { unlinks: 1, changes: 0, bytes: 0 };
    const T2: Tally = Tally { unlinks: 2, changes: 0, bytes: 0 };
    const C1: Tally = Tally { unlinks: 0, changes: 1, bytes: 0 };

    fn names(batch: &[Queued<u32>]) -> Vec<u32> {
        batch.iter().map(|q| q.then).collect()
    }

    #[test]
    fn calls_wait_for_the_batch_on_its_way_unless_the_guest_waits_for_one() {
        let mut b = Behind::default();
        assert!(!b.busy());
        let first = b.push(unlink(5, "a"), vec![5], 1, false).expect("the first goes at once");
        assert_eq!(names(&first), [1]);
        // Nobody waits for these: they wait for the first's answer.
        assert!(b.push(unlink(5, "b"), vec![5], 2, false).is_none());
        assert!(b.push(unlink(5, "c"), vec![5], 3, false).is_none());
        // The guest waits for this one: a second batch goes at once, with what is before it.
        let lookup = Request::Lookup { parent: 5, name: b"x".to_vec() };
        let second = b.push(lookup, vec![5], 4, true).expect("a call waited for goes at once");
        assert_eq!(names(&second), [2, 3, 4]);
        // Never more than two on their way, waited for or not.
        assert!(b.push(unlink(6, "d"), vec![6], 5, true).is_none());
        assert!(b.push(unlink(6, "e"), vec![6], 6, false).is_none());
        let third = b.done(1, &[5], T1).expect("the rest go once the first is answered");
        assert_eq!(names(&third), [5, 6]);
        assert!(b.busy());
        let pushed = b.pushed();
        assert!(!b.answered(pushed));
        assert!(b.done(3, &[5, 5, 5], T2).is_none());
        assert!(b.done(2, &[6, 6], T2).is_none());
        assert!(!b.busy());
        assert!(b.answered(pushed));
        assert!(b.nodes.is_empty());
        assert_eq!((b.waited, b.weight), (0, 0));
    }

    #[test]
    fn calls_that_name_a_queued_node_follow_it() {
        let mut b: Behind<u32> = Behind::default();
        let lookup = Request::Lookup { parent: 5, name: b"x".to_vec() };
        let rmdir = Request::RmDir { parent: 1, name: b"d".to_vec() };
        // Nothing queued: everything goes straight on.
        assert!(!b.must_follow(&lookup, &[5]));
        assert!(!b.must_follow(&rmdir, &[1]));
        b.push(unlink(5, "a"), vec![5], 1, false);
        assert!(b.must_follow(&lookup, &[5]));
        assert!(!b.must_follow(&Request::Lookup { parent: 7, name: b"x".to_vec() }, &[7]));
        // Removals of directories and renames name directories by name: they follow anything.
        assert!(b.must_follow(&rmdir, &[1]));
        // A removal changes the link count of a node it does not name: attributes follow it,
        // and so do calls answered with them (a write that overtook the removal of its file's
        // name answered with the old link count, and the guest kept it).
        assert!(b.must_follow(&Request::GetAttr { node: 9, handle: Some(1) }, &[9]));
        assert!(b.must_follow(&Request::Write { handle: 1, offset: 0, data: vec![1] }, &[9]));
        b.done(1, &[5], T1);
        assert!(!b.must_follow(&Request::GetAttr { node: 9, handle: Some(1) }, &[9]));
        // An attribute change: a lookup's answer may carry the node's attributes.
        let chmod = Request::SetAttr { node: 9, set: Default::default() };
        b.push(chmod, vec![9], 2, false);
        assert!(b.must_follow(&Request::Lookup { parent: 7, name: b"x".to_vec() }, &[7]));
        b.done(1, &[9], C1);
        assert!(!b.must_follow(&Request::Lookup { parent: 7, name: b"x".to_vec() }, &[7]));
        assert!(!b.must_follow(&lookup, &[5]));
    }

    #[test]
    fn a_batch_fits_in_a_frame_and_a_full_frame_goes_at_once() {
        let mut b = Behind::default();
        assert!(b.push(unlink(1, "first"), vec![1], 0, false).is_some());
        assert!(b.push(unlink(1, "second"), vec![1], 0, false).is_none());
        let big = || Request::Write { handle: 1, offset: 0, data: vec![0; MAX_IO / 3] };
        assert!(b.push(big(), vec![2], 1, false).is_none());
        assert!(b.push(big(), vec![2], 2, false).is_none());
        // A frame's worth queued: it goes behind the first without waiting for its answer.
        let batch = b.push(big(), vec![2], 3, false).expect("a full frame goes");
        assert_eq!(names(&batch), [0, 1, 2], "three thirds of a frame do not fit with their headers");
        assert_eq!(b.data_pending(), 3 * (MAX_IO / 3));
        let two_writes = Tally { unlinks: 0, changes: 2, bytes: 2 * (MAX_IO / 3) };
        assert_eq!(Tally::of(&[big(), big()]), two_writes);
        for i in 4..=2000 {
            assert!(b.push(unlink(3, "x"), vec![3], i, false).is_none(), "two on their way");
        }
        let batch = b.done(1, &[1], T1).unwrap();
        assert_eq!(names(&batch)[..2], [3, 4]);
        assert_eq!(batch.len(), MAX_CALLS, "small calls fill a batch up to its count");
        assert!(b.done(3, &[1, 2, 2], Tally { unlinks: 1, ..two_writes }).is_none(), "less than a frame waits");
        assert_eq!(b.data_pending(), MAX_IO / 3, "the write still on its way");
        let rest = Tally { unlinks: MAX_CALLS - 1, changes: 1, bytes: MAX_IO / 3 };
        let batch = b.done(MAX_CALLS, &[vec![2], vec![3; MAX_CALLS - 1]].concat(), rest).unwrap();
        assert_eq!(batch.len(), 1997 - (MAX_CALLS - 1));
        // One call over the limit still goes, alone.
        let mut b = Behind::default();
        b.push(Request::Write { handle: 1, offset: 0, data: vec![0; MAX_IO] }, vec![], 0, false);
        b.push(Request::Write { handle: 1, offset: 0, data: vec![0; MAX_IO] }, vec![], 1, false);
        assert!(b.push(unlink(1, "x"), vec![], 2, true).is_none());
    }
}
