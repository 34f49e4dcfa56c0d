//! Streams from the host to ports of the guest's agent. Today hybrid vsock (a unix socket
//! served by the vsock device, Firecracker style); native AF_VSOCK and a multiplexed
//! virtio-serial link come next behind the same function.

pub mod hybrid;
