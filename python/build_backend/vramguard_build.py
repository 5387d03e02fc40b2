"""The PEP 517 build backend of vramguard's wheel (named in pyproject.toml).

One cargo command builds both binaries the wheel carries, the ``vramguard`` command and the
preload library ``libvramguard.so``, with the workspace's release profile (the build the
benchmarks measure; no profile or flag of its own) and ``--locked`` dependencies:

    cargo zigbuild --release --locked --target x86_64-unknown-linux-gnu.2.28 \\
        -p vramguard -p vramguard-preload

cargo-zigbuild links with zig (both from PyPI, the ``ziglang`` package providing zig) against
glibc 2.28's symbols, so the binaries run on every x86_64 Linux with glibc 2.28 or later and the
wheel is tagged ``manylinux_2_28_x86_64``. The wheel holds:

    vramguard/__init__.py, vramguard/__main__.py     the package (python -m vramguard)
    vramguard/libvramguard.so                        the preload library
    vramguard-VERSION.data/scripts/vramguard         the command, installed into the env's bin/

Only wheels are built (``pip install .``, ``pip wheel .``); there is no sdist.
"""
import base64
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import zipfile

NAME = "vramguard"
SUMMARY = "Keeps the GPU programs on one card from asking, together, for more VRAM than it has"
LICENSE = "MIT OR Apache-2.0"
REQUIRES_PYTHON = ">=3.8"
RUST_TARGET = "x86_64-unknown-linux-gnu"
GLIBC = "2.28"
TAG = "py3-none-manylinux_%s_x86_64" % GLIBC.replace(".", "_")
# Every file of the wheel gets this time, so that the same binaries make the same wheel.
ZIP_TIME = (1980, 1, 1, 0, 0, 0)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class BuildError(RuntimeError):
    """The wheel cannot be built; the message says what to do."""


def version():
    """The workspace's version ([workspace.package] in Cargo.toml), the wheel's version too."""
    with open(os.path.join(ROOT, "Cargo.toml"), encoding="utf-8") as cargo:
        text = cargo.read()
    section = re.search(r"^\[workspace\.package\]\s*$(.*?)(?=^\[)", text, re.M | re.S)
    found = section and re.search(r'^version\s*=\s*"([^"]+)"', section.group(1), re.M)
    if not found:
        raise BuildError("no version in [workspace.package] of Cargo.toml")
    return found.group(1)


def _tool(name):
    """A build tool: on PATH, or beside this interpreter (a virtualenv's bin/)."""
    found = shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))
    if not found:
        raise BuildError(
            "%s is not installed: building vramguard needs Rust (cargo, https://rustup.rs) and "
            "the build requirements of pyproject.toml (pip installs them; scripts/setup.sh puts "
            "them into target/pytools)" % name
        )
    return found


def _zig():
    """The zig executable of the ``ziglang`` package."""
    try:
        import ziglang
    except ImportError:
        raise BuildError("the ziglang package is not installed (a build requirement)") from None
    zig = os.path.join(os.path.dirname(ziglang.__file__), "zig")
    if not os.path.isfile(zig):
        raise BuildError("the ziglang package has no zig executable at %s" % zig)
    return zig


def target_dir():
    """cargo's target directory ($CARGO_TARGET_DIR, else target/ of the checkout)."""
    configured = os.environ.get("CARGO_TARGET_DIR")
    if configured:
        return os.path.abspath(os.path.join(ROOT, configured))
    return os.path.join(ROOT, "target")


def build_binaries():
    """Runs the one cargo command; returns the paths of (the command, the library)."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        raise BuildError("the wheel is built for x86_64 Linux only, not %s %s"
                         % (sys.platform, platform.machine()))
    command = [_tool("cargo"), "zigbuild", "--release", "--locked",
               "--target", "%s.%s" % (RUST_TARGET, GLIBC), "-p", "vramguard", "-p", "vramguard-preload"]
    env = dict(os.environ, CARGO_ZIGBUILD_ZIG_PATH=_zig())
    # cargo finds cargo-zigbuild on PATH; the interpreter's own bin/ goes first.
    zigbuild = os.path.dirname(_tool("cargo-zigbuild"))
    env["PATH"] = zigbuild + os.pathsep + env.get("PATH", "")
    sys.stderr.write("vramguard_build: %s\n" % " ".join(command))
    sys.stderr.flush()
    subprocess.run(command, cwd=ROOT, env=env, check=True)
    release = os.path.join(target_dir(), RUST_TARGET, "release")
    binaries = os.path.join(release, "vramguard"), os.path.join(release, "libvramguard.so")
    for path in binaries:
        if not os.path.isfile(path):
            raise BuildError("cargo built no %s" % path)
    return binaries


def _metadata(ver):
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as readme:
        description = readme.read()
    return (
        "Metadata-Version: 2.1\n"
        "Name: %s\nVersion: %s\nSummary: %s\nLicense: %s\nRequires-Python: %s\n"
        "Classifier: Operating System :: POSIX :: Linux\n"
        "Classifier: Environment :: GPU :: NVIDIA CUDA\n"
        "Description-Content-Type: text/markdown\n\n%s"
        % (NAME, ver, SUMMARY, LICENSE, REQUIRES_PYTHON, description)
    )


def _wheel_file():
    return ("Wheel-Version: 1.0\nGenerator: vramguard_build\nRoot-Is-Purelib: false\nTag: %s\n"
            % TAG)


def _record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return "%s,sha256=%s,%d" % (name, digest, len(data))


def _add(archive, records, name, data, mode):
    info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
    info.external_attr = (0o100000 | mode) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data)
    records.append(_record_line(name, data))


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def write_wheel(directory, command, library):
    """Writes the wheel of `command` and `library` into `directory`; returns its file name."""
    ver = version()
    dist_info = "%s-%s.dist-info" % (NAME, ver)
    data = "%s-%s.data" % (NAME, ver)
    filename = "%s-%s-%s.whl" % (NAME, ver, TAG)
    package = os.path.join(ROOT, "python", NAME)
    records = []
    path = os.path.join(directory, filename)
    with zipfile.ZipFile(path + ".part", "w") as archive:
        for source in ("__init__.py", "__main__.py"):
            _add(archive, records, "%s/%s" % (NAME, source), _read(os.path.join(package, source)), 0o644)
        _add(archive, records, "%s/libvramguard.so" % NAME, _read(library), 0o755)
        _add(archive, records, "%s/scripts/vramguard" % data, _read(command), 0o755)
        _add(archive, records, "%s/METADATA" % dist_info, _metadata(ver).encode(), 0o644)
        _add(archive, records, "%s/WHEEL" % dist_info, _wheel_file().encode(), 0o644)
        record = "%s/RECORD" % dist_info
        records.append("%s,," % record)
        info = zipfile.ZipInfo(record, date_time=ZIP_TIME)
        info.external_attr = 0o100644 << 16
        archive.writestr(info, "\n".join(records) + "\n")
    os.replace(path + ".part", path)
    return filename


# The PEP 517 hooks.

def get_requires_for_build_wheel(config_settings=None):
    return []  # the tools are in [build-system] requires


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    command, library = build_binaries()
    return write_wheel(wheel_directory, command, library)
