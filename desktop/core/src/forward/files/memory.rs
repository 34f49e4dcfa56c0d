//! The memory the file server shares with the guest for reads' and writes' data
//! ([`berth_protocol::shares::Memory`]): a file that QEMU maps into the guest as an
//! `ivshmem-plain` device's memory and this process maps too. The guest copies a write's data
//! into a slot and names it in a small call; the host copies a read's data into the slot the
//! guest named. Every byte through the transport costs the emulated guest's CPU (a megabyte
//! is about 10 ms of it under TCG), a copy into memory about 0.3 ms.
//!
//! The guest can write anything there at any time, so this side only ever copies in and out
//! of it through raw pointers, bounds-checked, and never hands out a reference into it.

use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};

use berth_protocol::shares::{self as proto, errno};
use memmap2::MmapRaw;

/// The region's size: a token slot and 31 slots for data in flight.
pub const SIZE: u64 = 32 * proto::SLOT as u64;

/// A shared region, mapped.
pub struct Memory {
    map: MmapRaw,
    token: [u8; 16],
    path: PathBuf,
}

impl Memory {
    /// Makes the region's file at `path` (anew: its old contents are no one's now), maps it
    /// and writes a fresh token at its start.
    pub fn create(path: &Path) -> std::io::Result<Memory> {
        let _ = std::fs::remove_file(path);
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
        file.set_len(SIZE)?;
        let map = MmapRaw::map_raw(&file)?;
        // Not a secret (the guest is the only other party, and it may read it): a value no
        // other region has, from the keys std draws from the OS for each hasher, the clock
        // and the process.
        let mut token = [0u8; 16];
        for (i, half) in token.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
            );
            h.write_u32(std::process::id());
            h.write_usize(i);
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
        let memory = Memory { map, token, path: path.to_owned() };
        memory.stamp();
        Ok(memory)
    }

    /// Writes the token at the region's start (again: a restored boot snapshot brings the
    /// region's contents as they were when it was saved).
    pub fn stamp(&self) {
        // SAFETY: the mapping is SIZE bytes, more than the token's 16.
        unsafe { std::ptr::copy_nonoverlapping(self.token.as_ptr(), self.map.as_mut_ptr(), self.token.len()) };
    }

    /// Where it is, for QEMU.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the hello says of it.
    pub fn describe(&self) -> proto::Memory {
        proto::Memory { token: self.token, size: SIZE }
    }

    /// Checks that `len` bytes at `at` are a data slot's (never the token's).
    fn span(&self, at: u64, len: usize) -> Result<usize, i32> {
        let at = usize::try_from(at).map_err(|_| errno::EINVAL)?;
        let fits = at >= proto::SLOT && len <= proto::SLOT && at.checked_add(len).is_some_and(|e| e <= self.map.len());
        if fits { Ok(at) } else { Err(errno::EINVAL) }
    }

    /// A copy of the `len` bytes at `at`.
    pub fn get(&self, at: u64, len: usize) -> Result<Vec<u8>, i32> {
        let at = self.span(at, len)?;
        let mut out = vec![0u8; len];
        // SAFETY: `span` checked that at..at+len is inside the mapping, which lives as long
        // as self; the bytes are copied, never referenced (the guest may change them).
        unsafe { std::ptr::copy_nonoverlapping(self.map.as_ptr().add(at), out.as_mut_ptr(), len) };
        Ok(out)
    }

    /// Puts `data` at `at`.
    pub fn put(&self, at: u64, data: &[u8]) -> Result<(), i32> {
        let at = self.span(at, data.len())?;
        // SAFETY: as in `get`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.map.as_mut_ptr().add(at), data.len()) };
        Ok(())
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_goes_in_and_out_of_slots_only() {
        let d = tempfile::tempdir().unwrap();
        let m = Memory::create(&d.path().join("m")).unwrap();
        let on_disk = std::fs::read(m.path()).unwrap();
        assert_eq!(on_disk.len() as u64, SIZE);
        assert_eq!(on_disk[..16], m.describe().token, "the token is at the start, for the guest to check");
        let slot = proto::SLOT as u64;
        m.put(slot * 3, b"data").unwrap();
        assert_eq!(m.get(slot * 3, 4).unwrap(), b"data");
        assert_eq!(m.put(8, b"over the token"), Err(errno::EINVAL));
        assert_eq!(m.get(0, 16), Err(errno::EINVAL), "the token slot is not data");
        assert_eq!(m.get(SIZE - 2, 4), Err(errno::EINVAL), "past the end");
        assert_eq!(m.get(u64::MAX - 1, 4), Err(errno::EINVAL));
        assert_eq!(m.get(slot, proto::SLOT + 1), Err(errno::EINVAL), "more than a slot");
        let other = Memory::create(&d.path().join("n")).unwrap();
        assert_ne!(other.describe().token, m.describe().token);
    }
}
