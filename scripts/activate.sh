# >>> vramguard >>>
# Puts the vramguard guard in place while this virtualenv is active; `deactivate` restores the
# previous LD_PRELOAD. Written by `vramguard env --venv PATH` (run it again to update; delete this
# block, up to the closing marker, to remove it). This is scripts/activate.sh with the library's
# path filled in.
_VRAMGUARD_LIBRARY='@VRAMGUARD_LIBRARY@'
if [ -z "${_VRAMGUARD_ACTIVE:-}" ]; then
    _VRAMGUARD_ACTIVE=1
    if [ -n "${LD_PRELOAD+set}" ]; then
        _VRAMGUARD_HAD_LD_PRELOAD=1
        _VRAMGUARD_OLD_LD_PRELOAD="$LD_PRELOAD"
    else
        _VRAMGUARD_HAD_LD_PRELOAD=0
        _VRAMGUARD_OLD_LD_PRELOAD=
    fi
    # Only a library the loader can load here joins LD_PRELOAD (one that cannot, built for a
    # newer glibc than this system's, would stop every program of this shell).
    if _vramguard_reason=$(LD_PRELOAD=$_VRAMGUARD_LIBRARY VRAMGUARD_DISABLE=1 VRAMGUARD_LOG=off /bin/sh -c : 2>&1 >/dev/null) \
        && [ -z "$_vramguard_reason" ]; then
        case ":${LD_PRELOAD:-}:" in
            *":$_VRAMGUARD_LIBRARY:"*) ;;
            *) LD_PRELOAD="$_VRAMGUARD_LIBRARY${LD_PRELOAD:+:$LD_PRELOAD}"; export LD_PRELOAD ;;
        esac
    else
        echo "vramguard: $_VRAMGUARD_LIBRARY cannot be loaded here ($(printf '%s\n' "$_vramguard_reason" | sed -n '/./{p;q;}')); this shell's programs start unguarded" >&2
    fi
    unset _vramguard_reason
fi
# Wrap the virtualenv's deactivate (bash and zsh can copy a function through `typeset -f`), once.
case "$(typeset -f deactivate 2>/dev/null)" in
    ''|*_vramguard_venv_deactivate*) ;;
    *)
        eval "_vramguard_venv_$(typeset -f deactivate)"
        deactivate () {
            if [ -n "${_VRAMGUARD_ACTIVE:-}" ]; then
                if [ "${_VRAMGUARD_HAD_LD_PRELOAD:-0}" = 1 ]; then
                    LD_PRELOAD="${_VRAMGUARD_OLD_LD_PRELOAD:-}"; export LD_PRELOAD
                else
                    unset LD_PRELOAD
                fi
                unset _VRAMGUARD_ACTIVE _VRAMGUARD_HAD_LD_PRELOAD _VRAMGUARD_OLD_LD_PRELOAD _VRAMGUARD_LIBRARY
            fi
            _vramguard_venv_deactivate "$@"
            if [ "${1:-}" != nondestructive ]; then
                unset -f _vramguard_venv_deactivate
            fi
        }
        ;;
esac
# <<< vramguard <<<
