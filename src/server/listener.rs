//! Unix socket listeners whose permissions are right from the first instant, and the accepted
//! streams that carry their attested peer into every request.

use std::future::Future as _;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::server::Connected;

use super::accept::ConnGuard;
use super::h2fix::AuthorityFix;
use super::h2watch::FrameWatch;
use crate::workload::PeerInfo;

/// Binds `path` with `mode` (and group `gid`), so the socket is never reachable with looser
/// permissions and nobody can redirect what is done to it:
///
/// * the directory must not be writable by other users unless it is sticky: otherwise anyone
///   could replace the socket with their own and collect the tokens MCP servers send;
/// * the socket is bound inside a fresh private directory (0700) beside its final place, its
///   mode and group set there, and only then renamed into place. Setting them on a predictable
///   name in the shared directory would follow a symlink planted there (chmod and chown follow
///   symlinks), and the rename would move the attacker's entry into place.
///
/// An existing socket is replaced only if nothing is listening on it; an existing file that is
/// not a socket is never removed.
pub fn bind(path: &Path, mode: u32, gid: Option<u32>) -> io::Result<UnixListener> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    check_dir(dir)?;
    remove_stale(path)?;
    let private = private_dir(dir)?;
    let tmp = private.join("socket");
    let result = (|| {
        let listener = UnixListener::bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&tmp, None, Some(gid))?;
        }
        std::fs::rename(&tmp, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_dir(&private);
    result
}

/// Refuses a directory other users may write to, unless it is sticky (as `/tmp` is), where
/// they cannot remove or rename what is not theirs.
fn check_dir(dir: &Path) -> io::Result<()> {
    let m = std::fs::metadata(dir)?.permissions().mode();
    if m & 0o022 != 0 && m & 0o1000 == 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is writable by other users (mode {:o}) and not sticky: anyone could replace \
                 the socket; use a directory only credbroker can write (/run/credbroker)",
                dir.display(),
                m & 0o7777
            ),
        ));
    }
    Ok(())
}

/// A new directory only this process can enter, on the same file system as `dir`.
fn private_dir(dir: &Path) -> io::Result<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt as _;
    for _ in 0..16 {
        let p = dir.join(format!(
            ".credbroker-bind-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "could not create a private directory to bind in",
    ))
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

/// An accepted connection with its attested peer. Reads pass through [`AuthorityFix`] (stock
/// gRPC clients' `:authority`), writes through [`FrameWatch`] (refusals are logged). Until its
/// first request arrives the connection has a deadline: one that never asks anything is closed.
pub struct PeerStream {
    inner: UnixStream,
    peer: PeerAttestation,
    fix: Option<AuthorityFix>,
    /// Rewritten bytes not yet read by h2.
    out: Vec<u8>,
    out_at: usize,
    watch: FrameWatch,
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    _guard: ConnGuard,
}

impl PeerStream {
    pub(crate) fn new(
        inner: UnixStream,
        peer: PeerAttestation,
        guard: ConnGuard,
        idle: std::time::Duration,
    ) -> Self {
        Self {
            inner,
            peer,
            fix: Some(AuthorityFix::default()),
            out: Vec::new(),
            out_at: 0,
            watch: FrameWatch::default(),
            idle: Some(Box::pin(tokio::time::sleep(idle))),
            _guard: guard,
        }
    }

    fn peer_fields(&self) -> (Option<u32>, Option<i32>) {
        match self.peer.as_ref() {
            Ok(p) => (Some(p.uid), Some(p.pid)),
            Err(_) => (None, None),
        }
    }

    fn watch_written(&mut self, written: &[u8]) {
        for r in self.watch.scan(written) {
            let (uid, pid) = self.peer_fields();
            tracing::warn!(
                peer_uid = uid,
                peer_pid = pid,
                frame = r.frame,
                stream = r.stream,
                code = r.code_name(),
                "the HTTP/2 layer refused a request from this peer (malformed or over a limit)"
            );
        }
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
        let this = &mut *self;
        loop {
            if this.out_at < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_at);
                buf.put_slice(&this.out[this.out_at..this.out_at + n]);
                this.out_at += n;
                if this.out_at == this.out.len() {
                    this.out.clear();
                    this.out_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let Some(fix) = this.fix.as_mut() else {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            };
            if fix.saw_request() {
                this.idle = None;
            }
            if fix.done() {
                this.fix = None;
                continue;
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => {
                    if let Some(idle) = this.idle.as_mut()
                        && idle.as_mut().poll(cx).is_ready()
                    {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no request on this connection within the idle timeout",
                        )));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    fix.feed(read.filled(), &mut this.out);
                    if fix.take_rewritten() {
                        let (uid, pid) = match this.peer.as_ref() {
                            Ok(p) => (Some(p.uid), Some(p.pid)),
                            Err(_) => (None, None),
                        };
                        tracing::debug!(
                            peer_uid = uid,
                            peer_pid = pid,
                            "replaced an unparseable :authority (a gRPC C-core or Java client's \
                             socket path) with localhost"
                        );
                    }
                }
            }
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.watch_written(&buf[..n]);
        }
        polled
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
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = polled {
            for b in bufs {
                let take = n.min(b.len());
                self.watch_written(&b[..take]);
                n -= take;
                if n == 0 {
                    break;
                }
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_with_mode_and_refuses_to_clobber() {
        let dir = tempfile::tempdir().expect("a temp dir for the sockets should be created");
        let path = dir.path().join("b.sock");
        let l = bind(&path, 0o660, None).expect("a fresh socket should bind with mode 0660");
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
        std::fs::write(&file, b"keep")
            .expect("the regular file beside the socket should be written");
        assert_eq!(
            bind(&file, 0o600, None).err().map(|e| e.kind()),
            Some(io::ErrorKind::AlreadyExists)
        );
        assert_eq!(std::fs::read(&file).ok(), Some(b"keep".to_vec()));
        // Nothing is left beside the socket.
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            left.iter().all(|n| !n.starts_with(".credbroker-bind")),
            "{left:?}"
        );
    }

    /// Suspected: socket creation chmod'ed and renamed a predictable `*.tmpPID` path, which a
    /// symlink planted in a directory writable by others would redirect (chmod follows it).
    #[tokio::test]
    async fn a_shared_directory_is_refused_and_a_planted_symlink_changes_nothing() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir =
            tempfile::tempdir().expect("a temp dir for the shared directory should be created");
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).expect("the shared directory should be created");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777))
            .expect("the shared directory should be made world-writable");
        let err = bind(&shared.join("b.sock"), 0o660, None).err();
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::PermissionDenied));

        // Sticky, like /tmp: allowed, and the old predictable names are irrelevant now.
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777))
            .expect("the shared directory should be made sticky");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"secret").expect("the symlink's victim file should be written");
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600))
            .expect("the victim file should be set to mode 0600");
        let planted = shared.join(format!("b.tmp{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted)
            .expect("the symlink should be planted at the old temp name");
        let l = bind(&shared.join("b.sock"), 0o666, None);
        assert!(l.is_ok(), "{:?}", l.err());
        assert_eq!(mode_of(&victim), 0o600, "the symlink's target was chmod'ed");
        assert_eq!(mode_of(&shared.join("b.sock")), 0o666);
    }

    fn mode_of(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0)
    }
}
