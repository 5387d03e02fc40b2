//! gRPC over unix sockets, both ways: a tonic channel to a socket path (the plugin's client of
//! the kubelet's `Registration`, the tests' client of the plugin) and the identity of a socket
//! file, by which the plugin notices that the kubelet's socket, or its own, was replaced.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// A channel whose every connection is a new connection to the socket at `path`. The URI is
/// only the `:authority` of the requests (gRPC servers on unix sockets ignore it).
pub async fn channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
}

/// A socket file's identity, or `None` when there is no socket there. A file system may give a
/// new file the inode number of one just removed, so the identity has the time of the inode's
/// last change too (set when the socket is made), to the nanosecond.
pub type Identity = (u64, u64, i64, i64);

/// The identity of the socket at `path`.
pub fn identity(path: &Path) -> Option<Identity> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    meta.file_type()
        .is_socket()
        .then(|| (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec()))
}
