//! The memory the host shares with the guest for reads' and writes' data
//! (`berth_protocol::shares::Memory`): QEMU's `ivshmem-plain` device, whose memory is a file
//! the host's file server maps too. A write's data is copied into a slot and the slot named in
//! a small call; a read names a slot for the host to fill. Every byte through the transport
//! costs this emulated guest's CPU (about 10 ms a megabyte under TCG), a copy about 0.3 ms.
//!
//! The device is found by its PCI ids and mapped through sysfs (`resource2` is its memory;
//! no driver is needed), and trusted only if it starts with the token the host's hello
//! names. Each slot is held by one call at a time ([`Slot`]); the host touches a slot only
//! while that call is on its way, so the guest reads it once the answer has come.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use berth_protocol::shares::{self as proto, SLOT};
use memmap2::MmapRaw;

/// QEMU's ivshmem device: Red Hat's vendor id, and the device id of ivshmem.
const IVSHMEM: (&str, &str) = ("0x1af4", "0x1110");

/// A mapped region and its free slots.
pub struct Region {
    map: MmapRaw,
    free: Mutex<Vec<u64>>,
}

impl Region {
    /// The region the host's hello describes: the file at `file` if given (an agent on the
    /// host's own machine: tests), else the ivshmem device's memory. None, and a log line,
    /// if there is none or it does not start with the host's token.
    pub fn find(want: &proto::Memory, file: Option<&Path>) -> Option<Arc<Region>> {
        let path = match file {
            Some(f) => f.to_owned(),
            None => match device() {
                Some(p) => p,
                None => {
                    tracing::info!("shares: no ivshmem device: data goes through the transport");
                    return None;
                }
            },
        };
        let map =
            match std::fs::OpenOptions::new().read(true).write(true).open(&path).and_then(|f| MmapRaw::map_raw(&f)) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "shares: the shared memory cannot be mapped");
                    return None;
                }
            };
        let size = (map.len() as u64).min(want.size);
        let region = Region { map, free: Mutex::new((1..size / SLOT as u64).map(|i| i * SLOT as u64).rev().collect()) };
        if !region.holds(want) {
            tracing::warn!(path = %path.display(), "shares: the shared memory is not the host's (its token differs)");
            return None;
        }
        tracing::info!(path = %path.display(), slots = region.free.lock().expect("lock").len(), "shares: data goes through shared memory");
        Some(Arc::new(region))
    }

    /// Whether this is the memory `want` describes: it starts with its token now.
    pub fn holds(&self, want: &proto::Memory) -> bool {
        if self.map.len() < 2 * SLOT {
            return false;
        }
        let mut head = [0u8; 16];
        // SAFETY: the mapping is at least two slots long (checked above); bytes are copied out.
        unsafe { std::ptr::copy_nonoverlapping(self.map.as_ptr(), head.as_mut_ptr(), head.len()) };
        head == want.token
    }

    /// A free slot, if there is one (the caller sends its data through the transport if not).
    pub fn slot(self: &Arc<Self>) -> Option<Slot> {
        let at = self.free.lock().expect("lock").pop()?;
        Some(Slot { region: self.clone(), at })
    }
}

/// The ivshmem device's memory in sysfs, if the VM has the device.
fn device() -> Option<PathBuf> {
    std::fs::read_dir("/sys/bus/pci/devices")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let id = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default().trim().to_owned();
            (id("vendor").as_str(), id("device").as_str()) == IVSHMEM
        })
        .map(|p| {
            // Firmware enables the memory of devices it maps; a kernel that assigned the BAR
            // itself may not have (the write is harmless when it is).
            let _ = std::fs::write(p.join("enable"), "1");
            p.join("resource2")
        })
}

/// One slot of the region, held by one call; free again when dropped.
pub struct Slot {
    region: Arc<Region>,
    at: u64,
}

impl Slot {
    /// Its offset in the region, as calls name it.
    pub fn at(&self) -> u64 {
        self.at
    }

    /// Copies `data` (at most a slot) into it.
    pub fn fill(&self, data: &[u8]) {
        let n = data.len().min(SLOT);
        // SAFETY: slots lie inside the mapping (made from its length), and this one is held
        // by this call alone.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.region.map.as_mut_ptr().add(self.at as usize), n) };
    }

    /// A copy of its first `len` bytes (at most a slot), once the host has filled them. A
    /// copy, not a reference: the device's memory is an I/O mapping (`VM_PFNMAP`), which the
    /// kernel cannot take pages from, so FUSE fails a reply that points into it (and the read
    /// stalls: 30 s for 64 MiB in the VM before this copy).
    pub fn copy_out(&self, len: usize) -> Vec<u8> {
        let len = len.min(SLOT);
        let mut out = Vec::with_capacity(len);
        // SAFETY: as in `fill`; the host wrote them before it answered the call that holds
        // the slot, and touches them no more; `len` bytes are initialised by the copy.
        unsafe {
            std::ptr::copy_nonoverlapping(self.region.map.as_ptr().add(self.at as usize), out.as_mut_ptr(), len);
            out.set_len(len);
        }
        out
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.region.free.lock().expect("lock").push(self.at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(token: [u8; 16], slots: usize) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len((slots * SLOT) as u64).unwrap();
        std::fs::write(f.path(), token).unwrap();
        f.as_file().set_len((slots * SLOT) as u64).unwrap();
        f
    }

    #[test]
    fn slots_are_lent_once_and_come_back() {
        let want = proto::Memory { token: [7; 16], size: 4 * SLOT as u64 };
        let f = file([7; 16], 4);
        let r = Region::find(&want, Some(f.path())).expect("the region");
        let held: Vec<Slot> = std::iter::from_fn(|| r.slot()).collect();
        let mut at: Vec<u64> = held.iter().map(|s| s.at()).collect();
        at.sort();
        assert_eq!(at, [SLOT as u64, 2 * SLOT as u64, 3 * SLOT as u64], "every slot but the token's, once");
        held[0].fill(b"abc");
        assert_eq!(held[0].copy_out(3), b"abc");
        drop(held);
        assert!(r.slot().is_some());
        let other = proto::Memory { token: [8; 16], size: 4 * SLOT as u64 };
        assert!(Region::find(&other, Some(f.path())).is_none(), "another host's token");
    }
}
