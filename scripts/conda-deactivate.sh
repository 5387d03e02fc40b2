# >>> vramguard >>>
# Restores the LD_PRELOAD that this conda environment's activation found before it put the
# vramguard guard in place (etc/conda/activate.d/vramguard.sh). Written by
# `vramguard env --venv PREFIX`, which `--remove` undoes. This is scripts/conda-deactivate.sh.
if [ -n "${_VRAMGUARD_ACTIVE:-}" ]; then
    if [ "${_VRAMGUARD_HAD_LD_PRELOAD:-0}" = 1 ]; then
        LD_PRELOAD="${_VRAMGUARD_OLD_LD_PRELOAD:-}"; export LD_PRELOAD
    else
        unset LD_PRELOAD
    fi
    unset _VRAMGUARD_ACTIVE _VRAMGUARD_HAD_LD_PRELOAD _VRAMGUARD_OLD_LD_PRELOAD _VRAMGUARD_LIBRARY
fi
# <<< vramguard <<<
