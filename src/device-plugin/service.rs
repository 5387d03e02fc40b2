//! The `DevicePlugin` service the kubelet calls: the options, `ListAndWatch` (the units, healthy
//! or not, again whenever their health changes), `Allocate` (the guard for each container, from
//! [`Guard`]), `GetPreferredAllocation` (units are interchangeable: the ones that must be
//! included, then the first available) and `PreStartContainer` (nothing to do).
//!
//! One unit is one container's share of the guard, not a share of anything that runs out: the
//! plugin advertises as many as the node may ever need (`--units`), and a container that asks
//! for one gets the whole guard and the node's one ledger.

use std::pin::Pin;

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::api::device_plugin_server::DevicePlugin;
use crate::api::{
    AllocateRequest, AllocateResponse, ContainerPreferredAllocationResponse, Device,
    DevicePluginOptions, Empty, HEALTHY, ListAndWatchResponse, PreStartContainerRequest,
    PreStartContainerResponse, PreferredAllocationRequest, PreferredAllocationResponse, UNHEALTHY,
};
use crate::guard::Guard;
use crate::health::{Check, Health};

/// The id of unit `index`.
pub fn unit_id(index: usize) -> String {
    format!("guard-{index}")
}

/// The plugin's service, for one registration with the kubelet.
#[derive(Debug, Clone)]
pub struct Plugin {
    /// How many units are advertised.
    pub units: usize,
    /// What a container gets.
    pub guard: Guard,
    /// What the units' health depends on (checked again at each `Allocate`).
    pub check: Check,
    /// The latest health, as [`monitor`] sees it.
    pub health: watch::Receiver<Health>,
    /// Ends every stream of this registration when its sender is dropped.
    pub stop: watch::Receiver<()>,
}

impl Plugin {
    fn devices(&self, health: &Health) -> ListAndWatchResponse {
        let state = if health.is_healthy() {
            HEALTHY
        } else {
            UNHEALTHY
        };
        ListAndWatchResponse {
            devices: (0..self.units)
                .map(|i| Device {
                    id: unit_id(i),
                    health: state.to_string(),
                    topology: None,
                })
                .collect(),
        }
    }

    fn is_unit(&self, id: &str) -> bool {
        id.strip_prefix("guard-")
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|n| n < self.units && unit_id(n) == id)
    }
}

/// The first health, checked now (said on stderr when the units start unhealthy), and its
/// channel.
pub fn health_channel(check: &Check) -> (watch::Sender<Health>, watch::Receiver<Health>) {
    let first = check.run();
    if let Health::Unhealthy(why) = &first {
        eprintln!("vramguard-device-plugin: units unhealthy: {why}");
    }
    watch::channel(first)
}

/// Keeps `health` up to date: runs `check` every `interval` and publishes a change (saying it on
/// stderr) until every receiver is gone.
pub async fn monitor(check: Check, health: watch::Sender<Health>, interval: std::time::Duration) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = health.closed() => return,
        }
        let now = check.run();
        health.send_if_modified(|old| {
            if *old == now {
                return false;
            }
            match &now {
                Health::Healthy => eprintln!(
                    "vramguard-device-plugin: the guard can be given again: units healthy"
                ),
                Health::Unhealthy(why) => {
                    eprintln!("vramguard-device-plugin: units unhealthy: {why}")
                }
            }
            *old = now;
            true
        });
    }
}

type DeviceStream = Pin<Box<dyn Stream<Item = Result<ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DevicePlugin for Plugin {
    async fn get_device_plugin_options(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(options()))
    }

    type ListAndWatchStream = DeviceStream;

    async fn list_and_watch(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let plugin = self.clone();
        tokio::spawn(async move {
            let mut health = plugin.health.clone();
            let mut stop = plugin.stop.clone();
            loop {
                let list = plugin.devices(&health.borrow_and_update());
                if tx.send(Ok(list)).await.is_err() {
                    return; // the kubelet went away
                }
                tokio::select! {
                    changed = health.changed() => if changed.is_err() { return },
                    _ = stop.changed() => return,
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        let container_responses = request
            .into_inner()
            .container_requests
            .into_iter()
            .map(|wanted| {
                let size = usize::try_from(wanted.allocation_size).unwrap_or(0);
                let mut chosen: Vec<String> = Vec::with_capacity(size);
                for id in wanted
                    .must_include_device_i_ds
                    .iter()
                    .chain(&wanted.available_device_i_ds)
                {
                    if chosen.len() == size {
                        break;
                    }
                    if !chosen.contains(id) {
                        chosen.push(id.clone());
                    }
                }
                ContainerPreferredAllocationResponse {
                    device_i_ds: chosen,
                }
            })
            .collect();
        Ok(Response::new(PreferredAllocationResponse {
            container_responses,
        }))
    }

    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let request = request.into_inner();
        for container in &request.container_requests {
            if let Some(id) = container.devices_ids.iter().find(|id| !self.is_unit(id)) {
                return Err(Status::invalid_argument(format!(
                    "{id} is not a unit of vramguard's device plugin"
                )));
            }
        }
        if let Health::Unhealthy(why) = self.check.run() {
            eprintln!("vramguard-device-plugin: Allocate refused: {why}");
            return Err(Status::failed_precondition(format!(
                "vramguard cannot guard containers on this node: {why}"
            )));
        }
        let container_responses = request
            .container_requests
            .iter()
            .map(|_| self.guard.container_response())
            .collect();
        Ok(Response::new(AllocateResponse {
            container_responses,
        }))
    }

    async fn pre_start_container(
        &self,
        _: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        Ok(Response::new(PreStartContainerResponse {}))
    }
}

/// The options the plugin registers with and answers `GetDevicePluginOptions` with.
pub fn options() -> DevicePluginOptions {
    DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: true,
    }
}
