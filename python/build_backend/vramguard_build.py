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
    vramguard-VERSION.data/data/share/...            its man pages and shell completions, made
                                                     by the command just built (`vramguard man`,
                                                     `vramguard completions`), into the env's share/
    vramguard-VERSION.dist-info/licenses/LICENSE-*   the license texts (PEP 639)

The source distribution (``build_sdist``: ``python -m build``, ``uv build``) holds what building
the wheel needs and nothing else: the manifests and the lock file, the packages of every workspace
member (members of ``[workspace]`` in Cargo.toml, which cargo must find to read the workspace),
the files the command includes at compile time (scripts/), the Python package and this backend,
README and licenses. A wheel built from it is the same as one built from the checkout.
"""
import base64
import gzip
import hashlib
import io
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

NAME = "vramguard"
SUMMARY = "Keeps the GPU programs on one card from asking, together, for more VRAM than it has"
LICENSE = "MIT OR Apache-2.0"
LICENSE_FILES = ("LICENSE-MIT", "LICENSE-APACHE")
REQUIRES_PYTHON = ">=3.8"
RUST_TARGET = "x86_64-unknown-linux-gnu"
GLIBC = "2.28"
TAG = "py3-none-manylinux_%s_x86_64" % GLIBC.replace(".", "_")
# Every file of the wheel gets this time, so that the same binaries make the same wheel.
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
# What the source distribution holds besides the workspace members: files and directories of the
# checkout, relative to it.
SDIST_FILES = ("Cargo.toml", "Cargo.lock", "pyproject.toml", "README.md") + LICENSE_FILES
SDIST_DIRECTORIES = ("src", "benches", "python", "scripts", "deploy")
# Never in the source distribution, at any depth.
SDIST_SKIPPED = ("target", "__pycache__")
# The completion files of the wheel: (shell, path under share/).
COMPLETIONS = (
    ("bash", "bash-completion/completions/vramguard"),
    ("zsh", "zsh/site-functions/_vramguard"),
    ("fish", "fish/vendor_completions.d/vramguard.fish"),
)

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
    """The core metadata (METADATA of the wheel, PKG-INFO of the source distribution)."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as readme:
        description = readme.read()
    license_files = "".join("License-File: %s\n" % name for name in LICENSE_FILES)
    return (
        "Metadata-Version: 2.4\n"
        "Name: %s\nVersion: %s\nSummary: %s\nLicense-Expression: %s\n%sRequires-Python: %s\n"
        "Classifier: Operating System :: POSIX :: Linux\n"
        "Classifier: Environment :: GPU :: NVIDIA CUDA\n"
        "Description-Content-Type: text/markdown\n\n%s"
        % (NAME, ver, SUMMARY, LICENSE, license_files, REQUIRES_PYTHON, description)
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


def _generated_docs(command):
    """The man pages and completion scripts the built `command` prints, as (path under share/,
    bytes)."""
    files = []
    with tempfile.TemporaryDirectory() as pages:
        subprocess.run([command, "man", "--output", pages], check=True)
        for page in sorted(os.listdir(pages)):
            files.append(("man/man1/%s" % page, _read(os.path.join(pages, page))))
    for shell, path in COMPLETIONS:
        script = subprocess.run([command, "completions", shell], check=True,
                                stdout=subprocess.PIPE).stdout
        files.append((path, script))
    return files


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
        for shared, text in _generated_docs(command):
            _add(archive, records, "%s/data/share/%s" % (data, shared), text, 0o644)
        for name in LICENSE_FILES:
            _add(archive, records, "%s/licenses/%s" % (dist_info, name),
                 _read(os.path.join(ROOT, name)), 0o644)
        _add(archive, records, "%s/METADATA" % dist_info, _metadata(ver).encode(), 0o644)
        _add(archive, records, "%s/WHEEL" % dist_info, _wheel_file().encode(), 0o644)
        record = "%s/RECORD" % dist_info
        records.append("%s,," % record)
        info = zipfile.ZipInfo(record, date_time=ZIP_TIME)
        info.external_attr = 0o100644 << 16
        archive.writestr(info, "\n".join(records) + "\n")
    os.replace(path + ".part", path)
    return filename


def workspace_members():
    """The member directories of the workspace (``members`` of ``[workspace]`` in Cargo.toml),
    relative to the checkout, the root package (".") left out."""
    with open(os.path.join(ROOT, "Cargo.toml"), encoding="utf-8") as cargo:
        text = cargo.read()
    section = re.search(r"^\[workspace\]\s*$(.*?)(?=^\[)", text, re.M | re.S)
    found = section and re.search(r"^members\s*=\s*\[(.*?)\]", section.group(1), re.M | re.S)
    if not found:
        raise BuildError("no members in [workspace] of Cargo.toml")
    members = re.findall(r'"([^"]+)"', found.group(1))
    return [m for m in members if os.path.normpath(m) != "."]


def sdist_files():
    """The files of the source distribution, relative to the checkout, sorted."""
    files = []
    for name in SDIST_FILES:
        if not os.path.isfile(os.path.join(ROOT, name)):
            raise BuildError("%s is missing from %s" % (name, ROOT))
        files.append(name)
    for top in SDIST_DIRECTORIES + tuple(workspace_members()):
        if not os.path.isdir(os.path.join(ROOT, top)):
            raise BuildError("%s is missing from %s" % (top, ROOT))
        for directory, subdirectories, names in os.walk(os.path.join(ROOT, top)):
            subdirectories[:] = [d for d in subdirectories
                                 if d not in SDIST_SKIPPED and not d.startswith(".")]
            for name in names:
                if name.startswith(".") or name.endswith(".pyc"):
                    continue
                files.append(os.path.relpath(os.path.join(directory, name), ROOT))
    return sorted(set(files))


def write_sdist(directory):
    """Writes the source distribution into `directory`; returns its file name."""
    ver = version()
    base = "%s-%s" % (NAME, ver)
    filename = base + ".tar.gz"
    path = os.path.join(directory, filename)

    def add(archive, name, data, mode, mtime):
        info = tarfile.TarInfo("%s/%s" % (base, name))
        info.size, info.mode, info.mtime = len(data), mode, mtime
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        archive.addfile(info, io.BytesIO(data))

    with open(path + ".part", "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as packed, \
            tarfile.open(fileobj=packed, mode="w", format=tarfile.PAX_FORMAT) as archive:
        # Each file keeps its own time, so that cargo rebuilds what changed between two
        # source distributions unpacked in the same place.
        for name in sdist_files():
            source = os.path.join(ROOT, name)
            stat = os.stat(source)
            mode = 0o755 if stat.st_mode & 0o111 else 0o644
            add(archive, name, _read(source), mode, int(stat.st_mtime))
        add(archive, "PKG-INFO", _metadata(ver).encode(), 0o644, int(os.stat(
            os.path.join(ROOT, "Cargo.toml")).st_mtime))
    os.replace(path + ".part", path)
    return filename


# The PEP 517 hooks.

def get_requires_for_build_wheel(config_settings=None):
    return []  # the tools are in [build-system] requires


def get_requires_for_build_sdist(config_settings=None):
    return []  # the source distribution needs no tool


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    """The wheel's .dist-info without building it (what pip asks before building)."""
    ver = version()
    dist_info = "%s-%s.dist-info" % (NAME, ver)
    target = os.path.join(metadata_directory, dist_info)
    os.makedirs(os.path.join(target, "licenses"), exist_ok=True)
    with open(os.path.join(target, "METADATA"), "w", encoding="utf-8") as metadata:
        metadata.write(_metadata(ver))
    with open(os.path.join(target, "WHEEL"), "w", encoding="utf-8") as wheel:
        wheel.write(_wheel_file())
    for name in LICENSE_FILES:
        shutil.copyfile(os.path.join(ROOT, name), os.path.join(target, "licenses", name))
    return dist_info


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    command, library = build_binaries()
    return write_wheel(wheel_directory, command, library)


def build_sdist(sdist_directory, config_settings=None):
    return write_sdist(sdist_directory)
