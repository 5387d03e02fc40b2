//! `vramguard env --slurm`'s TaskProlog under a real single-node Slurm (`tests/slurm_support`):
//! jobs holding `gres/shard` shards of one simulated 4 GiB card are each held to their share of
//! the card's budget (shards held / the GPU's shards in gres.conf), refused just past it, and fit
//! the card together; a `gres/gpu` job gets the whole card; a library that cannot load on the
//! node leaves the task running, unguarded, with one warning.

mod slurm_support;
mod support;

use std::fs;
use std::path::Path;
use std::process::Command;

use slurm_support::{Cluster, Gpu};
use support::{Finished, HANG_GUARD, Sandbox, artifacts, clients, skip, spawn};

const MIB: u64 = 1 << 20;
/// The simulated card, and what the guard makes of it with the default reserve (256 MiB).
const CARD: &str = "4GiB";
const BUDGET: u64 = 4096 * MIB - 256 * MIB;
/// What a context takes on the simulated card (and the guard's estimate, its default).
const CONTEXT: u64 = 300 * MIB;
/// How far from a limit the test allocates, either side.
const MARGIN: u64 = 16 * MIB;
/// The shards gres.conf gives the one GPU.
const SHARDS: u32 = 8;

/// Writes the TaskProlog `vramguard env --slurm` prints into `path`, for the library
/// `library` (None: the one the command finds) and the sandbox's ledger.
fn write_prolog(sandbox: &Sandbox, path: &Path, library: Option<&Path>) {
    let mut command = Command::new(artifacts().cli);
    command
        .args(["env", "--slurm", "--output"])
        .arg(path)
        .env("VRAMGUARD_DIR", &sandbox.ledger_dir)
        .env_remove("VRAMGUARD_LIBRARY");
    if let Some(library) = library {
        command.env("VRAMGUARD_LIBRARY", library);
    }
    let output = support::run_with_deadline(command, HANG_GUARD);
    assert!(
        output.status.success(),
        "vramguard env --slurm failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = fs::read_to_string(path).expect("read the TaskProlog");
    assert!(text.starts_with("#!/bin/sh\n") && !text.contains("@VRAMGUARD"));
}

/// An `srun` of `program args` with `gres` (`shard:3`, `gpu:1`, or none), in the sandbox's
/// environment (simulated driver, card state), which srun hands to the task.
fn srun(
    cluster: &Cluster,
    sandbox: &Sandbox,
    gres: Option<&str>,
    program: &Path,
    args: &[&str],
) -> Command {
    srun_tasks(cluster, sandbox, 1, gres, program, args)
}

/// [`srun`] with `tasks` tasks.
fn srun_tasks(
    cluster: &Cluster,
    sandbox: &Sandbox,
    tasks: u32,
    gres: Option<&str>,
    program: &Path,
    args: &[&str],
) -> Command {
    let mut command = sandbox.program(cluster.command("srun").get_program());
    command
        .env("SLURM_CONF", cluster.conf())
        .args(["--quiet", &format!("--ntasks={tasks}")]);
    if let Some(gres) = gres {
        command.arg(format!("--gres={gres}"));
    }
    command.arg(program).args(args);
    command
}

/// Runs `cc args` in `dir`.
fn cc(dir: &Path, args: &[&str]) {
    let mut cc = Command::new("cc");
    cc.current_dir(dir).args(args);
    let output = support::run_with_deadline(cc, HANG_GUARD);
    assert!(output.status.success(), "cc {args:?}: {output:?}");
}

/// Runs a job to its end.
fn run(command: Command) -> Finished {
    spawn(command).finish(HANG_GUARD)
}

/// The guarded client's arguments for one allocation of `bytes`, holding until `hold` exists.
fn one_allocation(bytes: u64, hold: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "--chunk".to_string(),
        bytes.to_string(),
        "--count".to_string(),
        "1".to_string(),
    ];
    if let Some(file) = hold {
        args.extend(["--hold-until".to_string(), file.to_string()]);
    }
    args
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// What a job of `shards` may allocate besides its context.
fn share(shards: u64) -> u64 {
    BUDGET * shards / u64::from(SHARDS) - CONTEXT
}

fn assert_allocated(job: &Finished, bytes: u64, what: &str, cluster: &Cluster) {
    let summary = job.summary();
    assert!(
        job.status.success() && summary.ok == 1 && summary.bytes == bytes,
        "{what}: {bytes} bytes should have been allocated: {job:?}\n{}",
        cluster.logs()
    );
}

fn assert_refused(job: &Finished, what: &str, cluster: &Cluster) {
    let summary = job.summary();
    assert!(
        job.status.code() == Some(2)
            && summary.ok == 0
            && summary.first_error.as_deref() == Some("CUDA_ERROR_OUT_OF_MEMORY"),
        "{what} should have been refused with CUDA_ERROR_OUT_OF_MEMORY: {job:?}\n{}",
        cluster.logs()
    );
}

/// A sandbox for one simulated card, and a cluster with one GPU of [`SHARDS`] shards whose
/// TaskProlog is the one `vramguard env --slurm` writes for `library`; `None` when the cluster
/// cannot run here (the test is then skipped, saying why).
fn cluster_for(test: &str, library: Option<&Path>) -> Option<(Sandbox, Cluster)> {
    let mut sandbox = Sandbox::new(CARD);
    sandbox.set_env("SIMCUDA_CONTEXT_COST", "300MiB");
    sandbox.init();
    let prolog = sandbox.root().join("task-prolog.sh");
    write_prolog(&sandbox, &prolog, library);
    // The sandbox directory is private to root; the TaskProlog runs as the job's user (root).
    match Cluster::start(&[Gpu { shards: SHARDS }], &prolog) {
        Ok(cluster) => Some((sandbox, cluster)),
        Err(reason) if reason.starts_with("waited") || reason.contains("exited") => {
            panic!("the private Slurm did not come up: {reason}")
        }
        Err(reason) => {
            skip(test, &reason);
            None
        }
    }
}

#[test]
fn shards_are_shares_of_the_card_and_a_gpu_job_gets_all_of_it() {
    let Some((sandbox, cluster)) = cluster_for(
        "shards_are_shares_of_the_card_and_a_gpu_job_gets_all_of_it",
        None,
    ) else {
        return;
    };
    let client = clients().direct;
    let printenv = Path::new("/usr/bin/printenv");

    // What the TaskProlog hands each kind of task.
    for (gres, limit) in [
        (Some("shard:3"), "37.500000%"),
        (Some("shard:5"), "62.500000%"),
        (Some("gpu:1"), "100%"),
        (None, "0"),
    ] {
        let job = run(srun(
            &cluster,
            &sandbox,
            gres,
            printenv,
            &["VRAMGUARD_LIMIT", "VRAMGUARD_DIR", "LD_PRELOAD"],
        ));
        let expected = format!(
            "{limit}\n{}\n{}\n",
            sandbox.ledger_dir.display(),
            artifacts().preload.display()
        );
        assert_eq!(
            job.stdout,
            expected,
            "{gres:?}: {job:?}\n{}",
            cluster.logs()
        );
    }

    // The task's own preloads stay, after the guard; another copy of the guard goes.
    fs::write(
        sandbox.root().join("own.c"),
        "int vg_own(void) { return 0; }\n",
    )
    .expect("write a source");
    cc(
        sandbox.root(),
        &["-shared", "-fPIC", "-o", "libown.so", "own.c"],
    );
    let own = sandbox.root().join("libown.so");
    let copy = sandbox.root().join("copy").join("libvramguard.so");
    fs::create_dir(copy.parent().expect("a directory")).expect("make a directory");
    fs::copy(artifacts().preload, &copy).expect("copy the library");
    let mut job = srun(
        &cluster,
        &sandbox,
        Some("shard:3"),
        printenv,
        &["LD_PRELOAD"],
    );
    job.env(
        "LD_PRELOAD",
        format!("{}:{}", own.display(), copy.display()),
    );
    let job = run(job);
    assert_eq!(
        job.stdout,
        format!("{}:{}\n", artifacts().preload.display(), own.display()),
        "{job:?}"
    );

    // Each job is held to its share: just under it fits, just over it is refused (the card
    // itself has room for both).
    for shards in [3, 5] {
        let gres = format!("shard:{shards}");
        let over = run(srun(
            &cluster,
            &sandbox,
            Some(&gres),
            &client,
            &refs(&one_allocation(share(shards) + MARGIN, None)),
        ));
        assert_refused(&over, &format!("{gres} past its share"), &cluster);
        let under = run(srun(
            &cluster,
            &sandbox,
            Some(&gres),
            &client,
            &refs(&one_allocation(share(shards) - MARGIN, None)),
        ));
        assert_allocated(&under, share(shards) - MARGIN, &gres, &cluster);
    }

    // Both at once, each holding nearly its share: together they fit the card's budget.
    let release = sandbox.go_file("shards");
    let mut three = spawn(srun(
        &cluster,
        &sandbox,
        Some("shard:3"),
        &client,
        &refs(&one_allocation(share(3) - MARGIN, Some(release.arg()))),
    ));
    three.wait_for_line("holding", HANG_GUARD);
    let mut five = spawn(srun(
        &cluster,
        &sandbox,
        Some("shard:5"),
        &client,
        &refs(&one_allocation(share(5) - MARGIN, Some(release.arg()))),
    ));
    five.wait_for_line("holding", HANG_GUARD);
    let card = sandbox.sim_report();
    let used = card["devices"][0]["used_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no used figure in {card}"));
    assert_eq!(
        used,
        share(3) + share(5) - 2 * MARGIN + 2 * CONTEXT,
        "the card holds both jobs' allocations and contexts: {card}"
    );
    assert!(used <= BUDGET, "{used} > {BUDGET}");
    release.go();
    let (three, five) = (three.finish(HANG_GUARD), five.finish(HANG_GUARD));
    assert_allocated(
        &three,
        share(3) - MARGIN,
        "shard:3 beside shard:5",
        &cluster,
    );
    assert_allocated(&five, share(5) - MARGIN, "shard:5 beside shard:3", &cluster);

    // A job with the whole GPU may take the whole budget, and no more.
    let whole = BUDGET - CONTEXT;
    let gpu = run(srun(
        &cluster,
        &sandbox,
        Some("gpu:1"),
        &client,
        &refs(&one_allocation(whole - MARGIN, None)),
    ));
    assert_allocated(&gpu, whole - MARGIN, "gpu:1", &cluster);
    let past = run(srun(
        &cluster,
        &sandbox,
        Some("gpu:1"),
        &client,
        &refs(&one_allocation(whole + MARGIN, None)),
    ));
    assert_refused(&past, "gpu:1 past the card's budget", &cluster);
}

#[test]
fn a_library_that_cannot_load_leaves_the_task_unguarded_with_one_warning() {
    // A library that needs one the node lacks: preloaded, it stops every program (as one built
    // against a newer glibc than the node's does).
    let build = tempfile::tempdir().expect("a build directory");
    let at = |name: &str| build.path().join(name);
    fs::write(at("absent.c"), "int vg_absent(void) { return 1; }\n").expect("write a source");
    fs::write(
        at("needs.c"),
        "int vg_absent(void);\nint vg_needs(void) { return vg_absent(); }\n",
    )
    .expect("write a source");
    cc(
        build.path(),
        &["-shared", "-fPIC", "-o", "libvgabsent.so", "absent.c"],
    );
    cc(
        build.path(),
        &[
            "-shared",
            "-fPIC",
            "-o",
            "libvramguard.so",
            "needs.c",
            "-L.",
            "-Wl,--no-as-needed",
            "-lvgabsent",
        ],
    );
    fs::remove_file(at("libvgabsent.so")).expect("take the dependency away");
    let library = at("libvramguard.so");
    let unloadable = Command::new("/bin/true")
        .env("LD_PRELOAD", &library)
        .status();
    assert!(
        unloadable.is_ok_and(|status| !status.success()),
        "the broken library should stop a program it is preloaded into"
    );

    let Some((sandbox, cluster)) = cluster_for(
        "a_library_that_cannot_load_leaves_the_task_unguarded_with_one_warning",
        Some(&library),
    ) else {
        return;
    };
    let job = run(srun(
        &cluster,
        &sandbox,
        Some("shard:3"),
        Path::new("/bin/sh"),
        &["-c", "echo \"started LD_PRELOAD=${LD_PRELOAD:-}\""],
    ));
    assert!(job.status.success(), "{job:?}\n{}", cluster.logs());
    let warnings: Vec<&str> = job
        .stdout
        .lines()
        .filter(|line| line.starts_with("vramguard: "))
        .collect();
    assert_eq!(warnings.len(), 1, "{job:?}");
    assert!(
        warnings[0].contains(&library.display().to_string())
            && warnings[0].contains("WITHOUT the GPU memory guard")
            && warnings[0].contains("libvgabsent.so"),
        "{warnings:?}"
    );
    assert!(
        job.stdout.lines().any(|line| line == "started LD_PRELOAD="),
        "the task starts, without the library: {job:?}"
    );
}

#[test]
fn a_share_is_of_the_shards_of_the_gpu_the_task_holds_them_on() {
    // Two GPUs with different shard counts: GPU 0 has 8, GPU 1 has 4 (gres.conf, per device
    // file). Slurm takes a job's shards from one GPU.
    let sandbox = Sandbox::new(CARD);
    sandbox.init();
    let prolog = sandbox.root().join("task-prolog.sh");
    write_prolog(&sandbox, &prolog, None);
    let test = "a_share_is_of_the_shards_of_the_gpu_the_task_holds_them_on";
    let cluster = match Cluster::start(&[Gpu { shards: 8 }, Gpu { shards: 4 }], &prolog) {
        Ok(cluster) => cluster,
        Err(reason) if reason.starts_with("waited") || reason.contains("exited") => {
            panic!("the private Slurm did not come up: {reason}")
        }
        Err(reason) => return skip(test, &reason),
    };
    let printenv = Path::new("/usr/bin/printenv");
    let limit = |job: &Finished| {
        assert!(job.status.success(), "{job:?}\n{}", cluster.logs());
        job.stdout.trim().to_string()
    };

    // A batch script (its GPU is SLURM_JOB_GPUS): 2 of GPU 0's 8 shards.
    let output = sandbox.root().join("batch.out");
    let mut batch = sandbox.program(cluster.command("sbatch").get_program());
    batch
        .env("SLURM_CONF", cluster.conf())
        .args(["--wait", "--quiet", "--gres=shard:2", "--output"])
        .arg(&output)
        .args(["--wrap", "printenv VRAMGUARD_LIMIT"]);
    let submitted = run(batch);
    assert!(
        submitted.status.success(),
        "{submitted:?}\n{}",
        cluster.logs()
    );
    let text = fs::read_to_string(&output).expect("read the batch job's output");
    assert_eq!(text.trim(), "25.000000%", "{text}");

    // 6 shards of GPU 0 held: 3 more fit only on GPU 1, where they are 3 of 4.
    let release = sandbox.go_file("gpu0");
    let wait = format!(
        "echo holding; while [ ! -e '{}' ]; do sleep 0.1; done",
        release.arg()
    );
    let mut holder = spawn(srun(
        &cluster,
        &sandbox,
        Some("shard:6"),
        Path::new("/bin/sh"),
        &["-c", &wait],
    ));
    holder.wait_for_line("holding", HANG_GUARD);
    let on_gpu1 = run(srun(
        &cluster,
        &sandbox,
        Some("shard:3"),
        printenv,
        &["CUDA_VISIBLE_DEVICES", "VRAMGUARD_LIMIT"],
    ));
    assert_eq!(limit(&on_gpu1), "1\n75.000000%");
    release.go();
    assert!(holder.finish(HANG_GUARD).status.success());

    // Two tasks of one step share its shards: 4 of GPU 0's 8, half each.
    let job = run(srun_tasks(
        &cluster,
        &sandbox,
        2,
        Some("shard:4"),
        printenv,
        &["VRAMGUARD_LIMIT"],
    ));
    assert_eq!(limit(&job), "25.000000%\n25.000000%");
}
