"""vramguard keeps the GPU programs on one card from asking, together, for more VRAM than it has.

The wheel installs the ``vramguard`` command (into the environment's ``bin``) and the preload
library ``libvramguard.so`` (into this package). ``python -m vramguard ...`` runs the command.
"""
import os
import sysconfig

__all__ = ["library_path", "executable"]

LIBRARY_NAME = "libvramguard.so"


def library_path():
    """The absolute path of the installed ``libvramguard.so``."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), LIBRARY_NAME)


def executable():
    """The installed ``vramguard`` command, or None when this installation has none."""
    try:
        from importlib import metadata

        for entry in metadata.distribution("vramguard").files or ():
            if entry.name == "vramguard" and "bin" in entry.parts[:-1]:
                path = str(entry.locate())
                if os.path.isfile(path):
                    return os.path.abspath(path)
    except Exception:
        pass
    path = os.path.join(sysconfig.get_path("scripts"), "vramguard")
    return path if os.path.isfile(path) else None
