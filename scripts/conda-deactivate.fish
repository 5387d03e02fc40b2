# >>> vramguard >>>
# Restores the LD_PRELOAD that this conda environment's activation found before it put the
# vramguard guard in place (etc/conda/activate.d/vramguard.fish). Written by
# `vramguard env --venv PREFIX`, which `--remove` undoes. This is scripts/conda-deactivate.fish.
if set -q _VRAMGUARD_ACTIVE
    if set -q _VRAMGUARD_OLD_LD_PRELOAD
        set -gx LD_PRELOAD $_VRAMGUARD_OLD_LD_PRELOAD
    else
        set -e LD_PRELOAD
    end
    set -e _VRAMGUARD_ACTIVE
    set -e _VRAMGUARD_OLD_LD_PRELOAD
    set -e _VRAMGUARD_LIBRARY
end
# <<< vramguard <<<
