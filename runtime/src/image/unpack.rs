//! Layer unpacking: a tar stream becomes files under a root, confined to that root.
//!
//! Every path in the archive is resolved inside the target root the way the container will see
//! it: an entry name may not climb above the root with `..` (that is an error, as dockerd
//! reports a breakout), and symlinks met on the way, absolute or relative, are followed
//! *inside* the root (through [`crate::fsutil::confined`], so a concurrent change of the tree,
//! as a running container can make during `docker cp`, cannot redirect a write). Hard links
//! must name an inode inside the root.
//!
//! As dockerd running as root does, device nodes and FIFOs are created as the archive says
//! (distribution images made with debootstrap carry `/dev/null` and friends): what makes them
//! harmless is the container's device rules, which let a container open only the standard
//! devices whatever nodes its file system holds.
//!
//! Sloppy but honest archives are read as Go's `archive/tar` (and so dockerd) reads them: a
//! stream that ends right after the last member's data, with neither its padding nor the two
//! end-of-archive blocks, is complete. A stream that ends inside a header, inside a member's
//! data or partway through its padding is truncated, and an error.
//!
//! OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`) become overlayfs whiteouts (a 0:0 character
//! device, the `trusted.overlay.opaque` xattr) when unpacking into a snapshot, so the layer can
//! be stacked with overlayfs as it is.
//!
//! The tar crate parses the archive; the file creation is ours, because the crate's own
//! `unpack` neither confines symlinks inside a root nor knows about whiteouts.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::fsutil::confined::{Confined, Dir, NodeKind};

/// Errors from unpacking one layer.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {path:?} escapes the root")]
    Breakout { path: String },
    #[error("layer entry {path:?}: hard link target {target:?} is not a file inside the root")]
    BadHardlink { path: String, target: String },
    #[error("layer entry name is {0} bytes long; the limit is 4096")]
    NameTooLong(usize),
    #[error("layer has a tar extension header of {0} bytes; the limit is {MAX_EXTENSION_HEADER}")]
    HugeHeader(u64),
    #[error("layer uncompressed digest is {actual}, the image config says {expected}")]
    DiffIdMismatch { expected: String, actual: String },
    #[error("reading the layer archive")]
    Archive(#[source] io::Error),
    #[error("layer entry {path:?}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// How `.wh.` entries are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// Convert to overlayfs whiteouts (unpacking an image layer into a snapshot).
    Overlay,
    /// No whiteouts: `.wh.` names are ordinary files (`docker cp`, archive uploads).
    Plain,
}
/// Compression of a layer, from its first bytes (what dockerd does too: media types lie).
pub fn decompressor<'a>(mut r: Box<dyn Read + Send + 'a>) -> io::Result<Box<dyn Read + Send + 'a>> {
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < 4 {
        let m = r.read(&mut magic[n..])?;
        if m == 0 {
            break;
        }
        n += m;
    }
    let head = io::Cursor::new(magic[..n].to_vec());
    let chained: Box<dyn Read + Send + 'a> = Box::new(head.chain(r));
    Ok(if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Box::new(flate2::read::MultiGzDecoder::new(chained))
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(zstd::stream::read::Decoder::new(chained)?)
    } else {
        chained
    })
}

/// The largest PAX or GNU long-name header accepted (the tar crate reads them into memory).
pub const MAX_EXTENSION_HEADER: u64 = 1 << 20;

/// Follows the tar block structure of the stream passing through it, for two jobs the tar
/// crate does not do:
/// - it fails on extension headers (PAX `x`/`g`, GNU `L`/`K`) larger than
///   [`MAX_EXTENSION_HEADER`], before the tar crate would buffer them: a small compressed
///   layer can otherwise declare gigabytes of header;
/// - when the stream ends exactly where a member's data ends, it supplies that member's
///   padding, so the tar crate sees a clean end of archive where Go's reader (and so dockerd)
///   sees one. Nothing it supplies passes the layer's digest, which reads below it.
struct TarBlocks<R> {
    inner: R,
    /// Bytes of the current member's data before its padding.
    data_left: u64,
    /// Bytes of padding (to a 512-byte block) after the data.
    pad_left: u64,
    /// Whether any of the current padding came from the stream.
    pad_started: bool,
    header: Vec<u8>,
    /// GNU sparse extension blocks still to come before the data.
    sparse_ext: bool,
    /// A PAX header being collected, to learn a `size=` override for the next entry.
    pax: Option<Vec<u8>>,
    pax_size: Option<u64>,
}

fn parse_numeric(field: &[u8]) -> u64 {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // base-256: big-endian binary in the remaining bytes.
        field[1..].iter().fold(0u64, |acc, b| acc.saturating_mul(256).saturating_add(*b as u64))
    } else {
        let text: String = field.iter().take_while(|b| **b != 0).map(|b| *b as char).collect();
        u64::from_str_radix(text.trim(), 8).unwrap_or(0)
    }
}

fn pax_size(records: &[u8]) -> Option<u64> {
    String::from_utf8_lossy(records).lines().find_map(|l| {
        let (_, kv) = l.split_once(' ')?;
        kv.strip_prefix("size=")?.trim().parse().ok()
    })
}

impl<R: Read> TarBlocks<R> {
    fn new(inner: R) -> Self {
        TarBlocks {
            inner,
            data_left: 0,
            pad_left: 0,
            pad_started: false,
            header: Vec::with_capacity(512),
            sparse_ext: false,
            pax: None,
            pax_size: None,
        }
    }

    fn on_header(&mut self) -> io::Result<()> {
        let h = std::mem::take(&mut self.header);
        if self.sparse_ext {
            self.sparse_ext = h[504] != 0;
            return Ok(());
        }
        if h.iter().all(|b| *b == 0) {
            return Ok(());
        }
        let kind = h[156];
        let mut size = parse_numeric(&h[124..136]);
        if matches!(kind, b'x' | b'g' | b'L' | b'K') {
            if size > MAX_EXTENSION_HEADER {
                return Err(io::Error::other(UnpackError::HugeHeader(size)));
            }
            if kind == b'x' {
                self.pax = Some(Vec::with_capacity(size as usize));
            }
        } else {
            if let Some(s) = self.pax_size.take() {
                size = s;
            }
            if kind == b'S' && h[482] != 0 {
                self.sparse_ext = true;
            }
        }
        self.data_left = size;
        self.pad_left = size.div_ceil(512) * 512 - size;
        self.pad_started = false;
        if self.data_left == 0 {
            self.finish_pax();
        }
        Ok(())
    }

    fn finish_pax(&mut self) {
        if let Some(p) = self.pax.take() {
            self.pax_size = pax_size(&p);
        }
    }

    /// Accounts for bytes that came from the stream.
    fn track(&mut self, mut rest: &[u8]) -> io::Result<()> {
        while !rest.is_empty() {
            if self.data_left > 0 {
                let take = (self.data_left.min(rest.len() as u64)) as usize;
                if let Some(p) = self.pax.as_mut() {
                    p.extend_from_slice(&rest[..take]);
                }
                self.data_left -= take as u64;
                rest = &rest[take..];
                if self.data_left == 0 {
                    self.finish_pax();
                }
            } else if self.pad_left > 0 {
                let take = (self.pad_left.min(rest.len() as u64)) as usize;
                self.pad_left -= take as u64;
                self.pad_started = true;
                rest = &rest[take..];
            } else {
                let take = (512 - self.header.len()).min(rest.len());
                self.header.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if self.header.len() == 512 {
                    self.on_header()?;
                }
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for TarBlocks<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() && self.data_left == 0 && self.pad_left > 0 && !self.pad_started {
            // The stream ended right after a member's data: its padding is implied.
            let k = (self.pad_left.min(buf.len() as u64)) as usize;
            buf[..k].fill(0);
            self.pad_left -= k as u64;
            return Ok(k);
        }
        self.track(&buf[..n])?;
        Ok(n)
    }
}

/// A reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Bytes inflated ahead of the parser: chunks of 256 KiB, at most eight waiting.
const AHEAD_CHUNK: usize = 256 * 1024;
const AHEAD_CHUNKS: usize = 8;

/// Reads until `buf` is full or the stream ends.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(m) => n += m,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The parser's side of the inflating thread: its chunks, in order, as one stream.
struct Ahead {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for Ahead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.chunk = chunk?;
                    self.at = 0;
                }
                // The inflating thread is done: the end of the stream.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// What unpacking a layer found.
#[derive(Debug, Clone)]
pub struct Unpacked {
    /// `sha256:` of the uncompressed tar stream.
    pub diff_id: String,
    /// Bytes of the uncompressed tar stream.
    pub size: u64,
}

/// Unpacks the (possibly compressed) tar stream `reader` into `root`.
///
/// When `expected_diff_id` is given the uncompressed stream must hash to it, or the unpack
/// fails (the caller discards `root`).
pub fn unpack(
    reader: impl Read + Send,
    root: &Path,
    whiteouts: Whiteouts,
    expected_diff_id: Option<&str>,
) -> Result<Unpacked, UnpackError> {
    let plain = decompressor(Box::new(reader)).map_err(UnpackError::Archive)?;
    // Inflating and hashing run on a thread of their own, ahead of the parsing and writing
    // here: with two cores a layer takes about as long as the slower half, not both.
    let (hasher, count) = std::thread::scope(|scope| -> Result<(Sha256, u64), UnpackError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(AHEAD_CHUNKS);
        let inflater = scope.spawn(move || {
            let mut hashing = HashingReader { inner: plain, hasher: Sha256::new(), count: 0 };
            loop {
                let mut chunk = vec![0u8; AHEAD_CHUNK];
                match read_full(&mut hashing, &mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        // A short chunk is the stream's last; a failed send, a parser that
                        // stopped (and hung up).
                        let last = n < AHEAD_CHUNK;
                        chunk.truncate(n);
                        if tx.send(Ok(chunk)).is_err() || last {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        break;
                    }
                }
            }
            (hashing.hasher, hashing.count)
        });
        let mut ahead = Ahead { rx, chunk: Vec::new(), at: 0 };
        apply_tar(&mut ahead, root, whiteouts)?;
        // The rest of the stream (the tar's end blocks and any padding) is hashed too.
        io::copy(&mut ahead, &mut io::sink()).map_err(UnpackError::Archive)?;
        drop(ahead);
        inflater.join().map_err(|_| UnpackError::Archive(io::Error::other("the inflating thread panicked")))
    })?;
    let diff_id = format!("sha256:{}", hex::encode(hasher.finalize()));
    if let Some(expected) = expected_diff_id
        && expected != diff_id
    {
        return Err(UnpackError::DiffIdMismatch { expected: expected.into(), actual: diff_id });
    }
    Ok(Unpacked { diff_id, size: count })
}

/// Lexically normalises an archive path to components below the root; `..` above it is an error.
fn clean(path: &Path, shown: &str) -> Result<Vec<OsString>, UnpackError> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => out.push(s.to_owned()),
            Component::ParentDir => {
                if out.pop().is_none() {
                    return Err(UnpackError::Breakout { path: shown.into() });
                }
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

/// Applies the entries of an uncompressed tar stream onto `root`, a directory the caller
/// trusts (a fresh snapshot or scratch directory); what is inside it is confined there.
pub fn apply_tar(reader: &mut dyn Read, root: &Path, whiteouts: Whiteouts) -> Result<(), UnpackError> {
    let confined = Confined::open(root).map_err(|source| UnpackError::Write { path: "/".into(), source })?;
    apply_tar_in(reader, &confined, Path::new("/"), whiteouts)
}

/// Applies the entries of an uncompressed tar stream under `base`, a path inside `root`
/// (entry names are relative to `base`; symlinks resolve inside `root`). Huge extension
/// headers are refused before they are buffered.
pub fn apply_tar_in(
    reader: &mut dyn Read,
    root: &Confined,
    base: &Path,
    whiteouts: Whiteouts,
) -> Result<(), UnpackError> {
    let mut x = Extractor { root, base: base.to_owned(), whiteouts, dirs: Vec::new(), parent: None };
    x.run(&mut TarBlocks::new(reader)).map_err(|e| match e {
        // The guard's verdict travels through the tar crate as an io::Error.
        UnpackError::Archive(io) if io.get_ref().is_some_and(|i| i.is::<UnpackError>()) => {
            *io.into_inner().expect("checked").downcast::<UnpackError>().expect("checked")
        }
        other => other,
    })
}

/// Which end of a copy failed: a short archive is the client's fault, a full disk is not.
enum Side {
    Read(io::Error),
    Write(io::Error),
}

/// `io::copy`, but telling a failed read of the archive from a failed write of the file
/// (std's copy returns both as one `io::Error`).
fn copy_entry(from: &mut dyn Read, to: &mut impl Write) -> Result<(), Side> {
    /// Remembers whether the error came from the writer.
    struct Marked<'a, W> {
        inner: &'a mut W,
        failed: bool,
    }
    impl<W: Write> Write for Marked<'_, W> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.inner.write(buf).inspect_err(|_| self.failed = true)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.inner.flush().inspect_err(|_| self.failed = true)
        }
    }
    let mut to = Marked { inner: to, failed: false };
    match io::copy(from, &mut to) {
        Ok(_) => Ok(()),
        Err(e) if to.failed => Err(Side::Write(e)),
        Err(e) => Err(Side::Read(e)),
    }
}

/// One archive being applied.
struct Extractor<'a> {
    root: &'a Confined,
    base: PathBuf,
    whiteouts: Whiteouts,
    /// Directories made or met, with their headers: their metadata is set last, since
    /// creating children changes a directory's mtime.
    dirs: Vec<(PathBuf, tar::Header)>,
    /// The last parent directory opened (entries come grouped by directory).
    parent: Option<(PathBuf, Dir)>,
}

impl Extractor<'_> {
    /// The open directory `rel` (inside the root), created with missing parents.
    fn parent_dir(&mut self, rel: &Path, shown: &str) -> Result<&Dir, UnpackError> {
        if self.parent.as_ref().is_none_or(|(p, _)| p != rel) {
            let dir = self.root.dir(rel, true).map_err(|source| UnpackError::Write { path: shown.into(), source })?;
            self.parent = Some((rel.to_owned(), dir));
        }
        Ok(&self.parent.as_ref().expect("just set").1)
    }

    /// Forgets the open parent when `changed` (a path this entry replaces or removes) is it
    /// or one of its ancestors.
    fn touched(&mut self, changed: &Path) {
        if self.parent.as_ref().is_some_and(|(p, _)| p.starts_with(changed)) {
            self.parent = None;
        }
    }

    fn run(&mut self, reader: &mut dyn Read) -> Result<(), UnpackError> {
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(UnpackError::Archive)? {
            let entry = entry.map_err(UnpackError::Archive)?;
            self.entry(entry)?;
        }
        // Directory metadata last, deepest first. A directory a later entry replaced is gone.
        for (rel, header) in std::mem::take(&mut self.dirs).iter().rev() {
            let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else { continue };
            let shown = rel.display().to_string();
            let werr = |source| UnpackError::Write { path: shown.clone(), source };
            match self.root.dir(parent, false) {
                Ok(d) => match set_meta(&d, name, header) {
                    Err(UnpackError::Write { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                    other => other?,
                },
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(werr(e)),
            }
        }
        Ok(())
    }

    fn entry(&mut self, mut entry: tar::Entry<'_, &mut dyn Read>) -> Result<(), UnpackError> {
        let raw_path = entry.path_bytes().into_owned();
        if raw_path.len() > 4096 {
            return Err(UnpackError::NameTooLong(raw_path.len()));
        }
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let mut parts = clean(Path::new(OsStr::from_bytes(&raw_path)), &shown)?;
        let Some(name) = parts.pop() else { return Ok(()) };
        let mut parent_rel = self.base.clone();
        parent_rel.extend(&parts);
        let full = parent_rel.join(&name);
        let werr = |source| UnpackError::Write { path: shown.clone(), source };
        let name_bytes = name.as_bytes();

        if self.whiteouts == Whiteouts::Overlay {
            if name_bytes == b".wh..wh..opq" {
                let parent = self.parent_dir(&parent_rel, &shown)?;
                return parent.set_own_xattr("trusted.overlay.opaque", b"y").map_err(werr);
            }
            if let Some(hidden) = name_bytes.strip_prefix(b".wh.") {
                let hidden = OsStr::from_bytes(hidden);
                self.touched(&parent_rel.join(hidden));
                let parent = self.parent_dir(&parent_rel, &shown)?;
                parent.remove(hidden, false).map_err(werr)?;
                return parent.mknod(hidden, NodeKind::Char, 0, 0).map_err(werr);
            }
        }

        let header = entry.header().clone();
        let kind = header.entry_type();
        if kind != tar::EntryType::Regular && kind != tar::EntryType::Continuous {
            self.touched(&full);
        }
        // A hard link's target is resolved before its parent is opened, so an open parent
        // stays cached across runs of files.
        let link_source = if kind == tar::EntryType::Link {
            let target_raw = entry.link_name_bytes().map(|b| b.into_owned()).unwrap_or_default();
            let target_shown = String::from_utf8_lossy(&target_raw).into_owned();
            let bad = || UnpackError::BadHardlink { path: shown.clone(), target: target_shown.clone() };
            let target_parts = clean(Path::new(OsStr::from_bytes(&target_raw)), &target_shown).map_err(|_| bad())?;
            let mut target_rel = self.base.clone();
            target_rel.extend(&target_parts);
            match self.root.lookup(&target_rel) {
                Ok(inode) if !inode.meta.is_dir() => Some(inode),
                _ => return Err(bad()),
            }
        } else {
            None
        };
        let parent = self.parent_dir(&parent_rel, &shown)?;
        match kind {
            tar::EntryType::Directory => {
                if !parent.stat(&name).map_err(werr)?.is_some_and(|m| m.is_dir()) {
                    parent.remove(&name, false).map_err(werr)?;
                    parent.mkdir(&name).map_err(werr)?;
                }
                self.dirs.push((full, header));
                return Ok(());
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                // A file over a directory replaces it, as dockerd does.
                if parent.stat(&name).map_err(werr)?.is_some_and(|m| m.is_dir()) {
                    self.touched(&full);
                }
                let parent = self.parent_dir(&parent_rel, &shown)?;
                parent.remove(&name, false).map_err(werr)?;
                let mut f = parent.create_file(&name).map_err(werr)?;
                copy_entry(&mut entry, &mut f).map_err(|e| match e {
                    Side::Read(e) => UnpackError::Archive(e),
                    Side::Write(source) => UnpackError::Write { path: shown.clone(), source },
                })?;
                set_file_meta(&f, &header).map_err(werr)?;
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name().map_err(UnpackError::Archive)?.unwrap_or_default();
                parent.remove(&name, false).map_err(werr)?;
                parent.symlink(&name, &target).map_err(werr)?;
                set_meta(parent, &name, &header).map_err(|e| relabel(e, &shown))?;
            }
            tar::EntryType::Link => {
                let source = link_source.expect("resolved above");
                // A link to the entry's own inode (a tar that lists a file twice) is a no-op.
                let same = parent.stat(&name).map_err(werr)?.is_some_and(|m| {
                    use std::os::unix::fs::MetadataExt;
                    m.ino() == source.meta.ino() && m.dev() == source.meta.dev()
                });
                if !same {
                    parent.remove(&name, false).map_err(werr)?;
                    parent.link(&source, &name).map_err(werr)?;
                }
            }
            tar::EntryType::Fifo | tar::EntryType::Char | tar::EntryType::Block => {
                let node = match kind {
                    tar::EntryType::Fifo => NodeKind::Fifo,
                    tar::EntryType::Char => NodeKind::Char,
                    _ => NodeKind::Block,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                parent.remove(&name, false).map_err(werr)?;
                parent.mknod(&name, node, major, minor).map_err(werr)?;
                set_meta(parent, &name, &header).map_err(|e| relabel(e, &shown))?;
            }
            // PAX and GNU extension headers are consumed by the tar crate; anything else
            // (sockets, unknown types) has nothing to put on disk.
            _ => return Ok(()),
        }
        if let Ok(Some(exts)) = entry.pax_extensions() {
            let parent = self.parent_dir(&parent_rel, &shown)?;
            for ext in exts.flatten() {
                let Some(key) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) else { continue };
                // Only what an unprivileged image may carry; trusted.* would speak to overlayfs.
                if key.starts_with("security.") || key.starts_with("user.") {
                    let _ = parent.set_xattr(&name, key, ext.value_bytes());
                }
            }
        }
        Ok(())
    }
}

fn relabel(e: UnpackError, shown: &str) -> UnpackError {
    match e {
        UnpackError::Write { source, .. } => UnpackError::Write { path: shown.into(), source },
        other => other,
    }
}

/// Owner, mode and mtime from a tar header.
fn header_meta(header: &tar::Header) -> (u32, u32, u32, i64) {
    let uid = header.uid().unwrap_or(0) as u32;
    let gid = header.gid().unwrap_or(0) as u32;
    let mode = header.mode().unwrap_or(0o644) & 0o7777;
    let mtime = header.mtime().unwrap_or(0) as i64;
    (uid, gid, mode, mtime)
}

/// Sets owner, mode and times of `name` in `dir` from a tar header.
fn set_meta(dir: &Dir, name: &OsStr, header: &tar::Header) -> Result<(), UnpackError> {
    let (uid, gid, mode, mtime) = header_meta(header);
    dir.set_meta(name, uid, gid, mode, mtime)
        .map_err(|source| UnpackError::Write { path: name.to_string_lossy().into_owned(), source })
}

/// The same for a file being written (through its descriptor; chown before chmod, which
/// chown would clear set-id bits from).
fn set_file_meta(f: &std::fs::File, header: &tar::Header) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let (uid, gid, mode, mtime) = header_meta(header);
    std::os::unix::fs::fchown(f, Some(uid), Some(gid))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    let ts = nix::sys::time::TimeSpec::new(mtime, 0);
    nix::sys::stat::futimens(f, &ts, &ts).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn tar_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses `..`; write the raw name the way a hostile archive would.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, target: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_entry_type(kind);
        h.set_mode(0o777);
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        b.append(&h, io::empty()).unwrap();
    }

    #[test]
    fn parent_dir_breakout_is_refused() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        fs::create_dir(&root).unwrap();
        let t = tar_with(|b| file(b, "../evil", b"x"));
        let err = unpack(&t[..], &root, Whiteouts::Overlay, None).unwrap_err();
        assert!(matches!(err, UnpackError::Breakout { .. }), "{err}");
        assert!(!outer.path().join("evil").exists());
    }

    #[test]
    fn symlinks_are_followed_inside_the_root_only() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        fs::create_dir(&root).unwrap();
        let outer_inside = outer.path().strip_prefix("/").unwrap().to_str().unwrap().to_owned();
        let t = tar_with(|b| {
            // The absolute target exists inside the root: the write lands there.
            file(b, &format!("{outer_inside}/keep"), b"");
            link(b, tar::EntryType::Symlink, "abs", outer.path().to_str().unwrap());
            file(b, "abs/escaped", b"x");
            link(b, tar::EntryType::Symlink, "rel", "../../../..");
            file(b, "rel/escaped2", b"y");
        });
        unpack(&t[..], &root, Whiteouts::Overlay, None).unwrap();
        assert!(!outer.path().join("escaped").exists());
        assert!(!Path::new("/escaped2").exists());
        assert_eq!(fs::read(root.join(&outer_inside).join("escaped")).unwrap(), b"x");
        assert_eq!(fs::read(root.join("escaped2")).unwrap(), b"y");

        // A symlink whose target is not in the layer fails the entry, as dockerd's chrooted
        // unpacker does, and nothing is written outside.
        let root2 = outer.path().join("root2");
        fs::create_dir(&root2).unwrap();
        let t = tar_with(|b| {
            link(b, tar::EntryType::Symlink, "tmp", "/tmp");
            file(b, "tmp/escaped3", b"z");
        });
        let err = unpack(&t[..], &root2, Whiteouts::Overlay, None).unwrap_err();
        assert!(err.to_string().contains("tmp/escaped3"), "{err}");
        assert!(!Path::new("/tmp/escaped3").exists());
    }

    #[test]
    fn hardlink_out_of_root_is_refused() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        fs::create_dir(&root).unwrap();
        fs::write(outer.path().join("secret"), b"s").unwrap();
        let t = tar_with(|b| link(b, tar::EntryType::Link, "l", "../secret"));
        let err = unpack(&t[..], &root, Whiteouts::Overlay, None).unwrap_err();
        assert!(matches!(err, UnpackError::BadHardlink { .. }), "{err}");
    }

    fn node(b: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, major: u32, minor: u32) {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_entry_type(kind);
        h.set_mode(0o666);
        h.set_size(0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_cksum();
        b.append(&h, io::empty()).unwrap();
    }

    #[test]
    fn device_nodes_and_fifos_are_made_as_dockerd_makes_them() {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let dir = tempfile::tempdir().unwrap();
        let t = tar_with(|b| {
            node(b, "dev/null", tar::EntryType::Char, 1, 3);
            node(b, "dev/loop0", tar::EntryType::Block, 7, 0);
            node(b, "dev/initctl", tar::EntryType::Fifo, 0, 0);
        });
        unpack(&t[..], dir.path(), Whiteouts::Overlay, None).unwrap();
        let null = fs::symlink_metadata(dir.path().join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
        assert_eq!(null.mode() & 0o7777, 0o666);
        let lp = fs::symlink_metadata(dir.path().join("dev/loop0")).unwrap();
        assert!(lp.file_type().is_block_device());
        assert_eq!(lp.rdev(), nix::sys::stat::makedev(7, 0));
        assert!(fs::symlink_metadata(dir.path().join("dev/initctl")).unwrap().file_type().is_fifo());
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        fs::write(dir.path().join("etc/gone"), b"x").unwrap();
        let t = tar_with(|b| file(b, "etc/.wh.gone", b""));
        unpack(&t[..], dir.path(), Whiteouts::Overlay, None).unwrap();
        let m = fs::symlink_metadata(dir.path().join("etc/gone")).unwrap();
        assert!(m.file_type().is_char_device());
        assert_eq!(m.rdev(), 0);
    }

    /// A tar as some OCI tools write it: the stream stops right after the last member's data.
    fn untrailed(t: &[u8], last_data: usize) -> Vec<u8> {
        // Strip the two end blocks, then the last member's padding.
        let body = &t[..t.len() - 1024];
        let pad = (512 - last_data % 512) % 512;
        body[..body.len() - pad].to_vec()
    }

    #[test]
    fn a_stream_that_ends_after_the_last_data_is_complete() {
        let dir = tempfile::tempdir().unwrap();
        let t = tar_with(|b| {
            file(b, "first", b"1");
            file(b, "last", b"hello");
        });
        let cut = untrailed(&t, 5);
        assert_eq!(cut.len() % 512, 5);
        let got = unpack(&cut[..], dir.path(), Whiteouts::Overlay, None).unwrap();
        assert_eq!(fs::read(dir.path().join("last")).unwrap(), b"hello");
        // The digest is of the bytes as they came, with nothing added.
        assert_eq!(got.diff_id, crate::content::sha256_digest(&cut));
        // The same through gzip.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &cut).unwrap();
        let dir2 = tempfile::tempdir().unwrap();
        unpack(&gz.finish().unwrap()[..], dir2.path(), Whiteouts::Overlay, None).unwrap();
        assert_eq!(fs::read(dir2.path().join("last")).unwrap(), b"hello");
    }

    #[test]
    fn truncated_streams_are_errors() {
        let t = tar_with(|b| file(b, "last", b"hello world"));
        // Inside the data, and partway through the padding: both truncated (as Go's reader says).
        for cut in [512 + 5, 512 + 11 + 3] {
            let dir = tempfile::tempdir().unwrap();
            let err = unpack(&t[..cut], dir.path(), Whiteouts::Overlay, None).unwrap_err();
            assert!(matches!(err, UnpackError::Archive(_)), "cut at {cut}: {err}");
        }
        // Inside a header.
        let dir = tempfile::tempdir().unwrap();
        assert!(unpack(&t[..100], dir.path(), Whiteouts::Overlay, None).is_err());
    }

    #[test]
    fn hard_links_name_the_inode_inside_the_root() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let t = tar_with(|b| {
            file(b, "bin/busybox", b"elf");
            link(b, tar::EntryType::Link, "bin/sh", "bin/busybox");
            link(b, tar::EntryType::Link, "bin/busybox", "bin/busybox");
        });
        unpack(&t[..], dir.path(), Whiteouts::Overlay, None).unwrap();
        let a = fs::metadata(dir.path().join("bin/busybox")).unwrap();
        let b = fs::metadata(dir.path().join("bin/sh")).unwrap();
        assert_eq!(a.ino(), b.ino());
        assert_eq!(a.nlink(), 2);
    }

    #[test]
    fn a_file_replaces_a_directory_and_later_entries_see_the_change() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        fs::create_dir(&root).unwrap();
        let t = tar_with(|b| {
            file(b, "etc/passwd", b"root");
            file(b, "d/x", b"1");
            // d becomes a symlink to /etc (inside the root); d/y then lands in <root>/etc.
            link(b, tar::EntryType::Symlink, "d", "/etc");
            file(b, "d/y", b"2");
        });
        unpack(&t[..], &root, Whiteouts::Overlay, None).unwrap();
        assert_eq!(fs::read(root.join("etc/y")).unwrap(), b"2");
        assert!(fs::symlink_metadata(root.join("d")).unwrap().file_type().is_symlink());
    }

    #[test]
    fn huge_extension_headers_are_refused_before_they_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(3 << 30);
        h.set_cksum();
        let mut t = h.as_bytes().to_vec();
        t.extend(std::iter::repeat_n(b'a', 4096));
        let err = unpack(&t[..], dir.path(), Whiteouts::Overlay, None).unwrap_err();
        assert!(matches!(err, UnpackError::HugeHeader(n) if n == 3 << 30), "{err}");
        // Normal archives with PAX headers and long names still pass the guard.
        let long = "d/".repeat(60) + "file";
        let t = tar_with(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_size(2);
            h.set_mode(0o644);
            b.append_data(&mut h, &long, &b"ok"[..]).unwrap();
            file(b, "after", b"x");
        });
        unpack(&t[..], dir.path(), Whiteouts::Overlay, None).unwrap();
        assert_eq!(fs::read(dir.path().join(&long)).unwrap(), b"ok");
        assert_eq!(fs::read(dir.path().join("after")).unwrap(), b"x");
    }

    #[test]
    fn diff_id_is_checked_and_gzip_detected() {
        let dir = tempfile::tempdir().unwrap();
        let t = tar_with(|b| file(b, "a", b"hello"));
        let want = crate::content::sha256_digest(&t);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &t).unwrap();
        let gz = gz.finish().unwrap();
        let got = unpack(&gz[..], dir.path(), Whiteouts::Overlay, Some(&want)).unwrap();
        assert_eq!(got.diff_id, want);
        let err = unpack(&t[..], dir.path(), Whiteouts::Overlay, Some("sha256:00")).unwrap_err();
        assert!(matches!(err, UnpackError::DiffIdMismatch { .. }));
    }
}
