//! Berth's host side: it boots the guest VM, talks to the agent in it, and forwards the
//! Docker socket into it. It never depends on the engine (`berth-runtime`): it must build on
//! macOS and Windows too.
//!
//! ```text
//!   docker CLI ─► $BERTH_HOME/docker.sock ─► forward::socket ─► transport ─► guest :2375
//!   berth stop / status ───────────────────────► control (berth-protocol) ─► guest :1024
//!   vm::Machine: vhost-device-vsock + qemu-system, serial log in $BERTH_HOME
//! ```

pub mod config;
pub mod control;
pub mod forward;
pub mod local;
pub mod transport;
pub mod vm;
