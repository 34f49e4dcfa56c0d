//! What the host forwards into the guest: the Docker socket (published ports and shared
//! folders come next).

#[cfg(unix)]
pub mod socket;
