//! QEMU's machine protocol (QMP) through the `qapi` crate: the VM's run state and QEMU's
//! version for `berth status`, and the two power steps of `berth stop` that do not need the
//! guest's agent (`system_powerdown`, the ACPI power button, and `quit`).
//!
//! QEMU serves QMP on `<vm dir>/qmp.sock` (`-qmp unix:...,server=on,wait=off`). Each call has a
//! deadline: a wedged QEMU must not hang `berth status` or `berth stop`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use qapi::Enum as _;
use qapi::futures::{QapiService, QmpStreamTokio};
use tokio::io::WriteHalf;

use crate::local::UnixClient;

/// How long one QMP exchange (connect and greeting, or one command) may take.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Errors talking QMP.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QEMU's QMP socket {path} is not reachable")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("QMP {command} failed: {message}")]
    Command { command: &'static str, message: String },
    #[error("QEMU did not answer QMP {command} within {} s", DEADLINE.as_secs())]
    Timeout { command: &'static str },
}

/// The VM's run state as QEMU reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStatus {
    /// Whether the vCPUs run.
    pub running: bool,
    /// QEMU's name for the state: `running`, `paused`, `shutdown`, `internal-error`, ...
    pub state: String,
}

type Service = QapiService<QmpStreamTokio<WriteHalf<UnixClient>>>;

/// A QMP connection, capabilities negotiated; its reader runs as a tokio task.
pub struct Qmp {
    service: Service,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A QMP connection with capabilities negotiated, not yet split into service and events.
type Negotiated =
    qapi::futures::QapiStream<QmpStreamTokio<tokio::io::ReadHalf<UnixClient>>, QmpStreamTokio<WriteHalf<UnixClient>>>;

/// Connects to the monitor at `path` and negotiates, within [`DEADLINE`].
async fn negotiated(path: &Path) -> Result<Negotiated, QmpError> {
    let err = |source| QmpError::Connect { path: path.to_owned(), source };
    let open = async {
        let negotiation = QmpStreamTokio::open(crate::local::connect_unix(path).await?).await?;
        negotiation.negotiate().await
    };
    match tokio::time::timeout(DEADLINE, open).await {
        Ok(r) => r.map_err(err),
        Err(_) => Err(QmpError::Timeout { command: "greeting" }),
    }
}

impl Qmp {
    /// Connects to QEMU's QMP socket and negotiates capabilities.
    pub async fn connect(path: &Path) -> Result<Qmp, QmpError> {
        let (service, reader) = negotiated(path).await?.spawn_tokio();
        Ok(Qmp { service, reader })
    }

    async fn execute<C>(&self, command: C) -> Result<C::Ok, QmpError>
    where
        C: qapi::qmp::QmpCommand,
    {
        let name = C::NAME;
        match tokio::time::timeout(DEADLINE, self.service.execute(command)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(QmpError::Command { command: name, message: e.to_string() }),
            Err(_) => Err(QmpError::Timeout { command: name }),
        }
    }

    /// `query-status`.
    pub async fn status(&self) -> Result<RunStatus, QmpError> {
        let info = self.execute(qapi::qmp::query_status {}).await?;
        Ok(RunStatus { running: info.running, state: info.status.name().to_owned() })
    }

    /// `query-version`: `major.minor.micro`, with the distribution's package string when QEMU
    /// has one (e.g. `7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)`).
    pub async fn version(&self) -> Result<String, QmpError> {
        let v = self.execute(qapi::qmp::query_version {}).await?;
        let q = v.qemu;
        let package = v.package.trim();
        Ok(if package.is_empty() {
            format!("{}.{}.{}", q.major, q.minor, q.micro)
        } else {
            format!("{}.{}.{} ({package})", q.major, q.minor, q.micro)
        })
    }

    /// `stop`: the vCPUs stop.
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.execute(qapi::qmp::stop {}).await.map(|_| ())
    }

    /// `cont`: the vCPUs run again.
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute(qapi::qmp::cont {}).await.map(|_| ())
    }

    /// `migrate` to `uri` (`unix:PATH`); the migration runs on in QEMU.
    pub async fn migrate_to(&self, uri: &str) -> Result<(), QmpError> {
        let m = qapi::qmp::migrate { uri: Some(uri.to_owned()), channels: None, detach: None, resume: None };
        self.execute(m).await.map(|_| ())
    }

    /// `migrate-incoming` from `uri`, into a QEMU started with `-incoming defer`.
    pub async fn migrate_incoming(&self, uri: &str) -> Result<(), QmpError> {
        let m = qapi::qmp::migrate_incoming { uri: Some(uri.to_owned()), channels: None, exit_on_error: None };
        self.execute(m).await.map(|_| ())
    }

    /// The outgoing migration's status (`completed`, `failed`, `active`, ...).
    pub async fn migration_status(&self) -> Result<String, QmpError> {
        let info = self.execute(qapi::qmp::query_migrate {}).await?;
        Ok(info.status.map(|s| s.name().to_owned()).unwrap_or_else(|| "none".into()))
    }

    /// `system_powerdown`: presses the ACPI power button; the guest decides what to do.
    pub async fn powerdown(&self) -> Result<(), QmpError> {
        self.execute(qapi::qmp::system_powerdown {}).await.map(|_| ())
    }

    /// `quit`: QEMU exits at once, without the guest. QEMU may close the socket before its
    /// answer is read; that counts as done.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.execute(qapi::qmp::quit {}).await {
            Err(QmpError::Command { message, .. }) if is_eof(&message) => Ok(()),
            r => r.map(|_| ()),
        }
    }
}

/// Calls `on_resume` each time the VM resumes after a stop (QMP's `RESUME` event: a `cont`,
/// or the host waking a VM it paused), on a connection of its own to the monitor at `path`,
/// until QEMU goes away. The guest's clock stood still meanwhile.
pub async fn watch_resumes(path: &Path, mut on_resume: impl FnMut() + Send) -> Result<(), QmpError> {
    use futures_util::StreamExt;
    // The service half must live for the events to flow.
    let (_service, mut events) = negotiated(path).await?.into_parts();
    while let Some(event) = events.next().await {
        match event {
            Ok(qapi::qmp::Event::RESUME { .. }) => on_resume(),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Ok(())
}

fn is_eof(message: &str) -> bool {
    // qapi turns a closed stream into an io::Error whose text is all that reaches us.
    let m = message.to_ascii_lowercase();
    m.contains("eof") || m.contains("closed") || m.contains("broken pipe") || m.contains("reset")
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(unix)]
    use std::process::Stdio;
    #[cfg(unix)]
    use std::time::Instant;

    /// A QEMU with no machine at all: it starts in milliseconds and serves QMP.
    #[cfg(unix)]
    async fn bare_qemu(sock: &Path, paused: bool) -> tokio::process::Child {
        let mut cmd = tokio::process::Command::new("qemu-system-x86_64");
        cmd.args(["-machine", "none", "-nodefaults", "-display", "none", "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if paused {
            cmd.arg("-S");
        }
        let child = cmd.spawn().expect("qemu-system-x86_64 is installed (./dev setup)");
        let start = Instant::now();
        while !sock.exists() {
            assert!(start.elapsed() < Duration::from_secs(10), "QEMU made no QMP socket");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        child
    }

    // QEMU (or `true`) runs here as a Linux program: on the Linux hosts that run the tests.
    #[cfg(unix)]
    #[tokio::test]
    async fn status_version_and_quit_against_a_real_qemu() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let mut qemu = bare_qemu(&sock, true).await;
        let qmp = Qmp::connect(&sock).await.unwrap();
        assert_eq!(qmp.status().await.unwrap(), RunStatus { running: false, state: "prelaunch".into() });
        let version = qmp.version().await.unwrap();
        let cli = std::process::Command::new("qemu-system-x86_64").arg("--version").output().unwrap();
        let cli = String::from_utf8_lossy(&cli.stdout);
        let number = version.split_whitespace().next().unwrap();
        assert!(cli.contains(&format!("version {number}")), "QMP says {version}, the binary {cli}");
        // No guest to react to the power button; QEMU accepts the request all the same.
        qmp.powerdown().await.unwrap();
        qmp.quit().await.unwrap();
        let st = tokio::time::timeout(Duration::from_secs(10), qemu.wait()).await.unwrap().unwrap();
        assert!(st.success(), "{st}");
    }

    #[tokio::test]
    async fn a_missing_socket_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        match Qmp::connect(&sock).await {
            Err(e @ QmpError::Connect { .. }) => assert!(e.to_string().contains("qmp.sock"), "{e}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}
