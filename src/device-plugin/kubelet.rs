//! The plugin's life with the kubelet: serve `DevicePlugin` on a socket in the kubelet's device
//! plugin directory, register it (`Registration.Register` on the kubelet's socket: version
//! `v1beta1`, the socket's name, the resource, the options), then watch both sockets. When the
//! kubelet restarts it removes every socket in that directory and makes its own anew: either
//! change (checked every `poll` interval) ends this registration's server and streams, and the
//! plugin serves on a fresh socket and registers again. A kubelet that cannot be reached is
//! waited for; one that answers the registration with an error ends the plugin (the API asks a
//! plugin to terminate then; the DaemonSet starts it again).

use std::path::PathBuf;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::Code;
use tonic::transport::Server;

use crate::api::device_plugin_server::DevicePluginServer;
use crate::api::registration_client::RegistrationClient;
use crate::api::{RegisterRequest, VERSION};
use crate::service::{Plugin, options};
use crate::unix::{Identity, channel, identity};

/// Where and how the plugin meets the kubelet.
#[derive(Debug, Clone)]
pub struct Meeting {
    /// The kubelet's device plugin directory (`/var/lib/kubelet/device-plugins`).
    pub dir: PathBuf,
    /// The kubelet's registration socket (`<dir>/kubelet.sock`).
    pub kubelet_socket: PathBuf,
    /// The name of the plugin's own socket in `dir`.
    pub socket_name: String,
    /// The resource advertised (`vramguard.dev/guard`).
    pub resource_name: String,
    /// How often both sockets are looked at.
    pub poll: Duration,
}

/// Why the plugin stopped.
#[derive(Debug)]
pub enum Stop {
    /// The plugin's socket could not be made.
    Socket(String),
    /// The kubelet refused the registration.
    Refused(String),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Socket(why) => write!(f, "cannot serve: {why}"),
            Stop::Refused(why) => write!(f, "the kubelet refused the registration: {why}"),
        }
    }
}

/// How long one registration call may take before the kubelet counts as unreachable.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a finished registration's server may take to close its connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

enum Registration {
    /// Registered with the kubelet whose socket has this identity.
    Done(Identity),
    /// The plugin's own socket went away before it could register.
    SocketGone,
}

/// Serves and registers, again after every kubelet restart, until the kubelet refuses (or the
/// socket cannot be made). `plugin` makes the service of one registration from its stop signal.
pub async fn run(
    meeting: &Meeting,
    plugin: impl Fn(watch::Receiver<()>) -> Plugin,
) -> Result<(), Stop> {
    let socket = meeting.dir.join(&meeting.socket_name);
    loop {
        match std::fs::remove_file(&socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Stop::Socket(format!("{}: {e}", socket.display()))),
        }
        let listener = UnixListener::bind(&socket)
            .map_err(|e| Stop::Socket(format!("{}: {e}", socket.display())))?;
        let own = identity(&socket)
            .ok_or_else(|| Stop::Socket(format!("{} vanished at once", socket.display())))?;
        let (stop_tx, stop_rx) = watch::channel(());
        let mut shutdown = stop_rx.clone();
        let server = tokio::spawn(Server::builder().serve_with_incoming_shutdown(
            DevicePluginServer::new(plugin(stop_rx)),
            UnixListenerStream::new(listener),
            async move {
                let _ = shutdown.changed().await;
            },
        ));

        let outcome = register_when_ready(meeting, own).await;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(refused) => {
                drop(stop_tx);
                finish(server).await;
                let _ = std::fs::remove_file(&socket);
                return Err(refused);
            }
        };
        if let Registration::Done(kubelet) = outcome {
            eprintln!(
                "vramguard-device-plugin: registered {} with the kubelet at {} (endpoint {})",
                meeting.resource_name,
                meeting.kubelet_socket.display(),
                meeting.socket_name
            );
            loop {
                tokio::time::sleep(meeting.poll).await;
                if identity(&socket) != Some(own) {
                    eprintln!(
                        "vramguard-device-plugin: the plugin's socket {} was removed (the kubelet restarted?): serving and registering again",
                        socket.display()
                    );
                    break;
                }
                if identity(&meeting.kubelet_socket) != Some(kubelet) {
                    eprintln!(
                        "vramguard-device-plugin: the kubelet's socket {} was recreated: registering again",
                        meeting.kubelet_socket.display()
                    );
                    break;
                }
            }
        }
        drop(stop_tx);
        finish(server).await;
    }
}

/// Waits for a registration's server to close, aborting it after [`SHUTDOWN_GRACE`].
async fn finish<T>(mut server: tokio::task::JoinHandle<T>) {
    if tokio::time::timeout(SHUTDOWN_GRACE, &mut server)
        .await
        .is_err()
    {
        server.abort();
    }
}

/// Registers as soon as the kubelet answers; says once that it waits.
async fn register_when_ready(meeting: &Meeting, own: Identity) -> Result<Registration, Stop> {
    let socket = meeting.dir.join(&meeting.socket_name);
    let mut said = false;
    loop {
        if identity(&socket) != Some(own) {
            return Ok(Registration::SocketGone);
        }
        if let Some(kubelet) = identity(&meeting.kubelet_socket) {
            match register(meeting).await {
                Ok(()) => return Ok(Registration::Done(kubelet)),
                Err(Attempt::Refused(why)) => return Err(Stop::Refused(why)),
                Err(Attempt::Unreachable(why)) if !said => {
                    eprintln!(
                        "vramguard-device-plugin: waiting for the kubelet at {}: {why}",
                        meeting.kubelet_socket.display()
                    );
                    said = true;
                }
                Err(Attempt::Unreachable(_)) => {}
            }
        } else if !said {
            eprintln!(
                "vramguard-device-plugin: waiting for the kubelet's socket {}",
                meeting.kubelet_socket.display()
            );
            said = true;
        }
        tokio::time::sleep(meeting.poll).await;
    }
}

enum Attempt {
    Unreachable(String),
    Refused(String),
}

/// One `Registration.Register` call.
async fn register(meeting: &Meeting) -> Result<(), Attempt> {
    let request = RegisterRequest {
        version: VERSION.to_string(),
        endpoint: meeting.socket_name.clone(),
        resource_name: meeting.resource_name.clone(),
        options: Some(options()),
    };
    let call = async {
        let channel = channel(&meeting.kubelet_socket)
            .await
            .map_err(|e| Attempt::Unreachable(error_chain(&e)))?;
        RegistrationClient::new(channel)
            .register(request)
            .await
            .map(drop)
            .map_err(|status| match status.code() {
                Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded => {
                    Attempt::Unreachable(status.message().to_string())
                }
                _ => Attempt::Refused(status.message().to_string()),
            })
    };
    tokio::time::timeout(REGISTER_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(Attempt::Unreachable("no answer".to_string())))
}

/// An error and its sources, on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
