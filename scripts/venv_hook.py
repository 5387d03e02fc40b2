# vramguard's start-up hook for this virtualenv, imported by `_vramguard.pth` in its site-packages
# whenever one of its interpreters starts (however it is started: an activated shell, bin/python
# called directly, a Jupyter kernel, cron, systemd, subprocess, multiprocessing).
#
# When libvramguard.so is not loaded into this interpreter yet, it starts the interpreter again
# (exec: same pid, same stdin and other descriptors, same working directory, same environment
# plus LD_PRELOAD) with the library preloaded and the exact original arguments (sys.orig_argv,
# on Python 3.8 and 3.9 /proc/self/cmdline), once. It does nothing when the guard is already loaded (by LD_PRELOAD, /etc/ld.so.preload or
# `vramguard run`) or disabled (VRAMGUARD_DISABLE=1), and never stops the interpreter from
# starting: when it cannot put the guard in place it says why on stderr, once for this
# environment (a `_vramguard_hook.*.notice` file beside this one remembers it; where this
# directory is read-only, once for the process and its children), and carries on.
# VRAMGUARD_LOG=info says it at every start. A library the dynamic loader cannot load here (built
# against a newer glibc than this system's, a dependency missing) would stop the restarted
# interpreter, so the hook loads it once in a short child first (/bin/true, else this
# interpreter) and restarts only when that child starts cleanly.
#
# Written by `vramguard env --venv PATH` from scripts/venv_hook.py with the library's path filled
# in; `vramguard env --venv PATH --remove` removes it (or delete this file and _vramguard.pth).
import os
import sys

LIBRARY = "@VRAMGUARD_LIBRARY@"
# Set in the environment of the restarted interpreter (to its pid, which exec keeps), and removed
# from it at once, so that the restart happens once and children never inherit the marker.
_MARKER = "_VRAMGUARD_REEXEC"
_LEVELS = {"off": 0, "error": 1, "warn": 2, "info": 3, "debug": 4}
# The notices already said in this process tree, where no notice file could be written.
_NOTICED = "_VRAMGUARD_NOTICED"


def _wanted():
    return _LEVELS.get(os.environ.get("VRAMGUARD_LOG", "warn").strip().lower(), 2)


def _say(level, text):
    if _LEVELS[level] <= _wanted():
        try:
            os.write(2, ("vramguard: %s\n" % text).encode("utf-8", "replace"))
        except OSError:
            pass


def _stand_aside(text):
    """Says why this interpreter runs unguarded, once for this environment: the first start to
    say it creates the notice file of this text; every later start (DataLoader workers
    included) finds it and stays quiet."""
    if _wanted() >= _LEVELS["info"]:
        _say("warn", text)
        return
    import zlib
    key = "%08x" % zlib.crc32(text.encode("utf-8", "replace"))
    if key in os.environ.get(_NOTICED, "").split(":"):
        return
    notice = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_vramguard_hook.%s.notice" % key)
    try:
        fd = os.open(notice, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return
    except OSError:
        # A read-only environment: once for this process and the children it starts.
        os.environ[_NOTICED] = ":".join(filter(None, [os.environ.get(_NOTICED), key]))
    else:
        try:
            os.write(fd, ("%s\n" % text).encode("utf-8", "replace"))
        finally:
            os.close(fd)
    _say("warn", "%s (said once for %s; VRAMGUARD_LOG=info says it at every start)"
         % (text, sys.prefix))


def _arguments():
    """This interpreter's exact arguments: sys.orig_argv (Python 3.10 or later), else the
    kernel's copy of them (Python 3.8 and 3.9); None when neither can be had."""
    argv = getattr(sys, "orig_argv", None)
    if argv:
        return argv
    try:
        with open("/proc/self/cmdline", "rb") as cmdline:
            raw = cmdline.read()
    except OSError:
        return None
    if not raw.endswith(b"\0"):
        return None
    return raw[:-1].split(b"\0")


def _loaded():
    """Whether a libvramguard.so is mapped into this process (None when that cannot be told)."""
    try:
        with open("/proc/self/maps", "rb") as maps:
            return b"/libvramguard.so\n" in maps.read()
    except OSError:
        return None


# How long the load check's child may take (a hang guard: it normally takes milliseconds).
_CHECK_SECONDS = 30.0


def _cannot_load():
    """None when LIBRARY can be preloaded here, else why not (the loader's first line)."""
    import select
    import time

    probe = next((p for p in ("/bin/true", "/usr/bin/true") if os.access(p, os.X_OK)), None)
    argv = [probe] if probe else [sys.executable, "-I", "-S", "-c", ""]
    env = dict(os.environ, LD_PRELOAD=LIBRARY, VRAMGUARD_DISABLE="1", VRAMGUARD_LOG="off")
    env.pop(_MARKER, None)
    read_end, write_end = os.pipe()
    try:
        pid = os.posix_spawn(argv[0], argv, env, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, write_end, 2),
        ])
    except OSError as error:
        os.close(read_end)
        return "cannot start the check: %s" % error
    finally:
        os.close(write_end)
    said = b""
    deadline = time.monotonic() + _CHECK_SECONDS
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_end], [], [], left)[0]:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                return "a program with it preloaded did not finish within %ds" % _CHECK_SECONDS
            chunk = os.read(read_end, 4096)
            if not chunk:
                break
            said += chunk
    finally:
        os.close(read_end)
    status = os.waitpid(pid, 0)[1]
    lines = [line.strip() for line in said.decode("utf-8", "replace").splitlines() if line.strip()]
    if lines:
        return lines[0]
    if status != 0:
        return "a program with it preloaded failed (wait status %d)" % status
    return None


def _guard():
    if os.environ.get("VRAMGUARD_DISABLE", "").strip() == "1":
        return
    restarted = os.environ.pop(_MARKER, None) == str(os.getpid())
    loaded = _loaded()
    if loaded is not False:
        return
    if restarted:
        _stand_aside("%s could not be preloaded into %s; it runs unguarded" % (LIBRARY, sys.executable))
        return
    if not os.path.isfile(LIBRARY):
        _stand_aside("%s is missing: this environment's interpreters run unguarded (remove the hook "
             "with `vramguard env --venv %s --remove`, or delete %s and its _vramguard.pth)"
             % (LIBRARY, sys.prefix, __file__))
        return
    argv = _arguments()
    if not argv:
        _stand_aside("this interpreter's arguments cannot be read (no /proc/self/cmdline) to "
                     "restart it; start it with `vramguard run` to guard it")
        return
    executable = sys.executable
    try:
        own = bool(executable) and os.path.realpath("/proc/self/exe") == os.path.realpath(executable)
    except OSError:
        own = False
    if not own:
        # An interpreter embedded in another program: restarting it would replace that program.
        _stand_aside("this interpreter is embedded in another program; start that program with "
                     "`vramguard run` to guard it")
        return
    reason = _cannot_load()
    if reason:
        hint = ""
        if "GLIBC_" in reason:
            hint = (". It was built for a newer glibc than this system's: install the wheel "
                    "(glibc 2.28)")
        _stand_aside("%s cannot be loaded here (%s); %s starts unguarded%s"
                     % (LIBRARY, reason, executable, hint))
        return
    env = dict(os.environ)
    kept = [entry for entry in env.get("LD_PRELOAD", "").replace(" ", ":").split(":")
            if entry and os.path.basename(entry) != "libvramguard.so"]
    env["LD_PRELOAD"] = ":".join([LIBRARY] + kept)
    env[_MARKER] = str(os.getpid())
    _say("info", "restarting %s with %s preloaded" % (executable, LIBRARY))
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    try:
        os.execve(executable, argv, env)
    except OSError as error:
        _stand_aside("cannot restart %s with the guard preloaded (%s); it runs unguarded"
                     % (executable, error))


try:
    _guard()
except Exception:  # the hook never stops an interpreter from starting
    pass
