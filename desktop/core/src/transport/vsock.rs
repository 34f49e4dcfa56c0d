//! Native vsock: on Linux hosts with `/dev/vhost-vsock`, QEMU gives the guest a
//! `vhost-vsock-pci` device and the host reaches the guest's ports as `AF_VSOCK` peer
//! (guest CID, port): one kernel connection per stream, with the kernel's half-close.

use super::{Connecting, Kind, Transport};

/// Streams as AF_VSOCK connections to guest `cid`.
pub struct VsockTransport {
    pub cid: u32,
}

impl Transport for VsockTransport {
    fn kind(&self) -> Kind {
        Kind::Vsock
    }

    #[cfg(target_os = "linux")]
    fn connect(&self, port: u32) -> Connecting<'_> {
        Box::pin(async move {
            let s = tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(self.cid, port)).await?;
            Ok(Box::new(s) as super::Stream)
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn connect(&self, _port: u32) -> Connecting<'_> {
        Box::pin(async { Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "native vsock needs a Linux host")) })
    }
}
