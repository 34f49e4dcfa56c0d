//! Container networking. Today: a private network namespace with loopback (the default and
//! `none`), or the engine's own namespace (`host`). The bridge with NAT and published ports
//! comes next (see docs/architecture.md).

/// The network modes the engine accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Own namespace (Docker's default `bridge`, and `none`).
    Private,
    Host,
}

/// Parses `HostConfig.NetworkMode`.
pub fn parse_mode(s: &str) -> Option<Mode> {
    match s {
        "" | "default" | "bridge" | "none" => Some(Mode::Private),
        "host" => Some(Mode::Host),
        _ => None,
    }
}
