//! The agent's APIs. Today the Docker Engine API; the host control API comes with the VM.

pub mod docker;
