//! Small files' contents that came with their opens ([`Request::Open`]'s `head`), so that
//! reading one is no trip of its own.
//!
//! `git status` after a checkout reads every file to hash it, and Python's imports read every
//! module: each an open and a read, a trip each. An open to read only now asks for the file's
//! contents when they fit in [`HEAD_MAX`], and the reads through that handle are answered from
//! them. They are the file as it was when it was opened (close-to-open, as the page cache
//! across opens keeps it), and are dropped the moment the guest hears of a change to the file:
//! a write or truncation in the guest, or a notice from the host. An answer to an open that
//! crossed such a change is not kept.
//!
//! Files whose whole contents the guest's kernel has read since the last change it heard of
//! are not asked for again: the kernel keeps their pages across opens in watched directories,
//! so their reads never come here and the contents would cross the console for nothing.
//!
//! [`Request::Open`]: berth_protocol::shares::Request::Open

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The largest file whose contents come with its open.
pub const HEAD_MAX: u32 = 32 * 1024;
/// The most nodes and changes remembered; past it the record starts again.
const MAX_NODES: usize = 65_536;

/// The contents held, and what the guest heard of changes.
#[derive(Default)]
pub struct Heads {
    /// By handle: the file's node and its contents as opened.
    open: HashMap<u64, (u64, Arc<Vec<u8>>)>,
    /// Nodes whose whole contents the kernel read since the last change heard of.
    paged: HashSet<u64>,
    /// Changes heard of so far, the count at each node's last, and the count when that record
    /// was last cleared.
    count: u64,
    last: HashMap<u64, u64>,
    cleared: u64,
}

impl Heads {
    /// What an open of `node` to read only asks for: the count its answer is checked against
    /// ([`Self::opened`]), and how many bytes of contents (0: none, the kernel has them).
    pub fn asking(&self, node: u64) -> (u64, u32) {
        (self.count, if self.paged.contains(&node) { 0 } else { HEAD_MAX })
    }

    /// The answer to an open of `node` asked at `since`: `handle`'s reads are answered from
    /// `head` unless the file changed since; `keep`: whether the kernel keeps its pages.
    pub fn opened(&mut self, node: u64, handle: u64, since: u64, keep: bool, head: Option<Vec<u8>>) {
        if !keep {
            self.paged.remove(&node);
        }
        let unchanged = self.cleared <= since && self.last.get(&node).is_none_or(|c| *c <= since);
        if let Some(head) = head.filter(|_| unchanged) {
            self.open.insert(handle, (node, Arc::new(head)));
        }
    }

    /// The bytes at `offset`, at most `size` of them, if `handle` holds its file's contents.
    pub fn read(&mut self, handle: u64, offset: u64, size: u32) -> Option<Vec<u8>> {
        let (node, data) = self.open.get(&handle)?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(data.len());
        let end = start.saturating_add(size as usize).min(data.len());
        let out = data[start..end].to_vec();
        let node = *node;
        self.paged(node);
        Some(out)
    }

    /// A read of `node` from its start came back shorter than asked: the kernel has it whole.
    pub fn paged(&mut self, node: u64) {
        if self.paged.len() >= MAX_NODES {
            self.paged.clear();
        }
        self.paged.insert(node);
    }

    /// `node`'s contents changed (in the guest, or on the host): what was held of them goes.
    pub fn changed(&mut self, node: u64) {
        self.count += 1;
        if self.last.len() >= MAX_NODES {
            self.last.clear();
            self.cleared = self.count;
        }
        self.last.insert(node, self.count);
        self.paged.remove(&node);
        if !self.open.is_empty() {
            self.open.retain(|_, (n, _)| *n != node);
        }
    }

    /// The kernel forgot `node` (its pages went with it).
    pub fn forgotten(&mut self, node: u64) {
        self.paged.remove(&node);
    }

    /// `handle` was released.
    pub fn released(&mut self, handle: u64) {
        self.open.remove(&handle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_come_from_the_head_until_the_file_changes() {
        let mut h = Heads::default();
        let (since, want) = h.asking(7);
        assert_eq!(want, HEAD_MAX);
        h.opened(7, 1, since, true, Some(b"hello world".to_vec()));
        assert_eq!(h.read(1, 0, 5).as_deref(), Some(&b"hello"[..]));
        assert_eq!(h.read(1, 6, 100).as_deref(), Some(&b"world"[..]));
        assert_eq!(h.read(1, 50, 10).as_deref(), Some(&b""[..]), "past the end: nothing");
        assert_eq!(h.read(2, 0, 5), None, "another handle");
        // The kernel has it whole now: the next open asks for nothing.
        assert_eq!(h.asking(7).1, 0);
        // A change drops it, and the next open asks again.
        h.changed(7);
        assert_eq!(h.read(1, 0, 5), None);
        assert_eq!(h.asking(7).1, HEAD_MAX);
        // An open answered after a change it crossed is not kept.
        let (since, _) = h.asking(7);
        h.changed(7);
        h.opened(7, 3, since, true, Some(b"old".to_vec()));
        assert_eq!(h.read(3, 0, 5), None);
        // Another node's change does not matter; a release drops it.
        let (since, _) = h.asking(7);
        h.changed(8);
        h.opened(7, 4, since, true, Some(b"new".to_vec()));
        assert_eq!(h.read(4, 0, 5).as_deref(), Some(&b"new"[..]));
        h.released(4);
        assert_eq!(h.read(4, 0, 5), None);
        // An open that drops the kernel's pages makes the next one ask.
        h.paged(9);
        assert_eq!(h.asking(9).1, 0);
        h.opened(9, 5, h.asking(9).0, false, None);
        assert_eq!(h.asking(9).1, HEAD_MAX);
    }
}
