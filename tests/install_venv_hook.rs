//! A virtualenv guarded with `vramguard env --venv` guards every interpreter it starts, however it
//! is started: an activated shell, `bin/python` called directly (a script, `-m`, `-c`, a script on
//! stdin), a Jupyter kernel launched the way jupyter_client launches it, `subprocess` children
//! with a clean environment, multiprocessing `spawn` workers. Each runs the ctypes client's
//! over-budget allocation on the simulated card, which only the guard refuses. The start-up hook
//! restarts an interpreter once, never when the guard is already loaded or disabled, never in a
//! loop when the library cannot be preloaded; `--remove` leaves the virtualenv as it was; `doctor`
//! says whether the interpreter is guarded and why not.

mod support;
#[path = "support/venv.rs"]
mod venv_support;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use support::Sandbox;
use venv_support::*;

/// A sandbox, a virtualenv guarded by the build's `vramguard`, and the client copied beside it.
struct Guarded {
    sandbox: Sandbox,
    venv: PathBuf,
    /// `tests/clients/client.py`, copied into the sandbox (the working directory of the tests).
    client: PathBuf,
}

fn vramguard() -> PathBuf {
    support::artifacts().cli
}

fn guarded_venv() -> Guarded {
    let sandbox = sandbox();
    let venv = sandbox.root().join("venv");
    make_venv(&venv, false);
    vramguard_ok(
        &sandbox,
        &vramguard(),
        &["env".as_ref(), "--venv".as_ref(), venv.as_os_str()],
    );
    let client = sandbox.root().join("vg_client.py");
    fs::copy(support::clients().python, &client).expect("copy the client");
    Guarded {
        sandbox,
        venv,
        client,
    }
}

impl Guarded {
    fn python(&self) -> PathBuf {
        self.venv.join("bin/python")
    }

    /// A command in the sandbox's environment, started in the sandbox directory, with the hook
    /// saying when it restarts an interpreter.
    fn command(&self, program: impl AsRef<OsStr>) -> std::process::Command {
        let mut command = self.sandbox.program(program);
        command
            .current_dir(self.sandbox.root())
            .env("VRAMGUARD_LOG", "info");
        command
    }

    /// Runs `script` in `bash -c` and checks that its client was refused by the guard after
    /// `expected` restarts of an interpreter.
    fn assert_refused_in_bash(&self, script: &str, expected: usize) {
        let mut command = self.command("bash");
        command.arg("-c").arg(script);
        let finished = finish(command);
        assert_refused_by_guard(&self.sandbox, &finished, script);
        assert_eq!(restarts(&finished.stderr), expected, "{}", finished.stderr);
    }
}

#[test]
fn bin_python_called_directly_is_restarted_once_with_the_guard() {
    let g = guarded_venv();
    let mut command = g.command(g.python());
    command.arg(&g.client).args(["--chunk", OVER_BUDGET]);
    let finished = finish(command);
    assert_refused_by_guard(&g.sandbox, &finished, "bin/python client.py");
    assert_eq!(restarts(&finished.stderr), 1, "{}", finished.stderr);

    // Without the hook the same start gets the memory: the driver would grant it.
    let plain = g.sandbox.root().join("plain");
    make_venv(&plain, false);
    let mut command = g.command(plain.join("bin/python"));
    command.arg(&g.client).args(["--chunk", OVER_BUDGET]);
    let finished = finish(command);
    assert_eq!(finished.status.code(), Some(0), "{finished:?}");
}

#[test]
fn dash_m_dash_c_and_stdin_keep_their_arguments_working_directory_and_input() {
    let g = guarded_venv();
    // -m: the module is found through the working directory, which the restart keeps.
    let mut command = g.command(g.python());
    command.args(["-m", "vg_client", "--chunk", OVER_BUDGET]);
    let finished = finish(command);
    assert_refused_by_guard(&g.sandbox, &finished, "python -m vg_client");
    assert_eq!(restarts(&finished.stderr), 1, "{}", finished.stderr);

    // -c with arguments that need quoting, and a variable of the caller's environment.
    let code = "import os, runpy, sys; assert os.environ['VG_TEST_MARK'] == 'a b'; \
                sys.argv = ['vg_client.py', '--chunk', sys.argv[1]]; \
                runpy.run_path('vg_client.py', run_name='__main__')";
    let mut command = g.command(g.python());
    command
        .args(["-c", code, OVER_BUDGET])
        .env("VG_TEST_MARK", "a b");
    let finished = finish(command);
    assert_refused_by_guard(&g.sandbox, &finished, "python -c");

    // The script on stdin (`python -`): the restarted interpreter reads what the first did not.
    let script = format!(
        "exec {} - --chunk {OVER_BUDGET} < vg_client.py",
        g.python().display()
    );
    g.assert_refused_in_bash(&script, 1);
}

#[test]
fn an_activated_shell_is_guarded_without_a_restart() {
    let g = guarded_venv();
    let script = format!(
        ". {}/bin/activate && python {} --chunk {OVER_BUDGET}",
        g.venv.display(),
        g.client.display()
    );
    g.assert_refused_in_bash(&script, 0);
}

#[test]
fn subprocess_children_and_spawn_workers_are_guarded() {
    let g = guarded_venv();
    // A child started with the environment stripped of LD_PRELOAD restarts itself; one that
    // inherits the environment has the guard from the start.
    let parent = "import os, subprocess, sys\n\
                  clean = {k: v for k, v in os.environ.items() if k != 'LD_PRELOAD'}\n\
                  for env in (clean, None):\n\
                  \x20   r = subprocess.run([sys.executable, 'vg_client.py', '--chunk', sys.argv[1]], env=env)\n\
                  \x20   print('child exit', r.returncode, flush=True)\n";
    let mut command = g.command(g.python());
    command.args(["-c", parent, OVER_BUDGET]);
    let finished = finish(command);
    assert_eq!(finished.status.code(), Some(0), "{finished:?}");
    assert_eq!(
        finished.stdout.matches("child exit 2\n").count(),
        2,
        "{finished:?}"
    );
    assert_eq!(
        finished
            .stdout
            .lines()
            .filter(|l| l.starts_with("alloc fail") && l.ends_with("CUDA_ERROR_OUT_OF_MEMORY"))
            .count(),
        2,
        "{finished:?}"
    );
    // The parent once, the child with the clean environment once.
    assert_eq!(restarts(&finished.stderr), 2, "{}", finished.stderr);
    assert_eq!(
        g.sandbox.sim_report()["devices"][0]["refused"].as_u64(),
        Some(0)
    );

    // multiprocessing's spawn start method: the worker is a new interpreter of the virtualenv.
    let pool = "import multiprocessing, runpy, sys\n\
                def work(chunk):\n\
                \x20   guarded = b'/libvramguard.so\\n' in open('/proc/self/maps', 'rb').read()\n\
                \x20   sys.argv = ['vg_client.py', '--chunk', chunk]\n\
                \x20   try:\n\
                \x20       runpy.run_path('vg_client.py', run_name='__main__')\n\
                \x20   except SystemExit as e:\n\
                \x20       return guarded, e.code\n\
                if __name__ == '__main__':\n\
                \x20   with multiprocessing.get_context('spawn').Pool(1) as workers:\n\
                \x20       print('worker', *workers.apply(work, (sys.argv[1],)), flush=True)\n";
    fs::write(g.sandbox.root().join("vg_pool.py"), pool).unwrap();
    let mut command = g.command(g.python());
    command.args(["vg_pool.py", OVER_BUDGET]);
    let finished = finish(command);
    assert!(
        finished.stdout.contains("worker True 2\n"),
        "the spawn worker was not refused by the guard: {finished:?}"
    );
    assert!(
        finished.stdout.contains("CUDA_ERROR_OUT_OF_MEMORY"),
        "{finished:?}"
    );
}

#[test]
fn a_jupyter_kernel_launched_by_jupyter_client_is_guarded() {
    require_module("jupyter_client");
    require_module("ipykernel");
    let g = guarded_venv();
    // The virtualenv sees ipykernel through a path entry (no network to install it here).
    fs::write(
        site_packages(&g.venv).join("vg_tools.pth"),
        format!("{}\n", pytools_site_packages().display()),
    )
    .unwrap();
    let jupyter = g.sandbox.root().join("jupyter");
    // The kernelspec exactly as `python -m ipykernel install` writes it for this interpreter.
    let mut command = g.command(g.python());
    command
        .args([
            "-m",
            "ipykernel",
            "install",
            "--name",
            "guarded",
            "--prefix",
        ])
        .arg(&jupyter);
    let finished = finish(command);
    assert!(finished.status.success(), "ipykernel install: {finished:?}");
    let spec: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(jupyter.join("share/jupyter/kernels/guarded/kernel.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        spec["argv"][0].as_str().map(Path::new),
        Some(g.python().as_path()),
        "the kernel is not the virtualenv's interpreter: {spec}"
    );

    let driver = r#"
import json, sys
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
specs = KernelSpecManager(kernel_dirs=[sys.argv[1]])
manager = KernelManager(kernel_name="guarded", kernel_spec_manager=specs)
manager.start_kernel()
client = manager.client()
client.start_channels()
client.wait_for_ready(timeout=90)
seen = []
def keep(message):
    if message["msg_type"] == "stream":
        seen.append(message["content"]["text"])
    elif message["msg_type"] == "error":
        seen.append("ERROR " + "\n".join(message["content"]["traceback"]))
code = (
    "import runpy, sys\n"
    "print('maps', b'/libvramguard.so\\n' in open('/proc/self/maps', 'rb').read())\n"
    "sys.argv = ['vg_client.py', '--chunk', %r]\n"
    "try:\n"
    "    runpy.run_path(%r, run_name='__main__')\n"
    "except SystemExit as e:\n"
    "    print('exit', e.code)\n" % (sys.argv[2], sys.argv[3]))
client.execute_interactive(code, output_hook=keep, timeout=90)
client.stop_channels()
manager.shutdown_kernel(now=True)
print("".join(seen))
"#;
    let mut command = g.command(pytools_python());
    command
        .arg("-c")
        .arg(driver)
        .arg(jupyter.join("share/jupyter/kernels"))
        .arg(OVER_BUDGET)
        .arg(&g.client)
        .env("JUPYTER_RUNTIME_DIR", jupyter.join("runtime"))
        .env("JUPYTER_DATA_DIR", jupyter.join("data"))
        .env("JUPYTER_CONFIG_DIR", jupyter.join("config"))
        .env("IPYTHONDIR", jupyter.join("ipython"))
        .env("JUPYTER_PLATFORM_DIRS", "1");
    let finished = finish(command);
    assert!(finished.status.success(), "{finished:?}");
    assert!(finished.stdout.contains("maps True"), "{finished:?}");
    assert!(finished.stdout.contains("exit 2"), "{finished:?}");
    assert!(
        finished.stdout.contains("CUDA_ERROR_OUT_OF_MEMORY"),
        "{finished:?}"
    );
    assert_eq!(
        g.sandbox.sim_report()["devices"][0]["refused"].as_u64(),
        Some(0)
    );
}

#[test]
fn the_hook_stands_aside_when_disabled_and_never_loops() {
    let g = guarded_venv();
    // Disabled: no restart, and the guard refuses nothing.
    let mut command = g.command(g.python());
    command
        .arg(&g.client)
        .args(["--chunk", OVER_BUDGET])
        .env("VRAMGUARD_DISABLE", "1");
    let finished = finish(command);
    assert_eq!(finished.status.code(), Some(0), "{finished:?}");
    assert_eq!(restarts(&finished.stderr), 0, "{}", finished.stderr);

    // A library that cannot be preloaded: the hook's load check finds it before any restart;
    // one warning, the program runs unguarded.
    let broken = g.sandbox.root().join("broken/libvramguard.so");
    fs::create_dir_all(broken.parent().unwrap()).unwrap();
    fs::write(&broken, b"not an ELF file").unwrap();
    let venv = g.sandbox.root().join("broken-venv");
    make_venv(&venv, false);
    let mut install = g.sandbox.program(vramguard());
    install
        .args(["env", "--venv"])
        .arg(&venv)
        .env("VRAMGUARD_LIBRARY", &broken);
    assert!(finish(install).status.success());
    let mut command = g.command(venv.join("bin/python"));
    command.args(["-c", "print('ran')"]);
    let finished = finish(command);
    assert_eq!(finished.status.code(), Some(0), "{finished:?}");
    assert_eq!(finished.stdout, "ran\n");
    assert_eq!(restarts(&finished.stderr), 0, "{}", finished.stderr);
    assert_eq!(
        finished
            .stderr
            .lines()
            .filter(|l| l.contains("cannot be loaded here") && l.contains("unguarded"))
            .count(),
        1,
        "{}",
        finished.stderr
    );

    // A library that is gone: no restart, a warning naming how to remove the hook.
    fs::remove_file(&broken).unwrap();
    let mut command = g.command(venv.join("bin/python"));
    command.args(["-c", "print('ran')"]);
    let finished = finish(command);
    assert_eq!(finished.stdout, "ran\n", "{finished:?}");
    assert_eq!(restarts(&finished.stderr), 0, "{}", finished.stderr);
    assert!(finished.stderr.contains("--remove"), "{}", finished.stderr);
}

#[test]
fn remove_leaves_the_virtualenv_as_it_was() {
    let sandbox = sandbox();
    let venv = sandbox.root().join("venv");
    make_venv(&venv, false);
    let before = tree(&venv);
    let cli = vramguard();
    vramguard_ok(
        &sandbox,
        &cli,
        &["env".as_ref(), "--venv".as_ref(), venv.as_os_str()],
    );
    // Twice changes nothing.
    let installed = tree(&venv);
    vramguard_ok(
        &sandbox,
        &cli,
        &["env".as_ref(), "--venv".as_ref(), venv.as_os_str()],
    );
    assert_eq!(tree(&venv), installed);
    // Start an interpreter, so that Python compiles the hook into __pycache__.
    let mut command = sandbox.program(venv.join("bin/python"));
    command
        .args(["-c", "pass"])
        .env_remove("PYTHONDONTWRITEBYTECODE");
    assert!(finish(command).status.success());
    assert!(
        tree(&venv)
            .keys()
            .any(|p| p.to_string_lossy().contains("_vramguard_hook.cpython"))
    );
    let out = remove_hook(&sandbox, &cli, venv.as_os_str());
    assert!(out.contains("removed the start-up hook"), "{out}");
    assert_restored(&before, &venv);
    // Removing again is fine and says so.
    let out = remove_hook(&sandbox, &cli, venv.as_os_str());
    assert!(out.contains("had no guard to remove"), "{out}");
}

/// `vramguard doctor`'s line about Python, for the interpreter chosen through `env`.
/// `vramguard env --venv VENV --remove`, which must succeed; returns what it printed.
fn remove_hook(sandbox: &Sandbox, cli: &Path, venv: &OsStr) -> String {
    vramguard_ok(
        sandbox,
        cli,
        &["env".as_ref(), "--venv".as_ref(), venv, "--remove".as_ref()],
    )
}

#[test]
fn doctor_says_whether_the_interpreter_is_guarded_and_why_not() {
    let g = guarded_venv();
    let venv = g.venv.as_os_str();
    let line = doctor_python_line(&g.sandbox, &vramguard(), &[("VIRTUAL_ENV", Some(venv))]);
    assert!(
        line.starts_with("ok    python: ")
            && line.contains("is guarded (libvramguard.so loaded by the start-up hook"),
        "{line}"
    );
    let line = doctor_python_line(
        &g.sandbox,
        &vramguard(),
        &[
            ("VIRTUAL_ENV", Some(venv)),
            ("VRAMGUARD_DISABLE", Some("1".as_ref())),
        ],
    );
    assert!(
        line.starts_with("warn  python: ") && line.contains("VRAMGUARD_DISABLE=1"),
        "{line}"
    );
    // Through VRAMGUARD_PYTHON (what `python -m vramguard` sets), after the hook is removed.
    remove_hook(&g.sandbox, &vramguard(), venv);
    let python = g.python();
    let line = doctor_python_line(
        &g.sandbox,
        &vramguard(),
        &[("VRAMGUARD_PYTHON", Some(python.as_os_str()))],
    );
    assert!(
        line.starts_with("warn  python: ") && line.contains("has no vramguard hook"),
        "{line}"
    );
    assert!(
        line.contains(&format!("-> vramguard env --venv {}", g.venv.display())),
        "{line}"
    );
}

/// Checks that `python` (an interpreter of a guarded environment) is restarted once with the
/// guard and keeps its exact arguments and environment: a `-c` program with arguments that need
/// quoting runs the client, whose over-budget allocation the guard refuses.
fn assert_restarted_with_its_arguments(g: &Guarded, python: &Path, what: &str) {
    let code = "import os, runpy, sys; assert os.environ['VG_TEST_MARK'] == 'a b'; \
                assert sys.argv[2:] == [\"it's\", '', '--x y'], sys.argv; \
                sys.argv = ['vg_client.py', '--chunk', sys.argv[1]]; \
                runpy.run_path('vg_client.py', run_name='__main__')";
    let mut command = g.command(python);
    command
        .args(["-c", code, OVER_BUDGET, "it's", "", "--x y"])
        .env("VG_TEST_MARK", "a b");
    let finished = finish(command);
    assert_refused_by_guard(&g.sandbox, &finished, what);
    assert_eq!(restarts(&finished.stderr), 1, "{what}: {}", finished.stderr);
}

#[test]
fn an_interpreter_without_orig_argv_is_restarted_from_its_command_line() {
    // Python 3.8 and 3.9 have no sys.orig_argv: a .pth that sorts before the hook's takes it away
    // from this interpreter, and the hook restarts it from the kernel's copy of its arguments.
    let g = guarded_venv();
    fs::write(
        site_packages(&g.venv).join("0_vg_no_orig_argv.pth"),
        "import sys; sys.__dict__.pop('orig_argv', None)\n",
    )
    .unwrap();
    assert_restarted_with_its_arguments(&g, &g.python(), "without sys.orig_argv");
}

/// The interpreters of Python 3.8 and 3.9 on this machine (pyenv's), which have no
/// `sys.orig_argv`.
fn older_pythons() -> Vec<PathBuf> {
    let versions = Path::new("/root/.pyenv/versions");
    let mut found: Vec<PathBuf> = ["3.8", "3.9"]
        .iter()
        .filter_map(|minor| {
            let entries = fs::read_dir(versions).ok()?;
            entries
                .filter_map(Result::ok)
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_prefix(minor)
                        .is_some_and(|rest| rest.starts_with('.'))
                })
                .map(|e| e.path().join(format!("bin/python{minor}")))
                .find(|p| p.is_file())
        })
        .collect();
    found.sort();
    found
}

#[test]
fn python_3_8_and_3_9_are_guarded() {
    let pythons = older_pythons();
    if pythons.len() < 2 {
        support::skip(
            "python_3_8_and_3_9_are_guarded",
            &format!("no Python 3.8 and 3.9 under /root/.pyenv/versions (found {pythons:?})"),
        );
        return;
    }
    let g = guarded_venv();
    for base in pythons {
        let venv = g.sandbox.root().join(base.file_name().unwrap());
        let mut command = std::process::Command::new(&base);
        command.args(["-m", "venv", "--without-pip"]).arg(&venv);
        assert!(
            finish(command).status.success(),
            "{} -m venv",
            base.display()
        );
        vramguard_ok(
            &g.sandbox,
            &vramguard(),
            &["env".as_ref(), "--venv".as_ref(), venv.as_os_str()],
        );
        assert_restarted_with_its_arguments(
            &g,
            &venv.join("bin/python"),
            &base.display().to_string(),
        );
    }
}

#[test]
fn a_hook_that_stands_aside_says_so_once_per_environment() {
    let sandbox = sandbox();
    // A hook whose library is gone: every start stands aside.
    let library = sandbox.root().join("gone/libvramguard.so");
    fs::create_dir_all(library.parent().unwrap()).unwrap();
    fs::copy(support::artifacts().preload, &library).unwrap();
    let venvs = [sandbox.root().join("one"), sandbox.root().join("two")];
    let mut before = Vec::new();
    for venv in &venvs {
        make_venv(venv, false);
        before.push(tree(venv));
        let mut install = sandbox.program(vramguard());
        install
            .args(["env", "--venv"])
            .arg(venv)
            .env("VRAMGUARD_LIBRARY", &library);
        assert!(finish(install).status.success());
    }
    fs::remove_file(&library).unwrap();
    let said = |stderr: &str| stderr.matches("is missing").count();
    // Starts of the first environment, and a child each (as a DataLoader worker is): said once.
    let child =
        "import subprocess, sys; subprocess.run([sys.executable, '-c', 'pass'], check=True)";
    let mut total = 0;
    for _ in 0..3 {
        let mut command = sandbox.program(venvs[0].join("bin/python"));
        command.args(["-c", child]);
        let finished = finish(command);
        assert!(finished.status.success(), "{finished:?}");
        let now = said(&finished.stderr);
        total += now;
        if now > 0 {
            assert!(
                finished.stderr.contains("said once for"),
                "{}",
                finished.stderr
            );
        }
    }
    assert_eq!(
        total, 1,
        "the first environment's notice was not said exactly once"
    );
    // Another environment says it for itself; VRAMGUARD_LOG=info says it at every start.
    let mut command = sandbox.program(venvs[1].join("bin/python"));
    command.args(["-c", "pass"]);
    assert_eq!(said(&finish(command).stderr), 1);
    let mut command = sandbox.program(venvs[0].join("bin/python"));
    command.args(["-c", child]).env("VRAMGUARD_LOG", "info");
    assert_eq!(said(&finish(command).stderr), 2);
    // --remove takes the notices away with the hook.
    for (venv, before) in venvs.iter().zip(&before) {
        remove_hook(&sandbox, &vramguard(), venv.as_os_str());
        assert!(
            tree(venv) == *before,
            "{} differs after --remove",
            venv.display()
        );
    }
}

#[test]
fn a_read_only_environment_says_it_once_per_process_tree() {
    let sandbox = sandbox();
    let library = sandbox.root().join("gone/libvramguard.so");
    fs::create_dir_all(library.parent().unwrap()).unwrap();
    fs::copy(support::artifacts().preload, &library).unwrap();
    let venv = sandbox.root().join("ro");
    make_venv(&venv, false);
    let mut install = sandbox.program(vramguard());
    install
        .args(["env", "--venv"])
        .arg(&venv)
        .env("VRAMGUARD_LIBRARY", &library);
    assert!(finish(install).status.success());
    fs::remove_file(&library).unwrap();
    // site-packages mounted read-only (a private mount namespace): no notice file can be left.
    let packages = site_packages(&venv);
    let children = "import subprocess, sys\n\
                    for _ in range(3):\n\
                    \x20   subprocess.run([sys.executable, '-c', 'pass'], check=True)\n\
                    open(sys.argv[1] + '/vg_probe', 'w')\n";
    let mut command = sandbox.program("unshare");
    command
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount --bind \"$1\" \"$1\" && mount -o remount,bind,ro \"$1\" && exec \"$2\" -c \"$3\" \"$1\"",
            "sh",
        ])
        .arg(&packages)
        .arg(venv.join("bin/python"))
        .arg(children);
    let finished = finish(command);
    if finished.stderr.contains("unshare failed") || finished.stderr.contains("mount:") {
        support::skip(
            "a_read_only_environment_says_it_once_per_process_tree",
            &format!(
                "no private read-only mount here: {}",
                finished.stderr.trim()
            ),
        );
        return;
    }
    // The parent said it once, its three children (which inherit the process tree's record) not
    // again, and the mount was read-only indeed.
    assert!(
        finished.stderr.contains("Read-only file system"),
        "site-packages was writable: {finished:?}"
    );
    assert_eq!(
        finished.stderr.matches("is missing").count(),
        1,
        "{}",
        finished.stderr
    );
    assert!(!fs::read_dir(&packages).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".notice")
    }));
}
