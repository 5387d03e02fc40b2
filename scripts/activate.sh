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
    case ":${LD_PRELOAD:-}:" in
        *":$_VRAMGUARD_LIBRARY:"*) ;;
        *) LD_PRELOAD="$_VRAMGUARD_LIBRARY${LD_PRELOAD:+:$LD_PRELOAD}"; export LD_PRELOAD ;;
    esac
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
