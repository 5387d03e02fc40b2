//! `vramguard-device-plugin` against a stand-in kubelet that speaks the real protocol (the
//! `Registration` server and a `DevicePlugin` client generated from the same vendored proto) on
//! unix sockets in a private device plugin directory: registration, `ListAndWatch`, `Allocate`
//! in both modes (the environment, mounts and CDI device names it returns), health, refusal,
//! and registering again after the kubelet restarts.
//!
//! The stand-in does what a kubelet is allowed to do: it may start after the plugin, it dials the
//! plugin's socket inside `Register` (as the kubelet's device manager does) and refuses a plugin
//! it cannot reach, it may refuse a registration, and on a restart it removes every socket of the
//! directory, its own and the plugins', or only replaces its own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status, Streaming};
use vramguard_device_plugin::api::device_plugin_client::DevicePluginClient;
use vramguard_device_plugin::api::registration_server::{Registration, RegistrationServer};
use vramguard_device_plugin::api::{
    AllocateRequest, ContainerAllocateRequest, ContainerPreferredAllocationRequest, Empty,
    ListAndWatchResponse, Mount, PreStartContainerRequest, PreferredAllocationRequest,
    RegisterRequest,
};
use vramguard_device_plugin::unix::channel;

/// Only catches hangs: a healthy run answers in well under a second.
const DEADLINE: Duration = Duration::from_secs(120);

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing after {DEADLINE:?}"))
}

/// The stand-in kubelet's `Registration` service: dials the plugin, records the request.
struct Recorder {
    dir: PathBuf,
    registered: mpsc::UnboundedSender<RegisterRequest>,
    refuse: Option<String>,
}

#[tonic::async_trait]
impl Registration for Recorder {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        if let Some(why) = &self.refuse {
            return Err(Status::unknown(why.clone()));
        }
        if request.version != "v1beta1" {
            return Err(Status::unknown(format!(
                "unsupported version {:?}",
                request.version
            )));
        }
        // The kubelet dials the plugin's endpoint before it answers.
        let endpoint = self.dir.join(&request.endpoint);
        let mut client = DevicePluginClient::new(
            channel(&endpoint)
                .await
                .map_err(|e| Status::unknown(format!("failed to dial device plugin: {e}")))?,
        );
        client.get_device_plugin_options(Empty {}).await?;
        let _ = self.registered.send(request);
        Ok(Response::new(Empty {}))
    }
}

/// A stand-in kubelet serving `Registration` on `<dir>/kubelet.sock`.
struct Kubelet {
    registrations: mpsc::UnboundedReceiver<RegisterRequest>,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl Kubelet {
    fn start(dir: &Path, refuse: Option<&str>) -> Kubelet {
        let socket = dir.join("kubelet.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).unwrap();
        let (registered, registrations) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let service = RegistrationServer::new(Recorder {
            dir: dir.to_path_buf(),
            registered,
            refuse: refuse.map(str::to_string),
        });
        let server = tokio::spawn(async move {
            Server::builder()
                .serve_with_incoming_shutdown(
                    service,
                    UnixListenerStream::new(listener),
                    async move {
                        let _ = stopped.await;
                    },
                )
                .await
                .unwrap();
        });
        Kubelet {
            registrations,
            stop: Some(stop),
            server,
        }
    }

    async fn registration(&mut self) -> RegisterRequest {
        within("a registration", self.registrations.recv())
            .await
            .expect("the kubelet's service ended")
    }

    /// Stops serving, as a kubelet that exits.
    async fn exit(mut self) {
        let _ = self.stop.take().unwrap().send(());
        within("the kubelet's exit", &mut self.server)
            .await
            .unwrap();
    }
}

/// The plugin's process, killed when dropped.
struct PluginProcess {
    child: Child,
    log: PathBuf,
}

impl PluginProcess {
    fn spawn(node: &Node, args: &[&str]) -> PluginProcess {
        let log = node.root.join(format!("plugin-{}.log", next_suffix()));
        let child = Command::new(env!("CARGO_BIN_EXE_vramguard-device-plugin"))
            .arg("--device-plugin-dir")
            .arg(&node.dir)
            .arg("--library")
            .arg(&node.library)
            .arg("--ledger-dir")
            .arg(&node.ledger)
            .arg("--cdi-spec")
            .arg(&node.cdi_spec)
            .args([
                "--units",
                "300",
                "--poll-interval",
                "50ms",
                "--health-interval",
                "50ms",
            ])
            .args(args)
            .env_remove("VRAMGUARD_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        PluginProcess { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (polling, within the deadline) for the plugin to exit.
    async fn exit_status(&mut self) -> ExitStatus {
        let log = self.log.clone();
        within(&format!("the plugin's exit ({})", log.display()), async {
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// Waits until the plugin's stderr contains `text`.
    async fn said(&self, text: &str) {
        within(&format!("{text:?} in the plugin's stderr"), async {
            while !self.log().contains(text) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }
}

impl Drop for PluginProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("the plugin's stderr:\n{}", self.log());
        }
    }
}

fn next_suffix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed).to_string()
}

/// A node's paths: the device plugin directory, the library, the ledger directory, the CDI spec.
struct Node {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    dir: PathBuf,
    library: PathBuf,
    ledger: PathBuf,
    cdi_spec: PathBuf,
}

impl Node {
    /// A node with its library, ledger directory and CDI spec installed.
    fn installed() -> Node {
        let node = Node::bare();
        std::fs::write(&node.library, b"\x7fELF").unwrap();
        std::fs::create_dir(&node.ledger).unwrap();
        std::fs::write(&node.cdi_spec, b"cdiVersion: \"0.3.0\"\n").unwrap();
        node
    }

    /// A node where nothing of vramguard is installed yet.
    fn bare() -> Node {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let dir = root.join("device-plugins");
        std::fs::create_dir(&dir).unwrap();
        Node {
            library: root.join("libvramguard.so"),
            ledger: root.join("ledger dir"),
            cdi_spec: root.join("vramguard.yaml"),
            dir,
            root,
            _tmp: tmp,
        }
    }

    async fn client(&self, endpoint: &str) -> DevicePluginClient<Channel> {
        DevicePluginClient::new(
            within(
                "connecting to the plugin",
                channel(&self.dir.join(endpoint)),
            )
            .await
            .unwrap(),
        )
    }
}

fn assert_registration(request: &RegisterRequest) {
    assert_eq!(request.version, "v1beta1");
    assert_eq!(request.endpoint, "vramguard.sock");
    assert_eq!(request.resource_name, "vramguard.dev/guard");
    let options = request.options.as_ref().expect("options");
    assert!(!options.pre_start_required);
    assert!(options.get_preferred_allocation_available);
}

async fn next_list(stream: &mut Streaming<ListAndWatchResponse>) -> ListAndWatchResponse {
    within("a ListAndWatch answer", stream.message())
        .await
        .unwrap()
        .expect("the stream ended")
}

fn assert_units(list: &ListAndWatchResponse, health: &str) {
    assert_eq!(list.devices.len(), 300);
    let ids: std::collections::HashSet<&str> = list.devices.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids.len(), 300, "unit ids are unique");
    assert!(ids.iter().all(|id| !id.is_empty() && id.len() <= 63));
    assert!(list.devices.iter().all(|d| d.health == health), "{list:?}");
}

fn allocate(ids: &[&[&str]]) -> AllocateRequest {
    AllocateRequest {
        container_requests: ids
            .iter()
            .map(|c| ContainerAllocateRequest {
                devices_ids: c.iter().map(|s| s.to_string()).collect(),
            })
            .collect(),
    }
}

#[tokio::test]
async fn registers_advertises_and_allocates_the_environment_and_the_mounts() {
    let node = Node::installed();
    let mut kubelet = Kubelet::start(&node.dir, None);
    let mut plugin = PluginProcess::spawn(&node, &[]);
    let request = kubelet.registration().await;
    assert_registration(&request);

    let mut client = node.client(&request.endpoint).await;
    let options = client
        .get_device_plugin_options(Empty {})
        .await
        .unwrap()
        .into_inner();
    assert!(options.get_preferred_allocation_available);
    let mut stream = client.list_and_watch(Empty {}).await.unwrap().into_inner();
    let list = next_list(&mut stream).await;
    assert_units(&list, "Healthy");

    // Two containers of a pod, one unit each.
    let (a, b) = (list.devices[0].id.as_str(), list.devices[299].id.as_str());
    let answer = client
        .allocate(allocate(&[&[a], &[b]]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.container_responses.len(), 2);
    let ledger = node.ledger.to_str().unwrap();
    for container in &answer.container_responses {
        assert_eq!(
            container.envs,
            HashMap::from([
                (
                    "LD_PRELOAD".to_string(),
                    "/opt/vramguard/libvramguard.so".to_string()
                ),
                ("VRAMGUARD_DIR".to_string(), ledger.to_string()),
            ])
        );
        assert_eq!(
            container.mounts,
            vec![
                Mount {
                    container_path: "/opt/vramguard/libvramguard.so".to_string(),
                    host_path: node.library.to_str().unwrap().to_string(),
                    read_only: true,
                },
                Mount {
                    container_path: ledger.to_string(),
                    host_path: ledger.to_string(),
                    read_only: false,
                },
            ]
        );
        assert!(container.cdi_devices.is_empty());
        assert!(container.devices.is_empty());
    }

    // An id the plugin never advertised is refused.
    let refused = client.allocate(allocate(&[&["gpu-0"]])).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");

    // The preferred allocation keeps what must be included, then takes the first available.
    let preferred = client
        .get_preferred_allocation(PreferredAllocationRequest {
            container_requests: vec![ContainerPreferredAllocationRequest {
                available_device_i_ds: vec![b.into(), a.into(), list.devices[7].id.clone()],
                must_include_device_i_ds: vec![a.into()],
                allocation_size: 2,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(preferred.container_responses[0].device_i_ds, vec![a, b]);
    client
        .pre_start_container(PreStartContainerRequest {
            devices_ids: vec![a.into()],
        })
        .await
        .unwrap();

    // SIGTERM: the plugin removes its socket (the kubelet stops counting its units) and exits 0.
    let socket = node.dir.join("vramguard.sock");
    assert!(socket.exists());
    let sent = Command::new("kill")
        .args(["-TERM", &plugin.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = plugin.exit_status().await;
    assert!(status.success(), "{status:?}: {}", plugin.log());
    assert!(!socket.exists());
    kubelet.exit().await;
}

#[tokio::test]
async fn cdi_mode_names_the_cdi_device_and_needs_the_spec() {
    let node = Node::installed();
    std::fs::remove_file(&node.cdi_spec).unwrap();
    let mut kubelet = Kubelet::start(&node.dir, None);
    let plugin = PluginProcess::spawn(&node, &["--mode", "cdi"]);
    let request = kubelet.registration().await;
    assert_registration(&request);
    let mut client = node.client(&request.endpoint).await;
    let mut stream = client.list_and_watch(Empty {}).await.unwrap().into_inner();

    // Without the spec on the node a runtime could not apply the device: no unit may be handed out.
    assert_units(&next_list(&mut stream).await, "Unhealthy");
    let refused = client
        .allocate(allocate(&[&["guard-3"]]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("CDI spec"), "{refused:?}");

    std::fs::write(&node.cdi_spec, b"cdiVersion: \"0.3.0\"\n").unwrap();
    assert_units(&next_list(&mut stream).await, "Healthy");
    let answer = client
        .allocate(allocate(&[&["guard-3"]]))
        .await
        .unwrap()
        .into_inner();
    let container = &answer.container_responses[0];
    let names: Vec<&str> = container
        .cdi_devices
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(names, ["vramguard.dev/guard=all"]);
    assert!(container.envs.is_empty(), "{container:?}");
    assert!(container.mounts.is_empty(), "{container:?}");
    drop(plugin);
    kubelet.exit().await;
}

#[tokio::test]
async fn units_are_unhealthy_until_the_library_is_installed() {
    let node = Node::bare();
    std::fs::create_dir(&node.ledger).unwrap();
    let mut kubelet = Kubelet::start(&node.dir, None);
    let plugin = PluginProcess::spawn(&node, &[]);
    let request = kubelet.registration().await;
    let mut client = node.client(&request.endpoint).await;
    let mut stream = client.list_and_watch(Empty {}).await.unwrap().into_inner();
    assert_units(&next_list(&mut stream).await, "Unhealthy");
    let refused = client
        .allocate(allocate(&[&["guard-0"]]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("libvramguard.so"), "{refused:?}");
    plugin.said("units unhealthy").await;

    // The DaemonSet's init container installs it: the units become healthy on the same stream.
    std::fs::write(&node.library, b"\x7fELF").unwrap();
    assert_units(&next_list(&mut stream).await, "Healthy");
    client.allocate(allocate(&[&["guard-0"]])).await.unwrap();
    drop(plugin);
    kubelet.exit().await;
}

#[tokio::test]
async fn waits_for_a_kubelet_that_starts_later() {
    let node = Node::installed();
    let plugin = PluginProcess::spawn(&node, &[]);
    plugin.said("waiting for the kubelet").await;
    let mut kubelet = Kubelet::start(&node.dir, None);
    assert_registration(&kubelet.registration().await);
    drop(plugin);
    kubelet.exit().await;
}

#[tokio::test]
async fn a_refused_registration_ends_the_plugin() {
    let node = Node::installed();
    let kubelet = Kubelet::start(&node.dir, Some("resource vramguard.dev/guard is taken"));
    let mut plugin = PluginProcess::spawn(&node, &[]);
    let status = plugin.exit_status().await;
    assert_eq!(status.code(), Some(1), "{}", plugin.log());
    assert!(plugin.log().contains("is taken"), "{}", plugin.log());
    kubelet.exit().await;
}

#[tokio::test]
async fn registers_again_when_the_kubelet_restarts() {
    let node = Node::installed();
    let mut kubelet = Kubelet::start(&node.dir, None);
    let plugin = PluginProcess::spawn(&node, &[]);
    let request = kubelet.registration().await;
    let mut client = node.client(&request.endpoint).await;
    let mut old_stream = client.list_and_watch(Empty {}).await.unwrap().into_inner();
    assert_units(&next_list(&mut old_stream).await, "Healthy");

    // A kubelet restart as the device manager does it: the old kubelet exits, the new one
    // removes every socket of the directory (the plugin's too) and listens on its own anew.
    kubelet.exit().await;
    for entry in std::fs::read_dir(&node.dir).unwrap() {
        // The plugin may be replacing its socket meanwhile: what is gone is gone.
        match std::fs::remove_file(entry.unwrap().path()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("{e}"),
            _ => {}
        }
    }
    let mut kubelet = Kubelet::start(&node.dir, None);
    let request = kubelet.registration().await;
    assert_registration(&request);
    // The old registration's stream ends; the new socket serves.
    let ended = within("the end of the old stream", old_stream.message()).await;
    assert!(!matches!(ended, Ok(Some(_))), "{ended:?}");
    let mut client = node.client(&request.endpoint).await;
    let mut stream = client.list_and_watch(Empty {}).await.unwrap().into_inner();
    assert_units(&next_list(&mut stream).await, "Healthy");
    client.allocate(allocate(&[&["guard-1"]])).await.unwrap();

    // A kubelet that only replaces its own socket is registered with again as well.
    kubelet.exit().await;
    let mut kubelet = Kubelet::start(&node.dir, None);
    assert_registration(&kubelet.registration().await);
    plugin.said("was recreated").await;
    let mut client = node.client(&request.endpoint).await;
    let mut stream = client.list_and_watch(Empty {}).await.unwrap().into_inner();
    assert_units(&next_list(&mut stream).await, "Healthy");
    drop(plugin);
    kubelet.exit().await;
}
