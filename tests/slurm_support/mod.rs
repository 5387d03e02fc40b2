//! A private single-node Slurm for the tests of the TaskProlog (`tests/slurm_shards.rs`): Debian's
//! `munged`, `slurmctld` and `slurmd` (installed by `scripts/setup.sh`), started as root in the
//! foreground with their own key, socket, ports, spool and state directories under a temporary
//! directory, and a `gres.conf` (`AutoDetect=off`) naming simulated GPU device files made with
//! `mknod`. [`Cluster::start`] says why it cannot start (not root, a program missing, no
//! `mknod`), so that the test can skip; dropping the cluster cancels its jobs and stops the
//! daemons, so no daemon outlives the test.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::HANG_GUARD;

/// The programs the cluster needs (daemons and clients).
const PROGRAMS: &[&str] = &[
    "munged",
    "slurmctld",
    "slurmd",
    "srun",
    "scontrol",
    "sinfo",
    "squeue",
    "scancel",
];

/// The node's name in `slurm.conf` (`slurmd -N`), also what the TaskProlog sees as
/// `SLURMD_NODENAME`.
pub const NODE: &str = "vgnode";

/// One GPU of the node: how many shards Slurm gives it in `gres.conf`.
#[derive(Clone, Copy, Debug)]
pub struct Gpu {
    pub shards: u32,
}

/// A running private cluster.
pub struct Cluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
    daemons: Vec<(&'static str, Child)>,
}

/// Finds `program` on `PATH` or in the system's sbin directories.
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A TCP port nobody listens on now (the kernel's pick).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("pick a free port")
        .port()
}

fn mknod_char(path: &Path, minor: u32) -> Result<(), String> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let name = CString::new(path.as_os_str().as_bytes()).expect("no NUL in a temporary path");
    // SAFETY: `name` is a valid NUL-terminated path; mknod only reads it. 195 is the NVIDIA
    // driver's character-device major number.
    let rc = unsafe {
        libc::mknod(
            name.as_ptr(),
            libc::S_IFCHR | 0o666,
            libc::makedev(195, minor),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "mknod {} failed: {}",
            path.display(),
            std::io::Error::last_os_error()
        ))
    }
}

impl Cluster {
    /// Starts munged, slurmctld and slurmd with one node of `gpus`, whose TaskProlog is
    /// `task_prolog`; returns once the node is idle. `Err` says why it cannot run here.
    pub fn start(gpus: &[Gpu], task_prolog: &Path) -> Result<Cluster, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("slurmd and munged need root here".to_string());
        }
        let mut found = std::collections::HashMap::new();
        for program in PROGRAMS {
            match find_program(program) {
                Some(path) => found.insert(*program, path),
                None => {
                    return Err(format!(
                        "{program} is not installed (scripts/setup.sh installs slurm-wlm and munge)"
                    ));
                }
            };
        }
        let dir = tempfile::Builder::new()
            .prefix("vramguard-slurm-")
            .tempdir()
            .expect("create a temporary directory");
        // munged wants every directory above its socket searchable by all.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .expect("open the cluster directory");
        let root = dir.path().to_path_buf();
        let at = |name: &str| root.join(name);
        for sub in ["run", "log", "state", "spool", "dev"] {
            fs::create_dir(at(sub)).expect("create a cluster directory");
            fs::set_permissions(at(sub), fs::Permissions::from_mode(0o755))
                .expect("set a cluster directory's mode");
        }
        let mut devices = Vec::new();
        for (index, _) in gpus.iter().enumerate() {
            let device = at("dev").join(format!("nvidia{index}"));
            mknod_char(&device, index as u32)?;
            devices.push(device);
        }
        let key = at("munge.key");
        let mut key_bytes = [0u8; 1024];
        fs::File::open("/dev/urandom")
            .and_then(|mut random| std::io::Read::read_exact(&mut random, &mut key_bytes))
            .expect("read a munge key");
        fs::write(&key, key_bytes).expect("write the munge key");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("protect the key");
        let socket = at("run").join("munge.sock");

        let gres_names: Vec<String> = devices
            .iter()
            .zip(gpus)
            .flat_map(|(device, gpu)| {
                [
                    format!("Name=gpu File={}", device.display()),
                    format!("Name=shard Count={} File={}", gpu.shards, device.display()),
                ]
            })
            .collect();
        fs::write(
            at("gres.conf"),
            format!("AutoDetect=off\n{}\n", gres_names.join("\n")),
        )
        .expect("write gres.conf");
        let total_shards: u32 = gpus.iter().map(|gpu| gpu.shards).sum();
        let (controller_port, node_port) = (free_port(), free_port());
        let dir_text = root.display();
        let conf = at("slurm.conf");
        fs::write(
            &conf,
            format!(
                "ClusterName=vgtest\n\
                 SlurmctldHost=localhost(127.0.0.1)\n\
                 SlurmctldPort={controller_port}\n\
                 SlurmdPort={node_port}\n\
                 SlurmUser=root\n\
                 SlurmdUser=root\n\
                 AuthType=auth/munge\n\
                 CredType=cred/munge\n\
                 AuthInfo=socket={socket}\n\
                 StateSaveLocation={dir_text}/state\n\
                 SlurmdSpoolDir={dir_text}/spool\n\
                 SlurmctldPidFile={dir_text}/run/slurmctld.pid\n\
                 SlurmdPidFile={dir_text}/run/slurmd.pid\n\
                 SlurmctldLogFile={dir_text}/log/slurmctld.log\n\
                 SlurmdLogFile={dir_text}/log/slurmd.log\n\
                 ProctrackType=proctrack/linuxproc\n\
                 TaskPlugin=task/none\n\
                 SelectType=select/cons_tres\n\
                 SelectTypeParameters=CR_Core\n\
                 GresTypes=gpu,shard\n\
                 MpiDefault=none\n\
                 JobAcctGatherType=jobacct_gather/none\n\
                 AccountingStorageType=accounting_storage/none\n\
                 ReturnToService=2\n\
                 TaskProlog={prolog}\n\
                 NodeName={NODE} NodeHostname=localhost NodeAddr=127.0.0.1 CPUs=2 \
                 Gres=gpu:{gpus},shard:{total_shards} State=UNKNOWN\n\
                 PartitionName=vgtest Nodes={NODE} Default=YES MaxTime=INFINITE State=UP\n",
                socket = socket.display(),
                prolog = task_prolog.display(),
                gpus = gpus.len(),
            ),
        )
        .expect("write slurm.conf");

        let mut cluster = Cluster {
            dir,
            conf,
            daemons: Vec::new(),
        };
        let conf = cluster.conf.clone();
        let quiet = |program: &str| {
            let mut command = Command::new(&found[program]);
            command
                .env("SLURM_CONF", &conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            command
        };
        let mut munged = quiet("munged");
        munged
            .arg("--foreground")
            .arg(format!("--key-file={}", key.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!(
                "--pid-file={}",
                at("run").join("munged.pid").display()
            ))
            .arg(format!(
                "--log-file={}",
                at("log").join("munged.log").display()
            ))
            .arg(format!("--seed-file={}", at("munged.seed").display()));
        let mut slurmctld = quiet("slurmctld");
        slurmctld.arg("-D").arg("-f").arg(&conf);
        let mut slurmd = quiet("slurmd");
        slurmd.args(["-D", "-N", NODE]).arg("-f").arg(&conf);
        for (name, mut command, ready) in [
            ("munged", munged, Some(socket.clone())),
            ("slurmctld", slurmctld, None),
            ("slurmd", slurmd, None),
        ] {
            let child = command
                .spawn()
                .map_err(|e| format!("cannot start {name}: {e}"))?;
            cluster.daemons.push((name, child));
            if let Some(socket) = ready {
                cluster.wait_until(&format!("{name} creates {}", socket.display()), || {
                    socket.exists()
                })?;
            }
        }
        cluster.wait_until("the node to be idle", || {
            output_of(&conf, "sinfo", &["-h", "-n", NODE, "-o", "%t"])
                .is_some_and(|state| state.trim() == "idle")
        })?;
        Ok(cluster)
    }

    /// Polls `ready` until it holds; `Err` (with the daemons' logs) when a daemon died first or
    /// it never held within the hang guard.
    fn wait_until(&mut self, what: &str, mut ready: impl FnMut() -> bool) -> Result<(), String> {
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            if ready() {
                return Ok(());
            }
            let exited = self.daemons.iter_mut().find_map(|(name, child)| {
                child
                    .try_wait()
                    .ok()
                    .flatten()
                    .map(|status| format!("{name} exited ({status})"))
            });
            if let Some(exited) = exited {
                return Err(format!(
                    "{exited} while waiting for {what}:\n{}",
                    self.logs()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!("waited too long for {what}:\n{}", self.logs()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The daemons' log files, for a failure message.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for log in ["munged.log", "slurmctld.log", "slurmd.log"] {
            let path = self.dir.path().join("log").join(log);
            let content = fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = content.lines().rev().take(30).collect();
            text.push_str(&format!("--- {}\n", path.display()));
            for line in tail.into_iter().rev() {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }

    /// `slurm.conf`.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// A client command of this cluster (`srun`, `scontrol`...), with `SLURM_CONF` set.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(find_program(program).expect("found at start"));
        command.env("SLURM_CONF", &self.conf);
        command
    }
}

/// The standard output of the cluster's `program args`, or `None` when it failed.
fn output_of(conf: &Path, program: &str, args: &[&str]) -> Option<String> {
    let mut command = Command::new(find_program(program)?);
    command.env("SLURM_CONF", conf).args(args);
    let output = crate::support::run_with_deadline(command, HANG_GUARD);
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Jobs first (their steps end with them), then the daemons, newest first.
        if let Some(mut scancel) = find_program("scancel").map(Command::new) {
            scancel
                .env("SLURM_CONF", &self.conf)
                .arg("--full")
                .arg("--user=root")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = scancel.status();
        }
        let deadline = Instant::now() + HANG_GUARD;
        while Instant::now() < deadline
            && output_of(&self.conf, "squeue", &["-h", "-o", "%i"])
                .is_some_and(|jobs| !jobs.trim().is_empty())
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        for (_, child) in self.daemons.iter_mut().rev() {
            // SAFETY: kill(2) on the pid of a child this process started and has not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let stop_by = Instant::now() + Duration::from_secs(60);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= stop_by => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
}
