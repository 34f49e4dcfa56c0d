//! Shared folders end to end on one machine: the host's file server (berth-core) serves a
//! directory over a mux session to a native agent, which mounts it with FUSE (below a prefix:
//! at the directory's own path it would hide the directory from the server), and containers
//! bind-mount it. Every correctness case is checked on the host's own copy of the files.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_core::forward::files::memory::Memory;
use berth_core::forward::files::{FileServer, ShareSpec};
use berth_core::transport::mux::MuxTransport;
use berth_tests::{Agent, eventually};

/// An agent whose shares mount below `<its dir>/guest`, a host directory served to it, and
/// the path where the guest sees that directory.
struct Setup {
    agent: Agent,
    host: tempfile::TempDir,
    seen: PathBuf,
    server: FileServer,
    _rt: tokio::runtime::Runtime,
    _memory: Option<tempfile::TempDir>,
}

impl Setup {
    /// With shared memory for data, as a VM on Linux or macOS has.
    fn new(read_only: bool) -> Setup {
        Setup::with(read_only, true)
    }

    fn with(read_only: bool, shared_memory: bool) -> Setup {
        Setup::on(read_only, shared_memory, |_| ())
    }

    /// `prepare` readies the host's directory before it is shared.
    fn on(read_only: bool, shared_memory: bool, prepare: impl FnOnce(&Path)) -> Setup {
        let memory_dir = shared_memory.then(|| tempfile::tempdir().unwrap());
        let memory = memory_dir.as_ref().map(|d| Arc::new(Memory::create(&d.path().join("shares.mem")).unwrap()));
        let path = memory.as_ref().map(|m| m.path().display().to_string());
        let agent = Agent::start_args(|dir| {
            let mut args = vec!["--share-prefix".into(), dir.join("guest").display().to_string()];
            args.extend(path.iter().flat_map(|p| ["--share-memory".to_string(), p.clone()]));
            args
        });
        let host = tempfile::tempdir().unwrap();
        prepare(host.path());
        let seen = agent.dir.path().join("guest").join(host.path().strip_prefix("/").unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let server = FileServer::new(&[ShareSpec { path: host.path().to_owned(), read_only }]).unwrap();
        if let Some(m) = memory {
            server.share_memory(m);
        }
        let transport = Arc::new(MuxTransport::serial(agent.mux_socket()));
        rt.spawn(server.clone().serve(transport));
        let s = Setup { agent, host, seen, server, _rt: rt, _memory: memory_dir };
        let ok = eventually(20, || s.mounted());
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let ours: Vec<&str> = mounts.lines().filter(|l| l.contains("fuse") || l.contains(".tmp")).collect();
        assert!(ok, "the share was not mounted at {}: {}\nmounts: {ours:#?}", s.seen.display(), s.agent.log());
        s
    }

    fn mounted(&self) -> bool {
        std::fs::read_to_string("/proc/self/mounts").unwrap_or_default().lines().any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.len() > 2 && f[0] == "berth" && f[1] == self.seen.to_str().unwrap() && f[2].starts_with("fuse")
        })
    }

    fn host(&self, rel: &str) -> PathBuf {
        self.host.path().join(rel)
    }

    fn guest(&self, rel: &str) -> PathBuf {
        self.seen.join(rel)
    }
}

impl Drop for Setup {
    /// Unmounts everything the agent mounted under its prefix: the share, and for a read-only
    /// one its writable mount too (left behind, it kept the test's directory on the disk with a
    /// dead FUSE mount in it). Forced, which ends the FUSE connection: a thread of the agent's
    /// own inside a request on its mount (its raiser sets times through it) kept the killed
    /// agent from ever exiting once, and the test waited for it for good.
    fn drop(&mut self) {
        let prefix = self.agent.dir.path().join("guest");
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut points: Vec<&str> =
            mounts.lines().filter_map(|l| l.split(' ').nth(1)).filter(|p| Path::new(p).starts_with(&prefix)).collect();
        // The innermost first.
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = std::process::Command::new("umount").args(["-f", "-l"]).arg(p).status();
        }
    }
}

#[test]
fn files_behave_as_on_a_disk() {
    let s = Setup::new(false);
    // Read what the host has; write what the host sees at once.
    std::fs::write(s.host("from-host"), "made on the host\n").unwrap();
    assert_eq!(std::fs::read_to_string(s.guest("from-host")).unwrap(), "made on the host\n");
    std::fs::write(s.guest("from-guest"), "made in the guest\n").unwrap();
    assert_eq!(std::fs::read_to_string(s.host("from-guest")).unwrap(), "made in the guest\n");

    // Permission bits, ownership and times.
    std::fs::set_permissions(s.guest("from-guest"), std::fs::Permissions::from_mode(0o751)).unwrap();
    // A change of mode or times may reach the host just after it returns (see
    // `attribute_changes_answered_early_reach_the_host`).
    assert!(eventually(10, || std::fs::metadata(s.host("from-guest")).unwrap().mode() & 0o777 == 0o751));
    std::os::unix::fs::chown(s.guest("from-guest"), Some(1234), Some(2345)).unwrap();
    let m = std::fs::metadata(s.host("from-guest")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1234, 2345));
    let t = filetime_of(1_600_000_000);
    std::fs::File::options().write(true).open(s.guest("from-guest")).unwrap().set_modified(t).unwrap();
    assert!(eventually(10, || std::fs::metadata(s.host("from-guest")).unwrap().mtime() == 1_600_000_000));
    assert_eq!(std::fs::metadata(s.guest("from-guest")).unwrap().mtime(), 1_600_000_000);

    // Directories, listing, rename, symlinks, hard links.
    std::fs::create_dir_all(s.guest("a/b/c")).unwrap();
    std::fs::write(s.guest("a/b/c/f"), "f").unwrap();
    let mut names: Vec<String> =
        std::fs::read_dir(s.guest("a/b/c")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["f"]);
    std::fs::rename(s.guest("a/b"), s.guest("a/moved")).unwrap();
    assert_eq!(std::fs::read_to_string(s.host("a/moved/c/f")).unwrap(), "f");
    assert_eq!(std::fs::read_to_string(s.guest("a/moved/c/f")).unwrap(), "f");
    std::os::unix::fs::symlink("moved/c/f", s.guest("a/link")).unwrap();
    assert_eq!(std::fs::read_link(s.host("a/link")).unwrap(), Path::new("moved/c/f"));
    assert_eq!(std::fs::read_to_string(s.guest("a/link")).unwrap(), "f", "followed in the guest");
    std::fs::hard_link(s.guest("a/moved/c/f"), s.guest("a/hard")).unwrap();
    let (g1, g2) = (std::fs::metadata(s.guest("a/hard")).unwrap(), std::fs::metadata(s.guest("a/moved/c/f")).unwrap());
    assert_eq!(g1.ino(), g2.ino(), "one inode by both names");
    assert_eq!(g1.nlink(), 2);
    assert_eq!(
        std::fs::metadata(s.host("a/hard")).unwrap().ino(),
        std::fs::metadata(s.host("a/moved/c/f")).unwrap().ino()
    );

    // Rename over an open file, and unlink while open: the open file goes on as it was.
    std::fs::write(s.guest("old"), "old contents").unwrap();
    std::fs::write(s.guest("new"), "new contents").unwrap();
    let mut open = std::fs::File::open(s.guest("old")).unwrap();
    std::fs::rename(s.guest("new"), s.guest("old")).unwrap();
    let mut got = String::new();
    open.read_to_string(&mut got).unwrap();
    assert_eq!(got, "old contents");
    assert_eq!(std::fs::read_to_string(s.guest("old")).unwrap(), "new contents");
    let mut open = std::fs::File::options().read(true).write(true).open(s.guest("old")).unwrap();
    std::fs::remove_file(s.guest("old")).unwrap();
    // A removal may reach the host just after it returns (see `removals_answered_early_...`).
    assert!(eventually(10, || !s.host("old").exists()));
    open.write_all(b"still there").unwrap();
    open.seek(SeekFrom::Start(0)).unwrap();
    let mut got = String::new();
    open.read_to_string(&mut got).unwrap();
    assert_eq!(got, "still theres");

    // renameat2: RENAME_EXCHANGE swaps two names at once (a file and a directory here), and
    // RENAME_NOREPLACE refuses a name that is there.
    std::fs::write(s.guest("swap-file"), "file").unwrap();
    std::fs::create_dir(s.guest("swap-dir")).unwrap();
    std::fs::write(s.guest("swap-dir/in"), "in").unwrap();
    renameat2(&s.guest("swap-file"), &s.guest("swap-dir"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(std::fs::read_to_string(s.host("swap-dir")).unwrap(), "file");
    assert_eq!(std::fs::read_to_string(s.guest("swap-file/in")).unwrap(), "in");
    assert_eq!(std::fs::read_to_string(s.guest("swap-dir")).unwrap(), "file");
    let refused = renameat2(&s.guest("swap-dir"), &s.guest("swap-file"), libc::RENAME_NOREPLACE).unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::EEXIST));
    assert!(s.host("swap-file/in").exists() && s.host("swap-dir").is_file());

    // Extended attributes: `user.` ones are the host file's own, both ways; a directory has
    // them too; other namespaces never reach the host (a container cannot give the host's
    // files capabilities) and the host's own are not shown.
    std::fs::write(s.guest("x"), "x").unwrap();
    xattr_set(&s.guest("x"), "user.origin", b"guest", 0).unwrap();
    assert_eq!(xattr_get(&s.host("x"), "user.origin").unwrap(), b"guest");
    xattr_set(&s.host("x"), "user.tag", b"from the host", 0).unwrap();
    xattr_set(&s.host("x"), "trusted.secret", b"host only", 0).unwrap();
    assert_eq!(xattr_get(&s.guest("x"), "user.tag").unwrap(), b"from the host");
    let mut names = xattr_list(&s.guest("x")).unwrap();
    names.sort();
    assert_eq!(names, ["user.origin", "user.tag"]);
    assert_eq!(xattr_get(&s.guest("x"), "trusted.secret").unwrap_err().raw_os_error(), Some(libc::ENODATA));
    // A valid VFS_CAP_REVISION_2 value granting cap_net_bind_service (the kernel checks it).
    let cap = [[0, 0, 0, 2], 1024u32.to_le_bytes(), [0; 4], [0; 4], [0; 4]].concat();
    let caps = xattr_set(&s.guest("x"), "security.capability", &cap, 0).unwrap_err();
    assert_eq!(caps.raw_os_error(), Some(libc::EOPNOTSUPP), "{caps}");
    assert!(xattr_get(&s.host("x"), "security.capability").is_err());
    let exists = xattr_set(&s.guest("x"), "user.tag", b"again", libc::XATTR_CREATE).unwrap_err();
    assert_eq!(exists.raw_os_error(), Some(libc::EEXIST));
    xattr_remove(&s.guest("x"), "user.tag").unwrap();
    assert_eq!(xattr_get(&s.host("x"), "user.tag").unwrap_err().raw_os_error(), Some(libc::ENODATA));
    xattr_set(&s.guest("swap-file"), "user.dir", b"d", 0).unwrap();
    assert_eq!(xattr_get(&s.host("swap-file"), "user.dir").unwrap(), b"d");
    xattr_set(&s.seen, "user.root", b"r", 0).unwrap();
    assert_eq!(xattr_get(s.host.path(), "user.root").unwrap(), b"r");
    std::os::unix::fs::symlink("x", s.guest("x-link")).unwrap();
    let on_link = xattr_set(&s.guest("x-link"), "user.l", b"l", 0).unwrap_err();
    assert_eq!(on_link.raw_os_error(), Some(libc::EPERM), "{on_link}");
    assert!(xattr_get(&s.host("x"), "user.l").is_err(), "the link's target was changed");
    // A value larger than the answer's buffer: ERANGE, as from a disk.
    xattr_set(&s.guest("x"), "user.big", &[b'v'; 3000], 0).unwrap();
    let mut small = [0u8; 16];
    let c = c_path(&s.guest("x"));
    let n = unsafe { libc::getxattr(c.as_ptr(), c"user.big".as_ptr(), small.as_mut_ptr().cast(), small.len()) };
    assert_eq!((n, std::io::Error::last_os_error().raw_os_error()), (-1, Some(libc::ERANGE)));

    // Past 4 GiB (sparse), and fsync meaning on the host's disk.
    let mut big = std::fs::File::create(s.guest("big")).unwrap();
    big.seek(SeekFrom::Start(5 << 30)).unwrap();
    big.write_all(b"tail").unwrap();
    big.sync_all().unwrap();
    assert_eq!(std::fs::metadata(s.host("big")).unwrap().len(), (5 << 30) + 4);
    let mut tail = [0u8; 4];
    let mut h = std::fs::File::open(s.host("big")).unwrap();
    h.seek(SeekFrom::Start(5 << 30)).unwrap();
    h.read_exact(&mut tail).unwrap();
    assert_eq!(&tail, b"tail");

    // Concurrent writers to one file, each its own region.
    let f = std::fs::File::create(s.guest("shared")).unwrap();
    f.set_len(8 * 65536).unwrap();
    let writers: Vec<_> = (0..8u8)
        .map(|i| {
            let p = s.guest("shared");
            std::thread::spawn(move || {
                let mut f = std::fs::File::options().write(true).open(p).unwrap();
                f.seek(SeekFrom::Start(i as u64 * 65536)).unwrap();
                f.write_all(&vec![b'a' + i; 65536]).unwrap();
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let all = std::fs::read(s.host("shared")).unwrap();
    for i in 0..8u8 {
        assert!(all[i as usize * 65536..(i as usize + 1) * 65536].iter().all(|b| *b == b'a' + i), "region {i}");
    }

    // Host edits are seen (within the cache's time to live at most).
    std::fs::write(s.host("from-host"), "changed on the host\n").unwrap();
    assert!(
        eventually(5, || std::fs::read_to_string(s.guest("from-host")).unwrap_or_default() == "changed on the host\n")
    );
}

/// Reads and writes carry their data through the shared memory when the host offers it, and
/// through the stream when it does not, with the same bytes either way: large and odd sizes,
/// offsets past a slot, a read that ends early at the end of the file, writers at once.
#[test]
fn data_goes_through_shared_memory_when_there_is_some() {
    for memory in [true, false] {
        let s = Setup::with(false, memory);
        let pattern = |seed: u32, n: usize| -> Vec<u8> {
            (0..n as u32).map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8).collect()
        };
        let a = pattern(1, (3 << 20) + 12_345);
        std::fs::write(s.guest("a"), &a).unwrap();
        assert!(std::fs::read(s.host("a")).unwrap() == a, "written through {memory}: the host has other bytes");
        let b = pattern(2, (2 << 20) + 777);
        std::fs::write(s.host("b"), &b).unwrap();
        // Once the host's notices have come (the guest may read it while it is written).
        assert!(
            eventually(10, || std::fs::read(s.guest("b")).is_ok_and(|r| r == b)),
            "read through {memory}: the guest got other bytes"
        );
        let mut f = std::fs::File::open(s.guest("b")).unwrap();
        f.seek(SeekFrom::Start((1 << 20) + 5)).unwrap();
        let mut part = vec![0u8; 100_000];
        f.read_exact(&mut part).unwrap();
        assert!(part[..] == b[(1 << 20) + 5..(1 << 20) + 100_005], "a read at an offset");
        let writers: Vec<_> = (0..6u32)
            .map(|i| {
                let (p, data) = (s.guest(&format!("w{i}")), pattern(10 + i, 300_000 + i as usize));
                std::thread::spawn(move || {
                    std::fs::write(&p, &data).unwrap();
                    data
                })
            })
            .collect();
        for (i, w) in writers.into_iter().enumerate() {
            let data = w.join().unwrap();
            assert!(std::fs::read(s.host(&format!("w{i}"))).unwrap() == data, "writer {i}");
        }
        let via = s.server.data_via_memory();
        if memory {
            assert!(via >= 10, "only {via} calls went through the shared memory");
        } else {
            assert_eq!(via, 0, "no memory was offered");
        }
    }
}

/// `renameat2(2)`, which std has no call for.
fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let (from, to) =
        (std::ffi::CString::new(from.as_os_str().as_bytes())?, std::ffi::CString::new(to.as_os_str().as_bytes())?);
    // SAFETY: both paths are NUL-terminated strings that live across the call.
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), flags) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

fn c_path(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

/// `lsetxattr(2)`, `lgetxattr(2)`, `llistxattr(2)` and `lremovexattr(2)`, as a tool would call
/// them (on a symlink itself, never its target).
fn xattr_set(p: &Path, name: &str, value: &[u8], flags: libc::c_int) -> std::io::Result<()> {
    let (p, n) = (c_path(p), std::ffi::CString::new(name).unwrap());
    // SAFETY: valid C strings and a buffer of the length given.
    let r = unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), flags) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

fn xattr_get(p: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let (p, n) = (c_path(p), std::ffi::CString::new(name).unwrap());
    let mut buf = vec![0u8; 65536];
    // SAFETY: as above.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

fn xattr_list(p: &Path) -> std::io::Result<Vec<String>> {
    let p = c_path(p);
    let mut buf = vec![0u8; 65536];
    // SAFETY: as above.
    let r = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(buf[..r as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into())
        .collect())
}

fn xattr_remove(p: &Path, name: &str) -> std::io::Result<()> {
    let (p, n) = (c_path(p), std::ffi::CString::new(name).unwrap());
    // SAFETY: as above.
    if unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn filetime_of(secs: u64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn containers_use_shared_folders_and_cannot_leave_them() {
    let s = Setup::new(false);
    let img = s.agent.pull("busybox:latest");
    std::fs::write(s.host("input"), "from the host\n").unwrap();
    let bind = format!("{}:/app", s.seen.display());
    let out = s.agent.ok(&[
        "run",
        "--rm",
        "-v",
        &bind,
        &img,
        "sh",
        "-c",
        "cat /app/input; echo from the container > /app/output",
    ]);
    assert_eq!(out, "from the host\n");
    assert_eq!(std::fs::read_to_string(s.host("output")).unwrap(), "from the container\n");
    // Read-only binds refuse writes.
    let ro = format!("{}:/app:ro", s.seen.display());
    let (_, err) = s.agent.fails(&["run", "--rm", "-v", &ro, &img, "sh", "-c", "echo x > /app/nope"]);
    assert!(err.contains("Read-only file system"), "{err}");
    // A symlink the container makes is followed in the container: writing through one to
    // /etc lands in the container's /etc, never the host's.
    let script = "ln -s /etc /app/evil && echo planted > /app/evil/berth-planted && cat /etc/berth-planted";
    assert_eq!(s.agent.ok(&["run", "--rm", "-v", &bind, &img, "sh", "-c", script]), "planted\n");
    assert!(!Path::new("/etc/berth-planted").exists(), "written into the host's /etc");
    assert_eq!(std::fs::read_link(s.host("evil")).unwrap(), Path::new("/etc"));
    // A device node cannot be made in a shared folder (it would be made on the host).
    let (_, err) = s.agent.fails(&["run", "--rm", "-v", &bind, &img, "mknod", "/app/dev", "b", "7", "0"]);
    assert!(err.contains("Operation not permitted"), "{err}");
    assert!(!s.host("dev").exists());
    // `..` cannot climb out of the mount.
    let out = s.agent.ok(&["run", "--rm", "-v", &bind, &img, "ls", "/app/.."]);
    assert!(out.contains("app") && out.contains("etc"), "the container's own root: {out}");
}

/// What a container changed in a shared folder is on the host when `docker run` (or `docker
/// exec`) returns, although removals, attribute changes and new files reach the host behind
/// the calls that made them: the engine waits for them before it tells of the exit.
#[test]
fn a_containers_changes_are_on_the_host_when_it_has_exited() {
    let s = Setup::new(false);
    let img = s.agent.pull("busybox:latest");
    let bind = format!("{}:/app", s.seen.display());
    let before = s.server.batches();
    let script = "mkdir /app/out && cd /app/out && for i in $(seq 300); do echo $i > f$i; done \
        && chmod 600 f2* && touch -d @1500000000 f3* && rm f1*";
    s.agent.ok(&["run", "--rm", "-v", &bind, &img, "sh", "-c", script]);
    assert!(s.server.batches() > before, "nothing went behind");
    let names = || {
        let mut n: Vec<String> =
            std::fs::read_dir(s.host("out")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        n.sort();
        n
    };
    let expected = {
        let mut n: Vec<String> = (1..=300).map(|i| format!("f{i}")).filter(|n| !n.starts_with("f1")).collect();
        n.sort();
        n
    };
    // At once: no waiting here.
    assert_eq!(names(), expected);
    for i in [2, 20, 299] {
        let m = std::fs::metadata(s.host(&format!("out/f{i}"))).unwrap();
        assert_eq!(m.mode() & 0o777, 0o600, "f{i}");
        assert_eq!(std::fs::read_to_string(s.host(&format!("out/f{i}"))).unwrap(), format!("{i}\n"));
    }
    assert_eq!(std::fs::metadata(s.host("out/f300")).unwrap().mtime(), 1_500_000_000);
    // The same through an exec.
    s.agent.ok(&["run", "-d", "--name", "settles", "-v", &bind, &img, "sleep", "600"]);
    s.agent.ok(&["exec", "settles", "sh", "-c", "cd /app/out && rm f2* && chmod 640 f3* && echo new > new"]);
    let left = names();
    assert!(left.iter().all(|n| !n.starts_with("f2")), "{left:?}");
    assert_eq!(std::fs::metadata(s.host("out/f30")).unwrap().mode() & 0o777, 0o640);
    assert_eq!(std::fs::read_to_string(s.host("out/new")).unwrap(), "new\n");
    s.agent.ok(&["rm", "-f", "settles"]);
}

#[test]
fn a_read_only_share_refuses_writes() {
    let s = Setup::new(true);
    std::fs::write(s.host("f"), "x").unwrap();
    assert_eq!(std::fs::read_to_string(s.guest("f")).unwrap(), "x");
    let err = std::fs::write(s.guest("g"), "y").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let err = xattr_set(&s.guest("f"), "user.a", b"a", 0).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    xattr_set(&s.host("f"), "user.b", b"b", 0).unwrap();
    assert_eq!(xattr_get(&s.guest("f"), "user.b").unwrap(), b"b");
    // `access(W_OK)` says so too, as on any read-only mount.
    let c = c_path(&s.guest("f"));
    assert_eq!(unsafe { libc::access(c.as_ptr(), libc::W_OK) }, -1);
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EROFS));
    // Host edits still reach a container's watch: the raise has a writable way in that
    // containers do not.
    let img = s.agent.pull("probe:latest");
    let bind = format!("{}:/app", s.seen.display());
    s.agent.ok(&["run", "-d", "--name", "ro-watcher", "-v", &bind, &img, "/probe", "watch:/app"]);
    let logs = || s.agent.ok(&["logs", "ro-watcher"]);
    assert!(eventually(10, || logs().contains("watching /app")), "the watch: {}", logs());
    std::fs::write(s.host("f"), "edited").unwrap();
    assert!(eventually(10, || logs().lines().any(|l| l.ends_with("\tf"))), "no event for the edit: {}", logs());
    assert_eq!(s.agent.ok(&["exec", "ro-watcher", "cat", "/app/f"]), "edited");
    let (_, err) = s.agent.fails(&["exec", "ro-watcher", "sh", "-c", "echo x > /app/f"]);
    assert!(err.contains("Read-only file system"), "{err}");
    s.agent.ok(&["rm", "-f", "ro-watcher"]);
}

/// An edit made on the host reaches a container's inotify watch (as hot reloaders use it),
/// for a changed file and for a new one.
#[test]
fn host_edits_raise_inotify_events_in_containers() {
    let s = Setup::new(false);
    let img = s.agent.pull("probe:latest");
    std::fs::write(s.host("watched.txt"), "v1\n").unwrap();
    let bind = format!("{}:/app", s.seen.display());
    // The probe prints "watching /app" once its watch is set, then "MASK<tab>NAME" per event.
    s.agent.ok(&["run", "-d", "--name", "watcher", "-v", &bind, &img, "/probe", "watch:/app"]);
    let logs = || s.agent.ok(&["logs", "watcher"]);
    assert!(eventually(10, || logs().contains("watching /app")), "the watch: {}", logs());
    let events = |name: &str| logs().lines().filter(|l| l.ends_with(&format!("\t{name}"))).count();
    std::fs::write(s.host("watched.txt"), "v2\n").unwrap();
    assert!(eventually(10, || events("watched.txt") > 0), "no event for the edit: {}", logs());
    std::fs::write(s.host("created.txt"), "new\n").unwrap();
    assert!(eventually(10, || events("created.txt") > 0), "no event for the new file: {}", logs());
    // The container reads the new contents (the notice dropped the cached pages).
    assert_eq!(s.agent.ok(&["exec", "watcher", "cat", "/app/watched.txt"]), "v2\n");
    // A file removed on the host shows as a change of its directory (the watched one itself,
    // so an event without a name), and is gone for the container.
    let dir_events = || logs().lines().filter(|l| l.ends_with('\t')).count();
    let before = dir_events();
    std::fs::remove_file(s.host("created.txt")).unwrap();
    assert!(eventually(10, || dir_events() > before), "no event for the removal: {}", logs());
    let ls = s.agent.ok(&["exec", "watcher", "ls", "/app"]);
    assert!(!ls.contains("created.txt") && ls.contains("watched.txt"), "{ls}");
    // A file the container writes itself raises its own events once, not a second time
    // from the host's echo of the same change.
    let before = events("own.txt");
    assert_eq!(before, 0);
    s.agent.ok(&["exec", "watcher", "sh", "-c", "echo x > /app/own.txt"]);
    assert!(eventually(10, || events("own.txt") > 0), "the container's own write: {}", logs());
    std::thread::sleep(Duration::from_secs(2));
    let own: Vec<String> = logs().lines().filter(|l| l.ends_with("\town.txt")).map(String::from).collect();
    // One write, one IN_MODIFY (0x2): a raise of the host's echo of it would be a second.
    assert_eq!(own.iter().filter(|l| l.starts_with("2\t")).count(), 1, "an echo of the container's own write: {own:?}");
    // The host edits a file the container has just written (well within the two seconds a
    // change of the guest's is taken for its echo): that is news, raised and read.
    s.agent.ok(&["exec", "watcher", "sh", "-c", "echo container > /app/both.txt"]);
    std::fs::write(s.host("both.txt"), "host\n").unwrap();
    let modified = || logs().lines().filter(|l| l.starts_with("2\t") && l.ends_with("\tboth.txt")).count();
    assert!(eventually(10, || modified() >= 2), "the host's edit after the container's was lost: {}", logs());
    assert_eq!(s.agent.ok(&["exec", "watcher", "cat", "/app/both.txt"]), "host\n");
    // A watched file removed on the host, and one replaced by a rename (as editors save),
    // are deleted for their watchers (IN_DELETE_SELF, 0x400), as on a disk.
    for (name, how) in [("doomed.txt", "remove"), ("saved.txt", "rename")] {
        std::fs::write(s.host(name), "old\n").unwrap();
        let watcher = format!("watch-{how}");
        s.agent.ok(&["run", "-d", "--name", &watcher, "-v", &bind, &img, "/probe", &format!("watch:/app/{name}")]);
        let logs = || s.agent.ok(&["logs", &watcher]);
        assert!(eventually(10, || logs().contains("watching")), "the watch: {}", logs());
        if how == "remove" {
            std::fs::remove_file(s.host(name)).unwrap();
        } else {
            std::fs::write(s.host("saved.tmp"), "new\n").unwrap();
            std::fs::rename(s.host("saved.tmp"), s.host(name)).unwrap();
        }
        let deleted = || {
            logs()
                .lines()
                .any(|l| u32::from_str_radix(l.split('\t').next().unwrap_or(""), 16).is_ok_and(|m| m & 0x400 != 0))
        };
        assert!(
            eventually(10, deleted),
            "no IN_DELETE_SELF after the host's {how}: {}\nAGENT {}",
            logs(),
            s.agent.log()
        );
        s.agent.ok(&["rm", "-f", &watcher]);
    }
    assert_eq!(s.agent.ok(&["run", "--rm", "-v", &bind, &img, "cat", "/app/saved.txt"]), "new\n");
    s.agent.ok(&["rm", "-f", "watcher"]);
}

/// A watched file the guest's kernel no longer holds by its name is still deleted for its
/// watcher (IN_DELETE_SELF) when the host removes it or saves another file over it: here
/// the kernel dropped its entries (as it does under memory pressure) while the watch kept the
/// node; in the VM a lookup of the replaced name can also reach the host before its watcher
/// tells of the rename. The kernel deletes a node only through an entry, so the agent hands
/// the node to it once more under a name of its own and deletes that.
#[test]
fn a_watched_file_is_deleted_for_its_watcher_after_the_kernel_dropped_its_name() {
    let s = Setup::new(false);
    for (name, how) in [("doomed.txt", "remove"), ("saved.txt", "rename")] {
        std::fs::write(s.host(name), "old\n").unwrap();
        assert!(eventually(10, || s.guest(name).exists()), "{name} never showed in the guest");
        let watch = Watch::new(&s.guest(name));
        std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
        if how == "remove" {
            std::fs::remove_file(s.host(name)).unwrap();
        } else {
            std::fs::write(s.host("saved.tmp"), "new\n").unwrap();
            std::fs::rename(s.host("saved.tmp"), s.host(name)).unwrap();
        }
        assert!(
            eventually(10, || watch.seen() & libc::IN_DELETE_SELF != 0),
            "no IN_DELETE_SELF after the host's {how} (events {:#x}): {}",
            watch.seen(),
            berth_tests::tail(&s.agent.log(), 30)
        );
    }
    assert_eq!(std::fs::read_to_string(s.guest("saved.txt")).unwrap(), "new\n");
    assert!(!s.guest("doomed.txt").exists());
    // The agent's own names for gone files are gone with them.
    let names: Vec<String> =
        std::fs::read_dir(&s.seen).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names, ["saved.txt"]);
}

/// An inotify watch of one path in this process, and the events it has seen.
struct Watch {
    fd: std::os::fd::OwnedFd,
    seen: std::cell::Cell<u32>,
}

impl Watch {
    fn new(path: &Path) -> Watch {
        use std::os::fd::FromRawFd;
        use std::os::unix::ffi::OsStrExt;
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0, "inotify_init1: {}", std::io::Error::last_os_error());
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        let wd =
            unsafe { libc::inotify_add_watch(std::os::fd::AsRawFd::as_raw_fd(&fd), c.as_ptr(), libc::IN_ALL_EVENTS) };
        assert!(wd >= 0, "watching {}: {}", path.display(), std::io::Error::last_os_error());
        Watch { fd, seen: Default::default() }
    }

    /// Every event's mask seen so far, or'ed.
    fn seen(&self) -> u32 {
        let mut buf = [0u8; 4096];
        loop {
            let n =
                unsafe { libc::read(std::os::fd::AsRawFd::as_raw_fd(&self.fd), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return self.seen.get();
            }
            let mut at = 0;
            while at + 16 <= n as usize {
                let mask = u32::from_ne_bytes(buf[at + 4..at + 8].try_into().unwrap());
                let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
                self.seen.set(self.seen.get() | mask);
                at += 16 + len;
            }
        }
    }
}

/// A name looked for and missing is remembered by the guest's kernel (a negative entry), and
/// forgotten when the host makes it: the file shows in the guest, and so does one made in a
/// directory the guest had only looked into.
#[test]
fn a_missing_name_shows_once_the_host_makes_it() {
    let s = Setup::new(false);
    std::fs::create_dir(s.host("sub")).unwrap();
    for _ in 0..3 {
        assert!(!s.guest("late.txt").exists() && !s.guest("sub/late.txt").exists());
    }
    std::fs::write(s.host("late.txt"), "here\n").unwrap();
    std::fs::write(s.host("sub/late.txt"), "here too\n").unwrap();
    assert!(eventually(10, || s.guest("late.txt").exists()), "the new file stays missing in the guest");
    assert!(eventually(10, || s.guest("sub/late.txt").exists()), "the new file stays missing in sub");
    assert_eq!(std::fs::read_to_string(s.guest("sub/late.txt")).unwrap(), "here too\n");
    // And the other way: a name the guest has seen goes when the host removes it.
    std::fs::remove_file(s.host("late.txt")).unwrap();
    assert!(eventually(10, || !s.guest("late.txt").exists()), "a removed file stays in the guest");
}

/// In a directory the guest made, lookups of names it did not make are answered in the guest
/// (making a file asks the host nothing before the create), and what the host makes or
/// removes there, or in a directory made in it, still shows in the guest at once.
#[test]
fn a_directory_the_guest_made_answers_its_lookups_and_hears_the_host() {
    let s = Setup::new(false);
    std::fs::create_dir(s.guest("made")).unwrap();
    let (before, attrs_before) = (s.server.lookups(), s.server.getattrs());
    for i in 0..50 {
        std::fs::write(s.guest(&format!("made/f{i}")), i.to_string()).unwrap();
    }
    assert!(!s.guest("made/none").exists());
    std::fs::create_dir(s.guest("made/sub")).unwrap();
    std::fs::write(s.guest("made/sub/inner"), "in").unwrap();
    // None, but when a notice crossed an answer under load (what came with it is not
    // trusted then): one per name before.
    let lookups = s.server.lookups() - before;
    assert!(lookups < 5, "the guest asked the host for {lookups} names in a directory it made");
    // Each create changes the directory, and the kernel asks for its attributes again before
    // the next path through it: the answer to the create told the guest.
    let attrs = s.server.getattrs() - attrs_before;
    assert!(attrs < 10, "{attrs} attribute reads for 50 files made in one directory");
    assert_eq!(std::fs::read_to_string(s.host("made/f7")).unwrap(), "7");
    // The guest's own removals and renames there.
    std::fs::remove_file(s.guest("made/f0")).unwrap();
    assert!(!s.guest("made/f0").exists());
    assert!(eventually(10, || !s.host("made/f0").exists()));
    std::fs::rename(s.guest("made/f1"), s.guest("made/g1")).unwrap();
    assert!(!s.guest("made/f1").exists());
    assert_eq!(std::fs::read_to_string(s.guest("made/g1")).unwrap(), "1");
    std::fs::write(s.guest("made/f0"), "again").unwrap();
    // Written ahead of the host: there a trip later.
    assert!(eventually(10, || std::fs::read_to_string(s.host("made/f0")).is_ok_and(|c| c == "again")));
    // The host's changes, in the directory and in the one made in it.
    std::fs::write(s.host("made/late.txt"), "host\n").unwrap();
    std::fs::write(s.host("made/sub/late.txt"), "host too\n").unwrap();
    assert!(eventually(10, || s.guest("made/late.txt").exists()), "a file the host made stays missing");
    assert!(eventually(10, || s.guest("made/sub/late.txt").exists()), "a file the host made stays missing in sub");
    assert_eq!(std::fs::read_to_string(s.guest("made/sub/late.txt")).unwrap(), "host too\n");
    std::fs::remove_file(s.host("made/f2")).unwrap();
    assert!(eventually(10, || !s.guest("made/f2").exists()), "a file the host removed stays");
    // A directory removed by the guest and made again on the host is the host's: its files show.
    std::fs::remove_file(s.guest("made/sub/inner")).unwrap();
    std::fs::remove_file(s.guest("made/sub/late.txt")).unwrap();
    std::fs::remove_dir(s.guest("made/sub")).unwrap();
    std::fs::create_dir(s.host("made/sub")).unwrap();
    std::fs::write(s.host("made/sub/x"), "x").unwrap();
    assert!(eventually(10, || s.guest("made/sub/x").exists()), "a directory the host made again looks empty");
}

/// The first lookup in a directory brings all of it: statting every file of a directory
/// (as `git status` does) is one call to the host, not one per file; files the host changes
/// or makes meanwhile show as they are.
#[test]
fn a_directory_is_looked_into_whole_and_kept_true() {
    let s = Setup::new(false);
    std::fs::create_dir(s.host("tree")).unwrap();
    for i in 0..100 {
        std::fs::write(s.host(&format!("tree/f{i}")), "x".repeat(i)).unwrap();
    }
    assert!(s.guest("tree").is_dir());
    let before = s.server.lookups();
    assert_eq!(std::fs::metadata(s.guest("tree/f0")).unwrap().len(), 0);
    // Changed on the host after the guest has its entry waiting.
    std::fs::write(s.host("tree/f1"), "changed on the host").unwrap();
    std::fs::remove_file(s.host("tree/f2")).unwrap();
    std::fs::write(s.host("tree/new"), "new").unwrap();
    assert!(
        eventually(10, || std::fs::read_to_string(s.guest("tree/f1")).ok().as_deref() == Some("changed on the host")),
        "a file changed on the host shows its old contents"
    );
    assert!(eventually(10, || !s.guest("tree/f2").exists()), "a file removed on the host stays");
    assert!(eventually(10, || s.guest("tree/new").exists()), "a file made on the host stays missing");
    let asked = s.server.lookups() - before;
    for i in 3..100 {
        assert_eq!(std::fs::metadata(s.guest(&format!("tree/f{i}"))).unwrap().len(), i as u64);
    }
    let more = s.server.lookups() - before - asked;
    // The directory was surveyed again after the host's changes (once or a few times, as
    // notices came), not once per file.
    assert!(asked + more < 20, "{asked} then {more} lookups for 100 files");
    assert!(!s.guest("tree/none").exists());
}

/// What the guest keeps (a file's pages across opens, a directory's listing) shows the host's
/// changes: an edit that keeps the size and a directory that gains and loses names.
#[test]
fn the_guests_caches_show_host_changes() {
    let s = Setup::new(false);
    std::fs::create_dir(s.host("d")).unwrap();
    std::fs::write(s.host("d/f"), "aaaa").unwrap();
    std::fs::write(s.host("d/gone"), "").unwrap();
    let list = || {
        let mut names: Vec<String> = std::fs::read_dir(s.guest("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    for _ in 0..2 {
        assert_eq!(std::fs::read_to_string(s.guest("d/f")).unwrap(), "aaaa");
        assert_eq!(list(), ["f", "gone"]);
    }
    std::fs::write(s.host("d/f"), "bbbb").unwrap();
    std::fs::write(s.host("d/new"), "").unwrap();
    std::fs::remove_file(s.host("d/gone")).unwrap();
    assert!(
        eventually(10, || std::fs::read_to_string(s.guest("d/f")).unwrap() == "bbbb"),
        "the guest reads its old copy of a file edited on the host"
    );
    assert!(eventually(10, || list() == ["f", "new"]), "the guest lists its old copy of the directory: {:?}", list());
    // The guest's own changes show in its next listing at once.
    std::fs::write(s.guest("d/mine"), "").unwrap();
    assert_eq!(list(), ["f", "mine", "new"]);
}

/// A file opened only to be written is written past the guest's page cache (direct I/O):
/// what a reader left in the cache does not hide the new contents from the next open, small
/// writes and large ones (through the shared memory) alike, and appends land at the end.
#[test]
fn writes_past_the_cache_are_read_back() {
    let s = Setup::new(false);
    for size in [100, 64 << 10, 3 << 20] {
        let name = format!("f{size}");
        std::fs::write(s.host(&name), vec![b'a'; size]).unwrap();
        // Read twice, so the second read comes from the guest's cache.
        // The guest knows the directory's listing: a name made on the host shows once its
        // notice has come.
        assert!(eventually(10, || s.guest(&name).exists()), "{name} made on the host never showed");
        for _ in 0..2 {
            assert!(std::fs::read(s.guest(&name)).unwrap().iter().all(|&b| b == b'a'));
        }
        // Same size, new contents, through a write-only open.
        let mut w = std::fs::OpenOptions::new().write(true).open(s.guest(&name)).unwrap();
        w.write_all(&vec![b'b'; size]).unwrap();
        drop(w);
        let back = std::fs::read(s.guest(&name)).unwrap();
        assert_eq!(back.len(), size);
        assert!(back.iter().all(|&b| b == b'b'), "{size} bytes: the guest read its cached copy");
        assert!(std::fs::read(s.host(&name)).unwrap().iter().all(|&b| b == b'b'));
        let mut a = std::fs::OpenOptions::new().append(true).open(s.guest(&name)).unwrap();
        a.write_all(b"end").unwrap();
        drop(a);
        let back = std::fs::read(s.guest(&name)).unwrap();
        assert_eq!(back.len(), size + 3);
        assert!(back.ends_with(b"bend"));
        assert_eq!(std::fs::read(s.host(&name)).unwrap(), back);
    }
}

/// After a write the guest's kernel asks for the file's attributes again; the host's answer
/// to the write told them, so the guest answers itself, and they are the host's own: size,
/// times, link count, until anything else may have changed them.
#[test]
fn a_files_attributes_after_a_write_need_no_trip() {
    let s = Setup::new(false);
    let mut f = std::fs::File::create(s.guest("f")).unwrap();
    f.write_all(b"abc").unwrap();
    drop(f);
    let same = |guest: &std::fs::Metadata, host: &std::fs::Metadata| {
        (guest.len(), guest.mtime(), guest.mtime_nsec(), guest.ctime(), guest.ctime_nsec(), guest.nlink())
            == (host.len(), host.mtime(), host.mtime_nsec(), host.ctime(), host.ctime_nsec(), host.nlink())
    };
    let before = s.server.getattrs();
    let seen = std::fs::metadata(s.guest("f")).unwrap();
    assert!(same(&seen, &std::fs::metadata(s.host("f")).unwrap()), "{seen:?}");
    assert_eq!(seen.len(), 3);
    let mut f = std::fs::OpenOptions::new().append(true).open(s.guest("f")).unwrap();
    f.write_all(&vec![b'd'; 100 << 10]).unwrap();
    let seen = f.metadata().unwrap();
    assert_eq!(seen.len(), 3 + (100 << 10));
    assert!(same(&seen, &std::fs::metadata(s.host("f")).unwrap()));
    assert_eq!(std::fs::read(s.guest("f")).unwrap().len(), 3 + (100 << 10));
    assert_eq!(s.server.getattrs(), before, "the host was asked for attributes the write's answer had");
    // A link count changed by the guest: removed while open, the file has none.
    std::fs::remove_file(s.guest("f")).unwrap();
    f.write_all(b"e").unwrap();
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    drop(f);
    // A change on the host after the guest's write shows.
    std::fs::write(s.guest("g"), "guest").unwrap();
    assert_eq!(std::fs::metadata(s.guest("g")).unwrap().len(), 5);
    std::fs::write(s.host("g"), "the host's").unwrap();
    assert!(eventually(10, || std::fs::metadata(s.guest("g")).unwrap().len() == 10), "the guest kept its own size");
}

/// Two containers write one file at once: appends from both are all there, whole and in
/// lines of their own, and writes of separate regions (`dd conv=notrunc`) both land, on the
/// host and for a third container that reads the file after them.
#[test]
fn two_containers_write_one_file() {
    let s = Setup::new(false);
    let img = s.agent.pull("busybox:latest");
    let bind = format!("{}:/w", s.seen.display());
    std::fs::write(s.host("regions"), vec![b'.'; 4 << 20]).unwrap();
    // Each container appends 300 lines and writes 2 MiB of its letter over its half of
    // `regions` (1 MiB writes: through the shared memory).
    let script = |who: &str, half: u32| {
        format!(
            "for i in $(seq 1 300); do echo {who}-$i >> /w/log; done; \
             head -c 2097152 /dev/zero | tr '\\0' {who} | dd of=/w/regions bs=1M seek={} conv=notrunc,fsync 2>/dev/null",
            half * 2
        )
    };
    for (who, half) in [("a", 0), ("b", 1)] {
        s.agent.ok(&[
            "run",
            "-d",
            "--name",
            &format!("writer-{who}"),
            "-v",
            &bind,
            &img,
            "sh",
            "-c",
            &script(who, half),
        ]);
    }
    for who in ["a", "b"] {
        assert_eq!(s.agent.ok(&["wait", &format!("writer-{who}")]).trim(), "0");
    }
    let log = std::fs::read_to_string(s.host("log")).unwrap();
    for who in ["a", "b"] {
        let mine: Vec<&str> = log.lines().filter(|l| l.starts_with(&format!("{who}-"))).collect();
        let expected: Vec<String> = (1..=300).map(|i| format!("{who}-{i}")).collect();
        assert_eq!(mine, expected, "{who}'s appends, in its order");
    }
    assert_eq!(log.lines().count(), 600, "a line torn or lost: {log}");
    let regions = std::fs::read(s.host("regions")).unwrap();
    assert_eq!(regions.len(), 4 << 20);
    assert!(regions[..2 << 20].iter().all(|&b| b == b'a'), "the first half is not all a's");
    assert!(regions[2 << 20..].iter().all(|&b| b == b'b'), "the second half is not all b's");
    // A third container sees what both wrote.
    let out =
        s.agent.ok(&["run", "--rm", "-v", &bind, &img, "sh", "-c", "wc -l < /w/log; tr -d ab < /w/regions | wc -c"]);
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["600", "0"]);
    for who in ["a", "b"] {
        s.agent.ok(&["rm", &format!("writer-{who}")]);
    }
}

/// Many files in many directories, listed and then removed with `rm -rf` (which unlinks
/// while it reads each directory): nothing is skipped and the tree is gone on the host.
/// Each directory holds more entries than one read of it returns (a page on Linux 6.1, 32
/// KiB on later kernels), so `rm` reads again after it has removed some.
#[test]
fn a_large_tree_is_listed_and_removed_whole() {
    let s = Setup::new(false);
    let img = s.agent.pull("busybox:latest");
    let bind = format!("{}:/w", s.seen.display());
    let make = "mkdir /w/many && cd /w/many && for d in $(seq 1 6); do mkdir d$d; \
                for f in $(seq 1 500); do echo $f > d$d/f$f; done; done; ls -lR /w/many | grep -c '^-'";
    assert_eq!(s.agent.ok(&["run", "--rm", "-v", &bind, &img, "sh", "-c", make]).trim(), "3000");
    let count = walkdir_files(&s.host("many"));
    assert_eq!(count, 3000, "the host sees every file");
    // The kernel forgets the share's inodes (as under memory pressure); they are looked up anew.
    drop_caches();
    assert_eq!(walkdir_files(&s.guest("many")), 3000, "the guest lists every file after forgetting");
    let out = s.agent.ok(&["run", "--rm", "-v", &bind, &img, "sh", "-c", "rm -rf /w/many && echo gone"]);
    assert_eq!(out, "gone\n");
    assert!(!s.host("many").exists(), "removed on the host too");
    // Once the guest's kernel forgets everything, the host holds nothing for it either: every
    // count the guest took (lookups, listings, surveyed entries it never used) was given back.
    drop_caches();
    assert!(eventually(10, || s.server.nodes() < 10), "the host still holds {} nodes", s.server.nodes());
}

/// A directory of fewer entries than one answer of the host holds, but more than one read of
/// the kernel's takes, read with small reads while each entry read is removed (as `rm -rf`
/// does): every entry is seen once. The host's listing must be kept for the reads after the
/// first (listed anew, the names that went would shift the rest, and a chunk was skipped: `rm
/// -rf` right after an untar failed with "Directory not empty" in the VM).
#[test]
fn a_directory_read_while_its_entries_go_is_read_whole() {
    let s = Setup::new(false);
    std::fs::create_dir(s.host("d")).unwrap();
    let names: std::collections::BTreeSet<String> = (0..200).map(|i| format!("entry-{i:04}")).collect();
    for n in &names {
        std::fs::write(s.host(&format!("d/{n}")), "x").unwrap();
    }
    let dir = std::fs::File::open(s.guest("d")).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: getdents64(2) into a buffer of the length given, on an open directory.
        let n = unsafe {
            libc::syscall(libc::SYS_getdents64, std::os::fd::AsRawFd::as_raw_fd(&dir), buf.as_mut_ptr(), buf.len())
        };
        assert!(n >= 0, "getdents64: {}", std::io::Error::last_os_error());
        if n == 0 {
            break;
        }
        let mut at = 0;
        while at < n as usize {
            // struct linux_dirent64: ino (8), off (8), reclen (2), type (1), name.
            let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
            let name = &buf[at + 19..at + reclen];
            let name = String::from_utf8_lossy(&name[..name.iter().position(|b| *b == 0).unwrap()]).into_owned();
            if name != "." && name != ".." {
                std::fs::remove_file(s.guest(&format!("d/{name}"))).unwrap();
                assert!(seen.insert(name.clone()), "{name} read twice");
            }
            at += reclen;
        }
    }
    let missed: Vec<&String> = names.difference(&seen).collect();
    assert!(missed.is_empty(), "{} of 200 entries never read: {missed:?}", missed.len());
    std::fs::remove_dir(s.guest("d")).unwrap();
}

/// Names the guest's kernel already holds are answered in the guest when it asks again
/// (`mkdir` of an existing directory asks for every parent, as `mkdir -p` and busybox's `tar`
/// do for each file), the host's count of them stays right, and a file keeps its inode number
/// after the guest's kernel forgot it (`git status` re-reads every file whose number changed).
#[test]
fn names_held_are_answered_in_the_guest_and_keep_their_numbers() {
    let s = Setup::new(false);
    std::fs::create_dir_all(s.guest("a/b/c")).unwrap();
    std::fs::write(s.guest("a/b/c/f"), "f").unwrap();
    let before = s.server.lookups();
    for _ in 0..50 {
        for d in ["a", "a/b", "a/b/c"] {
            let e = std::fs::create_dir(s.guest(d)).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "mkdir {d}");
        }
    }
    let asked = s.server.lookups() - before;
    assert!(asked < 5, "{asked} lookups for 150 mkdirs of directories the guest holds");
    let inos: Vec<u64> =
        ["a", "a/b/c", "a/b/c/f"].iter().map(|p| std::fs::symlink_metadata(s.guest(p)).unwrap().ino()).collect();
    // Its kernel forgets everything: the host's count of every node reaches zero (the answers
    // the guest gave itself were not counted there, nor taken off twice).
    drop_caches();
    assert!(eventually(10, || s.server.nodes() == 1), "the host still holds {} nodes", s.server.nodes());
    let again: Vec<u64> =
        ["a", "a/b/c", "a/b/c/f"].iter().map(|p| std::fs::symlink_metadata(s.guest(p)).unwrap().ino()).collect();
    assert_eq!(again, inos, "inode numbers changed once the guest's kernel forgot them");
    assert_eq!(std::fs::read_to_string(s.guest("a/b/c/f")).unwrap(), "f");
    // A file removed and another made: a new number, whatever inode the host gives it.
    std::fs::remove_file(s.guest("a/b/c/f")).unwrap();
    std::fs::write(s.guest("a/b/c/g"), "g").unwrap();
    assert_ne!(std::fs::symlink_metadata(s.guest("a/b/c/g")).unwrap().ino(), inos[2]);
    for _ in 0..3 {
        assert!(std::fs::create_dir(s.guest("a/b/c")).is_err());
    }
    std::fs::remove_dir_all(s.guest("a")).unwrap();
    assert!(!s.host("a").exists());
    drop_caches();
    assert!(eventually(10, || s.server.nodes() == 1), "the host still holds {} nodes", s.server.nodes());
}

/// A file or directory made read-only on the host by a read-only bind mount onto itself, behind
/// the guest's back (a mount raises no notice): the host's own calls on it fail with EROFS.
/// Unmounted when dropped (lazily: the file server may hold it open).
struct ReadOnlyOnHost(PathBuf);

impl ReadOnlyOnHost {
    fn new(path: &Path) -> ReadOnlyOnHost {
        let mount = |args: &[&str]| {
            let out = std::process::Command::new("mount").args(args).output().unwrap();
            assert!(out.status.success(), "mount {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let p = path.to_str().unwrap();
        mount(&["--bind", p, p]);
        let guard = ReadOnlyOnHost(path.to_owned());
        mount(&["-o", "remount,bind,ro", p]);
        guard
    }
}

impl Drop for ReadOnlyOnHost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A small file system (a tmpfs of `size`) mounted at a path on the host, unmounted when
/// dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn new(path: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "berth-test", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "mount tmpfs: {}", String::from_utf8_lossy(&out.stderr));
        SmallDisk(path.to_owned())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Small writes to files the guest knows go ahead of the host; what the host then fails (its
/// disk full) is told by the next write or `fsync` through the handle, never lost unheard by
/// a program that syncs. And on a share whose disk is nearly full, writes do not go ahead at
/// all: the write that does not fit fails itself.
#[test]
fn writes_answered_early_tell_the_hosts_failures() {
    let s = Setup::new(false);
    let _small = SmallDisk::new(&s.host("small"), "1m");
    std::fs::create_dir(s.guest("small/d")).unwrap();
    std::fs::write(s.guest("small/d/first"), "1").unwrap();
    let before = s.server.batches();
    let chunk = vec![b'x'; 8 << 10];
    let mut files = Vec::new();
    let mut failed_at_write = 0;
    for i in 0..200 {
        let mut f = std::fs::File::create(s.guest(&format!("small/d/f{i}"))).unwrap();
        match f.write_all(&chunk) {
            Ok(()) => files.push((i, f)),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "f{i}: {e}");
                failed_at_write += 1;
            }
        }
    }
    assert!(eventually(10, || s.server.batches() > before), "no write went ahead");
    let mut failed_at_sync = 0;
    for (i, f) in files {
        match f.sync_all() {
            Ok(()) => {
                let len = std::fs::metadata(s.host(&format!("small/d/f{i}"))).unwrap().len();
                assert_eq!(len, chunk.len() as u64, "f{i} synced but not whole on the host");
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "f{i}: {e}");
                failed_at_sync += 1;
            }
        }
    }
    assert!(failed_at_sync > 0, "no write failed on the full disk ({failed_at_write} at the write)");
    assert!(s.agent.log().contains("the host failed a write the guest had answered"), "not logged");
}

/// What `tar` does to each file it makes (write it, set its owner, mode and times) and to
/// each directory (set its mode, then `mkdir` it again for the next file) asks the host
/// nothing the guest must wait for: the kernel's questions in between (the file's attributes
/// before a `chown`, the directory's name again) are answered from what the changes on their
/// way will leave.
#[test]
fn what_tar_does_to_each_file_waits_for_no_trip() {
    let s = Setup::new(false);
    std::fs::create_dir(s.guest("t")).unwrap();
    // The first write learns the host's free space.
    std::fs::write(s.guest("t/first"), "1").unwrap();
    let (uid, gid) = (unsafe { libc::geteuid() }, unsafe { libc::getegid() });
    let (lookups, getattrs) = (s.server.lookups(), s.server.getattrs());
    for i in 0..50 {
        let dir = s.guest(&format!("t/d{i}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        assert_eq!(std::fs::create_dir(&dir).unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
        let f = dir.join("f");
        std::fs::write(&f, format!("file {i}")).unwrap();
        std::os::unix::fs::chown(&f, Some(uid), Some(gid)).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        std::fs::File::options().write(true).open(&f).unwrap().set_modified(filetime_of(1_400_000_000)).unwrap();
    }
    // A few may go when a notice of the host's own crossed an answer (what the guest keeps
    // from it is not trusted then); one per file or directory did before.
    let (lookups, getattrs) = (s.server.lookups() - lookups, s.server.getattrs() - getattrs);
    assert!(lookups < 10, "{lookups} names looked up on the host for 50 directories");
    assert!(getattrs < 10, "{getattrs} attribute reads on the host for 50 files");
    // All of it on the host, once there.
    let f = s.host("t/d49/f");
    assert!(eventually(10, || std::fs::metadata(&f).is_ok_and(|m| m.mtime() == 1_400_000_000)));
    let m = std::fs::metadata(&f).unwrap();
    assert_eq!((m.mode() & 0o777, m.uid(), std::fs::read_to_string(&f).unwrap()), (0o640, uid, "file 49".into()));
    assert_eq!(std::fs::metadata(s.host("t/d49")).unwrap().mode() & 0o777, 0o750);
}

/// Small files opened to be read come whole with the answer to their open: reading them asks
/// the host nothing (`git status` and Python's imports open and read each file). What a read
/// gets is still the file as it is: after a write in the guest, through another handle too,
/// and after a change on the host.
#[test]
fn small_files_come_with_their_open() {
    let s = Setup::new(false);
    std::fs::create_dir(s.host("src")).unwrap();
    let module = |i: usize| format!("module {i}\n").repeat(100);
    for i in 0..50 {
        std::fs::write(s.host(&format!("src/m{i}.py")), module(i)).unwrap();
    }
    std::fs::write(s.host("src/big"), vec![b'b'; 200 << 10]).unwrap();
    let reads = s.server.reads();
    for i in 0..50 {
        assert_eq!(std::fs::read_to_string(s.guest(&format!("src/m{i}.py"))).unwrap(), module(i));
    }
    assert_eq!(s.server.reads() - reads, 0, "small files' reads went to the host");
    // A large one is read from the host.
    assert_eq!(std::fs::read(s.guest("src/big")).unwrap(), vec![b'b'; 200 << 10]);
    assert!(s.server.reads() > reads, "a large file was not read from the host");
    // Written in the guest: the next open reads it.
    std::fs::write(s.guest("src/m1.py"), "changed in the guest").unwrap();
    assert_eq!(std::fs::read_to_string(s.guest("src/m1.py")).unwrap(), "changed in the guest");
    // Changed on the host: read once its notice came.
    std::fs::write(s.host("src/m2.py"), "changed on the host").unwrap();
    let seen = || std::fs::read_to_string(s.guest("src/m2.py")).is_ok_and(|c| c == "changed on the host");
    assert!(eventually(10, seen), "the host's change is not read");
    // Open while another handle writes: a read after the write returned has it.
    let mut reader = std::fs::File::open(s.guest("src/m3.py")).unwrap();
    let mut writer = std::fs::OpenOptions::new().write(true).open(s.guest("src/m3.py")).unwrap();
    writer.write_all(b"XX").unwrap();
    let mut text = String::new();
    reader.read_to_string(&mut text).unwrap();
    assert_eq!(text, format!("XX{}", &module(3)[2..]), "a read after a write through another handle");
}

/// A share whose host file system has little room: writes wait for the host, and the one
/// that does not fit fails itself.
#[test]
fn writes_wait_for_the_host_when_its_disk_is_nearly_full() {
    let small = std::sync::Mutex::new(None);
    let s = Setup::on(false, true, |p| *small.lock().unwrap() = Some(SmallDisk::new(p, "2m")));
    std::fs::create_dir(s.guest("d")).unwrap();
    std::fs::write(s.guest("d/first"), "1").unwrap();
    let chunk = vec![b'x'; 8 << 10];
    let mut full = None;
    for i in 0..400 {
        let mut f = std::fs::File::create(s.guest(&format!("d/f{i}"))).unwrap();
        if let Err(e) = f.write_all(&chunk) {
            full = Some((i, e));
            break;
        }
        f.sync_all().unwrap_or_else(|e| panic!("f{i}: fsync failed after its write succeeded: {e}"));
    }
    let (i, e) = full.expect("2 MiB took 400 files of 8 KiB");
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "f{i}: {e}");
    drop(s);
}

fn walkdir_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() { walkdir_files(&e.path()) } else { 1 }
        })
        .sum()
}

fn drop_caches() {
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
}

/// Removals the guest answers before the host has done them (it knows the directory as its
/// own last change left it): they reach the host in order with what follows them (a file made
/// again under a removed name keeps its new contents, a removed directory takes its files
/// with it), and one the host refuses shows the name again in the guest.
#[test]
fn removals_answered_early_reach_the_host_in_order() {
    let s = Setup::new(false);
    std::fs::create_dir(s.guest("d")).unwrap();
    for i in 0..300 {
        std::fs::write(s.guest(&format!("d/f{i}")), i.to_string()).unwrap();
    }
    let before = s.server.batches();
    for i in 0..300 {
        std::fs::remove_file(s.guest(&format!("d/f{i}"))).unwrap();
        if i % 50 == 0 {
            // Made again at once: the create follows the removal on the host.
            std::fs::write(s.guest(&format!("d/f{i}")), "again").unwrap();
        }
    }
    assert!(eventually(10, || s.server.batches() > before), "no removal went behind");
    let left = |dir: &Path| {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    };
    let expected: Vec<String> = {
        let mut v: Vec<String> = (0..300).step_by(50).map(|i| format!("f{i}")).collect();
        v.sort();
        v
    };
    assert_eq!(left(&s.guest("d")), expected);
    assert!(eventually(10, || left(&s.host("d")) == expected), "the host has {:?}", left(&s.host("d")));
    for name in &expected {
        assert_eq!(std::fs::read_to_string(s.host(&format!("d/{name}"))).unwrap(), "again");
    }
    // A directory emptied by early removals and removed: gone on the host when rmdir returns.
    for name in &expected {
        std::fs::remove_file(s.guest(&format!("d/{name}"))).unwrap();
    }
    std::fs::remove_dir(s.guest("d")).unwrap();
    assert!(!s.host("d").exists(), "rmdir returned before the removals before it were done");

    // A removal the host refuses (the directory became read-only on the host behind the
    // guest's back, which raises no notice): the name comes back in the guest.
    std::fs::create_dir(s.guest("ro")).unwrap();
    std::fs::write(s.guest("ro/first"), "1").unwrap();
    std::fs::write(s.guest("ro/keep"), "kept").unwrap();
    let ro = s.host("ro");
    assert!(eventually(10, || std::fs::read_to_string(ro.join("keep")).is_ok_and(|c| c == "kept")));
    let read_only = ReadOnlyOnHost::new(&ro);
    let removed = std::fs::remove_file(s.guest("ro/keep"));
    let back = eventually(10, || std::fs::read_to_string(s.guest("ro/keep")).is_ok_and(|c| c == "kept"));
    drop(read_only);
    assert!(removed.is_ok(), "the removal was not answered early: {removed:?}");
    assert!(back, "a removal the host refused left the name missing in the guest: {}", s.agent.log());
    assert_eq!(std::fs::read_to_string(s.host("ro/keep")).unwrap(), "kept");
}

/// Attribute changes the guest answers before the host has made them (`tar` sets each file's
/// mode and times after writing it, a trip each before): the host has them soon after, the
/// guest's own `stat` shows them at once, a change of owner still goes first to the host, and
/// a change the host refuses leaves the guest showing the host's attributes again.
#[test]
fn attribute_changes_answered_early_reach_the_host() {
    let s = Setup::new(false);
    std::fs::create_dir(s.guest("t")).unwrap();
    std::fs::write(s.guest("t/f"), "abc").unwrap();
    let before = s.server.batches();
    let t = filetime_of(1_500_000_000);
    std::fs::set_permissions(s.guest("t/f"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::File::options().write(true).open(s.guest("t/f")).unwrap().set_modified(t).unwrap();
    std::fs::set_permissions(s.guest("t"), std::fs::Permissions::from_mode(0o750)).unwrap();
    assert!(eventually(10, || s.server.batches() > before), "no attribute change went behind");
    let seen = std::fs::metadata(s.guest("t/f")).unwrap();
    assert_eq!((seen.mode() & 0o7777, seen.mtime(), seen.len()), (0o600, 1_500_000_000, 3));
    let on_host = |p: &str| std::fs::metadata(s.host(p)).unwrap();
    assert!(eventually(10, || on_host("t").mode() & 0o7777 == 0o750), "the host's directory is not 0750");
    let host = on_host("t/f");
    assert_eq!((host.mode() & 0o7777, host.mtime()), (0o600, 1_500_000_000));
    // What the guest shows once the host has done it is the host's, change time included
    // (before, the change time is the guest's guess).
    let after = std::fs::metadata(s.guest("t/f")).unwrap();
    assert_eq!((after.ctime(), after.ctime_nsec()), (host.ctime(), host.ctime_nsec()));
    // A new owner is the host's to allow: done at once.
    std::os::unix::fs::chown(s.guest("t/f"), Some(4321), Some(4321)).unwrap();
    assert_eq!(std::fs::metadata(s.host("t/f")).unwrap().uid(), 4321);
    // Refused by the host (its file became read-only there behind the guest's back, which
    // raises no notice): the guest shows the host's mode again.
    std::fs::write(s.guest("t/g"), "g").unwrap();
    std::fs::set_permissions(s.guest("t/g"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let g = s.host("t/g");
    // Made ahead of the host: there a trip later.
    assert!(eventually(10, || std::fs::metadata(&g).is_ok_and(|m| m.mode() & 0o777 == 0o644)));
    let read_only = ReadOnlyOnHost::new(&g);
    let changed = std::fs::set_permissions(s.guest("t/g"), std::fs::Permissions::from_mode(0o600));
    let back = eventually(10, || std::fs::metadata(s.guest("t/g")).is_ok_and(|m| m.mode() & 0o7777 == 0o644));
    drop(read_only);
    assert!(changed.is_ok(), "the change was not answered early: {changed:?}");
    assert!(back, "a change the host refused still shows in the guest: {}", s.agent.log());
}

/// Files made in a directory the guest knows whole are made in the guest at once, under a
/// node number the guest chose, and on the host behind (the write that follows is the one
/// trip): the host has them with their contents, their numbers stay after the guest's kernel
/// forgets them, and one the host refuses fails the program's write and leaves no name.
#[test]
fn files_made_ahead_of_the_host_are_whole_there() {
    let s = Setup::new(false);
    std::fs::create_dir(s.guest("m")).unwrap();
    std::fs::write(s.guest("m/first"), "first").unwrap();
    let before = s.server.batches();
    for i in 0..100 {
        std::fs::write(s.guest(&format!("m/f{i}")), format!("contents {i}")).unwrap();
    }
    assert!(eventually(10, || s.server.batches() > before), "no file was made ahead");
    // Written ahead of the host too: there a trip or two later.
    for i in (0..100).step_by(7) {
        let on_host =
            || std::fs::read_to_string(s.host(&format!("m/f{i}"))).is_ok_and(|c| c == format!("contents {i}"));
        assert!(eventually(10, on_host), "m/f{i} on the host");
    }
    let ino = std::fs::metadata(s.guest("m/f42")).unwrap().ino();
    assert!(ino >= 1 << 62, "f42 was not made ahead ({ino})");
    let host = std::fs::metadata(s.host("m/f42")).unwrap();
    let seen = std::fs::metadata(s.guest("m/f42")).unwrap();
    assert_eq!((seen.len(), seen.mode(), seen.uid()), (host.len(), host.mode(), host.uid()));
    drop_caches();
    assert_eq!(std::fs::metadata(s.guest("m/f42")).unwrap().ino(), ino, "the number changed once forgotten");
    assert_eq!(std::fs::read_to_string(s.guest("m/f42")).unwrap(), "contents 42");
    // Removed and made again at once: the new one, on the host too.
    std::fs::remove_file(s.guest("m/f1")).unwrap();
    std::fs::write(s.guest("m/f1"), "again").unwrap();
    assert!(eventually(10, || std::fs::read_to_string(s.host("m/f1")).is_ok_and(|c| c == "again")));

    // Refused by the host (the directory became read-only there behind the guest's back).
    std::fs::create_dir(s.guest("ro")).unwrap();
    std::fs::write(s.guest("ro/first"), "1").unwrap();
    let ro = s.host("ro");
    assert!(eventually(10, || ro.join("first").exists()));
    let read_only = ReadOnlyOnHost::new(&ro);
    // The write went ahead too: fsync tells the program, as a disk's write-back error (or
    // the write itself, if the refusal came back before it).
    let mut f = std::fs::File::create(s.guest("ro/refused")).unwrap();
    let synced = f.write_all(b"lost?").and_then(|()| f.sync_all());
    drop(f);
    let gone = eventually(10, || !s.guest("ro/refused").exists());
    drop(read_only);
    let e = synced.expect_err("a file the host refused to make was written and synced");
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "the host's refusal: {e}");
    assert!(gone, "a file the host refused to make is still there in the guest: {}", s.agent.log());
    assert!(!s.host("ro/refused").exists());
}

/// A name looked up again while a change of its attributes is on its way to the host (`mkdir`
/// of an existing directory makes the kernel ask for it) gets the attributes after the change,
/// not before: the kernel would keep the old ones for a minute.
#[test]
fn lookups_follow_attribute_changes_on_their_way() {
    let s = Setup::new(false);
    std::fs::create_dir(s.guest("p")).unwrap();
    for i in 0..200 {
        let d = s.guest(&format!("p/d{i}"));
        std::fs::create_dir(&d).unwrap();
        let mode = if i % 2 == 0 { 0o700 } else { 0o750 };
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
        assert_eq!(std::fs::create_dir(&d).unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
        let seen = std::fs::metadata(&d).unwrap().mode() & 0o7777;
        assert_eq!(seen, mode, "d{i} shows the mode it had before its change");
    }
}
