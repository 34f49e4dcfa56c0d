//! The agent's APIs: the Docker Engine API, and the control API the host daemon uses.

pub mod control;
pub mod docker;
pub mod ports;
