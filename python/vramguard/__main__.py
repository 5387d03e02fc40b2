"""``python -m vramguard ARGS``: runs the installed ``vramguard`` command with ARGS.

The command replaces this interpreter (exec: same pid, signals and exit status). It is told where
this package's library is (``VRAMGUARD_LIBRARY``) and which interpreter asked
(``VRAMGUARD_PYTHON``, the one ``vramguard doctor`` then checks), unless those are already set.
"""
import os
import sys

from . import executable, library_path


def main():
    command = executable()
    if command is None:
        sys.stderr.write(
            "python -m vramguard: the vramguard command is not installed with this package "
            "(was it installed with pip --target?); reinstall the wheel into an environment\n"
        )
        return 125
    if os.path.isfile(library_path()):
        os.environ.setdefault("VRAMGUARD_LIBRARY", library_path())
    os.environ.setdefault("VRAMGUARD_PYTHON", sys.executable)
    try:
        os.execv(command, [command] + sys.argv[1:])
    except OSError as error:
        sys.stderr.write("python -m vramguard: cannot run %s: %s\n" % (command, error))
        return 126


if __name__ == "__main__":
    sys.exit(main())
