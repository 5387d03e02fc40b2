# >>> vramguard >>>
# Puts the vramguard guard in place while this virtualenv is active; `deactivate` restores the
# previous LD_PRELOAD. Written by `vramguard env --venv PATH` (run it again to update; delete this
# block, up to the closing marker, to remove it). This is scripts/activate.fish with the library's
# path filled in.
set -g _VRAMGUARD_LIBRARY '@VRAMGUARD_LIBRARY@'
if not set -q _VRAMGUARD_ACTIVE
    set -g _VRAMGUARD_ACTIVE 1
    if set -q LD_PRELOAD
        set -g _VRAMGUARD_OLD_LD_PRELOAD $LD_PRELOAD
    end
    # Only a library the loader can load here joins LD_PRELOAD (one that cannot, built for a
    # newer glibc than this system's, would stop every program of this shell).
    set -l _vramguard_reason (LD_PRELOAD=$_VRAMGUARD_LIBRARY VRAMGUARD_DISABLE=1 VRAMGUARD_LOG=off /bin/sh -c : 2>&1 >/dev/null)
    set -l _vramguard_status $status
    if test $_vramguard_status -eq 0; and test -z "$_vramguard_reason"
        if not contains -- $_VRAMGUARD_LIBRARY (string split -n ':' -- "$LD_PRELOAD")
            set -gx LD_PRELOAD (string join ':' -- $_VRAMGUARD_LIBRARY (string split -n ':' -- "$LD_PRELOAD"))
        end
    else
        echo "vramguard: $_VRAMGUARD_LIBRARY cannot be loaded here ($_vramguard_reason[1]); this shell's programs start unguarded" >&2
    end
end
# Wrap the virtualenv's deactivate, once.
if functions -q deactivate; and not functions deactivate | string match -q '*_vramguard_venv_deactivate*'
    functions -e _vramguard_venv_deactivate
    functions -c deactivate _vramguard_venv_deactivate
    function deactivate -d 'Restore LD_PRELOAD, then leave the virtualenv'
        if set -q _VRAMGUARD_ACTIVE
            if set -q _VRAMGUARD_OLD_LD_PRELOAD
                set -gx LD_PRELOAD $_VRAMGUARD_OLD_LD_PRELOAD
            else
                set -e LD_PRELOAD
            end
            set -e _VRAMGUARD_ACTIVE
            set -e _VRAMGUARD_OLD_LD_PRELOAD
        end
        _vramguard_venv_deactivate $argv
        if test "$argv[1]" != nondestructive
            functions -e _vramguard_venv_deactivate
        end
    end
end
# <<< vramguard <<<
