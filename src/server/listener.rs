//! Unix socket listeners whose permissions are right from the first instant, and the accepted
//! streams that carry their attested peer into every request.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::server::Connected;

use crate::workload::PeerInfo;

/// Binds `path` with `mode` (and group `gid`): bound under a temporary name, its mode and group
/// set, then renamed into place, so the socket is never reachable with looser permissions.
/// An existing socket is replaced only if nothing is listening on it; an existing file that is
/// not a socket is never removed.
pub fn bind(path: &Path, mode: u32, gid: Option<u32>) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    remove_stale(path)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    remove_stale(&tmp)?;
    let listener = UnixListener::bind(&tmp)?;
    let result = (|| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&tmp, None, Some(gid))?;
        }
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

/// A listener passed by systemd, made non-blocking for tokio.
pub fn adopt(listener: std::os::unix::net::UnixListener) -> io::Result<UnixListener> {
    listener.set_nonblocking(true)?;
    UnixListener::from_std(listener)
}

fn remove_stale(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; refusing to remove it",
                path.display()
            ),
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another process is listening on {}", path.display()),
        )),
        Err(_) => std::fs::remove_file(path),
    }
}

/// What a connection's requests learn about their peer. An `Err` means attestation failed:
/// every request on that connection is refused with the reason.
pub type PeerAttestation = Arc<Result<PeerInfo, String>>;

/// An accepted connection with its attested peer.
pub struct PeerStream {
    inner: UnixStream,
    peer: PeerAttestation,
}

impl PeerStream {
    pub fn new(inner: UnixStream, read_exe: bool) -> Self {
        let peer = Arc::new(super::peer::attest(&inner, read_exe));
        if let Err(e) = peer.as_ref() {
            tracing::warn!(error = %e, "could not identify a connecting peer; its requests will be refused");
        }
        Self { inner, peer }
    }
}

impl Connected for PeerStream {
    type ConnectInfo = PeerAttestation;

    fn connect_info(&self) -> Self::ConnectInfo {
        Arc::clone(&self.peer)
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepted connections as a stream for tonic, each attested as it arrives.
/// `read_exe` follows the configuration: whether any workload selects on the executable.
pub fn incoming(
    listener: UnixListener,
    read_exe: Arc<std::sync::atomic::AtomicBool>,
) -> impl futures_util::Stream<Item = io::Result<PeerStream>> + Send + 'static {
    futures_util::stream::unfold(listener, move |listener| {
        let read_exe = read_exe.load(std::sync::atomic::Ordering::Relaxed);
        async move {
            let next = listener
                .accept()
                .await
                .map(|(stream, _)| PeerStream::new(stream, read_exe));
            Some((next, listener))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_with_mode_and_refuses_to_clobber() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("b.sock");
        let l = bind(&path, 0o660, None).unwrap_or_else(|e| panic!("{e}"));
        let mode = std::fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        assert_eq!(mode, 0o660);
        // A live socket is not replaced.
        let err = bind(&path, 0o600, None).err().map(|e| e.kind());
        assert_eq!(err, Some(io::ErrorKind::AddrInUse));
        drop(l);
        // A stale one is.
        assert!(bind(&path, 0o600, None).is_ok());
        // A regular file is never removed.
        let file = dir.path().join("f.sock");
        std::fs::write(&file, b"keep").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            bind(&file, 0o600, None).err().map(|e| e.kind()),
            Some(io::ErrorKind::AlreadyExists)
        );
        assert_eq!(std::fs::read(&file).ok(), Some(b"keep".to_vec()));
    }
}
