//! What the CLI asks of the host's operating system, one function per need, with the Unix and
//! Windows bodies side by side: where the daemon's endpoints are, a private folder, whether a
//! process lives, how a daemon is detached, asked to stop and told to stop.
//!
//! | need | Unix | Windows |
//! |---|---|---|
//! | Docker endpoint | `$BERTH_HOME/docker.sock` | the named pipe `\\.\pipe\docker_engine` (Docker Desktop's), or `BERTH_DOCKER_PIPE` |
//! | control endpoint | `$BERTH_HOME/control.sock` | `\\.\pipe\berth-control-<hash of BERTH_HOME>` |
//! | a detached daemon | `setsid` | `DETACHED_PROCESS`, a new process group |
//! | stop the daemon | SIGTERM | a connection to its pipe `\\.\pipe\berth-stop-<pid>` |
//! | end a leftover QEMU | SIGTERM, then SIGKILL | `TerminateProcess` |

use std::path::{Path, PathBuf};

/// Where the daemon serves the Docker API.
pub fn docker_endpoint(home: &Path) -> PathBuf {
    #[cfg(unix)]
    {
        home.join("docker.sock")
    }
    #[cfg(windows)]
    {
        let _ = home;
        match std::env::var("BERTH_DOCKER_PIPE") {
            Ok(p) if !p.is_empty() => PathBuf::from(p),
            _ => PathBuf::from(r"\\.\pipe\docker_engine"),
        }
    }
}

/// Where the daemon serves the agent's control channel.
pub fn control_endpoint(home: &Path) -> PathBuf {
    #[cfg(unix)]
    {
        home.join("control.sock")
    }
    #[cfg(windows)]
    {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(home.to_string_lossy().as_bytes());
        PathBuf::from(format!(r"\\.\pipe\berth-control-{}", &hex::encode(digest)[..12]))
    }
}

/// `endpoint` as a `DOCKER_HOST` value: `unix:///...`, or `npipe:////./pipe/NAME`.
pub fn docker_host(endpoint: &Path) -> String {
    let text = endpoint.to_string_lossy();
    match text.strip_prefix(r"\\.\pipe\") {
        Some(name) => format!("npipe:////./pipe/{name}"),
        None => format!("unix://{text}"),
    }
}

/// `DOCKER_HOST`'s value as an endpoint: the inverse of [`docker_host`]; a bare path is one.
pub fn endpoint_of(docker_host: &str) -> PathBuf {
    if let Some(name) = docker_host.strip_prefix("npipe:////./pipe/") {
        return PathBuf::from(format!(r"\\.\pipe\{name}"));
    }
    PathBuf::from(docker_host.strip_prefix("unix://").unwrap_or(docker_host))
}

/// Whether an endpoint may be served now: a socket file exists; a pipe cannot be looked at
/// without connecting, so it may.
pub fn endpoint_may_exist(endpoint: &Path) -> bool {
    endpoint.to_string_lossy().starts_with(r"\\.\pipe\") || endpoint.exists()
}

/// Makes `dir` the user's alone (0700). On Windows a folder in the user's profile is.
pub fn make_private(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    }
    #[cfg(windows)]
    {
        let _ = dir;
        Ok(())
    }
}

/// `kill(pid, sig)`; no signal only asks whether `pid` lives.
#[cfg(unix)]
fn signal(pid: i32, sig: Option<nix::sys::signal::Signal>) -> nix::Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
}

/// Whether the process `pid` lives.
pub fn alive(pid: i32) -> bool {
    #[cfg(unix)]
    {
        signal(pid, None).is_ok()
    }
    #[cfg(windows)]
    {
        use windows_sys::Win32::Foundation::{CloseHandle, STILL_ACTIVE};
        use windows_sys::Win32::System::Threading::{
            GetExitCodeProcess, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
        };
        // SAFETY: a handle opened here is closed here; the exit code is written into a local.
        unsafe {
            let h = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid as u32);
            if h.is_null() {
                return false;
            }
            let mut code = 0u32;
            let ok = GetExitCodeProcess(h, &mut code) != 0;
            CloseHandle(h);
            ok && code == STILL_ACTIVE as u32
        }
    }
}

/// The command line of `pid`, where the host shows it (Linux's `/proc`); elsewhere `None`.
pub fn command_line(pid: i32) -> Option<String> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&cmdline).replace('\0', " "))
}

/// Asks `pid` to end cleanly (QEMU answers by exiting with its disk image flushed).
pub fn terminate(pid: i32) {
    #[cfg(unix)]
    {
        let _ = signal(pid, Some(nix::sys::signal::Signal::SIGTERM));
    }
    #[cfg(windows)]
    kill(pid);
}

/// Ends `pid` at once.
pub fn kill(pid: i32) {
    #[cfg(unix)]
    {
        let _ = signal(pid, Some(nix::sys::signal::Signal::SIGKILL));
    }
    #[cfg(windows)]
    {
        use windows_sys::Win32::Foundation::CloseHandle;
        use windows_sys::Win32::System::Threading::{OpenProcess, PROCESS_TERMINATE, TerminateProcess};
        // SAFETY: a handle opened here is closed here.
        unsafe {
            let h = OpenProcess(PROCESS_TERMINATE, 0, pid as u32);
            if !h.is_null() {
                TerminateProcess(h, 1);
                CloseHandle(h);
            }
        }
    }
}

/// Makes `cmd` start a daemon that outlives this terminal: its own session on Unix; detached
/// from the console, in a process group of its own, on Windows.
pub fn detach(cmd: &mut tokio::process::Command) {
    #[cfg(unix)]
    // SAFETY: setsid is async-signal-safe: the daemon leaves the terminal's session.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from));
    }
    #[cfg(windows)]
    {
        const DETACHED_PROCESS: u32 = 0x0000_0008;
        const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;
        cmd.creation_flags(DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP);
    }
}

/// Asks the daemon `pid` to stop the VM and exit.
pub async fn request_stop(pid: i32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        Ok(signal(pid, Some(nix::sys::signal::Signal::SIGTERM))?)
    }
    #[cfg(windows)]
    {
        berth_core::local::connect(&stop_pipe(pid as u32)).await.map(drop)
    }
}

#[cfg(windows)]
fn stop_pipe(pid: u32) -> PathBuf {
    PathBuf::from(format!(r"\\.\pipe\berth-stop-{pid}"))
}

/// Resolves when this daemon is asked to stop: SIGTERM or SIGINT on Unix; on Windows ctrl-c,
/// or a client of its stop pipe ([`request_stop`]).
pub async fn stop_requested() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok(())
    }
    #[cfg(windows)]
    {
        let mut pipe = berth_core::local::Listener::bind(&stop_pipe(std::process::id())).await?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            r = pipe.accept() => r.map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hosts_and_endpoints_map_both_ways() {
        for (endpoint, host) in [
            (r"\\.\pipe\docker_engine", "npipe:////./pipe/docker_engine"),
            ("/home/me/.local/share/berth/docker.sock", "unix:///home/me/.local/share/berth/docker.sock"),
        ] {
            assert_eq!(docker_host(Path::new(endpoint)), host);
            assert_eq!(endpoint_of(host), PathBuf::from(endpoint));
        }
        assert_eq!(endpoint_of("/run/berth.sock"), PathBuf::from("/run/berth.sock"));
    }

    #[test]
    fn this_process_lives_and_a_finished_one_does_not() {
        assert!(alive(std::process::id() as i32));
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .arg("--list")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert!(!alive(pid), "a reaped child");
    }
}
