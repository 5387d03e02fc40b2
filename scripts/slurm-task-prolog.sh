#!/bin/sh
# vramguard's Slurm TaskProlog: guards every task of a job and holds it to its share of the card.
# Written by `vramguard env --slurm` (this is scripts/slurm-task-prolog.sh with the library's path,
# the ledger directory and the guard options filled in); slurm.conf names it as
# `TaskProlog=/etc/slurm/vramguard-task-prolog.sh` (docs/slurm.md).
#
# slurmd runs it before each task, as the job's user, with the task's environment. What it prints
# as `export NAME=value` reaches the task (the value is taken literally, to the end of the line);
# `print TEXT` goes to the task's standard output. It sets
#   LD_PRELOAD       the library, before the task's own preloads (another copy of it dropped);
#   VRAMGUARD_DIR    the node's ledger, whatever the job's environment says;
#   VRAMGUARD_LIMIT  the task's share of its card's budget: the shards it holds on the node
#                    (SLURM_SHARDS_ON_NODE) over the shards Slurm configured on that GPU, shared
#                    equally by the step's tasks on the node; `100%` for a job with gres/gpu;
#                    `0` for a task that holds neither.
# The shards of a GPU are counted from Slurm's own configuration: `slurmd -G` (slurm.conf and
# gres.conf as slurmd reads them for this node), else `scontrol show node` on a node with one GPU.
# When the library cannot load here it says so once and the task starts unguarded; when the
# shards of the GPU cannot be told it says so and the task is guarded without a share limit.
# It always exits 0: a failing TaskProlog would stop the task.

# Words are split below (lists of preloads, GPUs, fields), never globbed.
set -f
_VRAMGUARD_LIBRARY='@VRAMGUARD_LIBRARY@'
_VRAMGUARD_DIR='@VRAMGUARD_DIR@'
_vramguard_newline='
'

vramguard_warn() {
    printf 'print vramguard: %s\n' "$*"
}

# Whether the library can be preloaded here: the file is readable and a trivial program starts
# with it preloaded without a word from the dynamic loader. (A library that needs a newer glibc,
# or a library the node lacks, stops every program it is preloaded into; a missing or foreign
# one is skipped with a message.) On failure, _vramguard_why says what the loader said.
vramguard_can_load() {
    _vramguard_why=
    if [ ! -f "$1" ] || [ ! -r "$1" ]; then
        _vramguard_why="no readable file"
        return 1
    fi
    _vramguard_why=$(LD_PRELOAD="$1" VRAMGUARD_DISABLE=1 VRAMGUARD_LOG=off /bin/sh -c : 2>&1) \
        && [ -z "$_vramguard_why" ] && return 0
    _vramguard_why=${_vramguard_why:-the loader failed}
    _vramguard_why=${_vramguard_why%%"$_vramguard_newline"*}
    return 1
}

# $1 as a decimal number of at most nine digits (leading zeros dropped), or nothing.
vramguard_number() {
    case "$1" in
        '' | *[!0-9]*) return 0 ;;
    esac
    _n=$1
    while [ "${#_n}" -gt 1 ] && [ "${_n#0}" != "$_n" ]; do _n=${_n#0}; done
    [ "${#_n}" -le 9 ] && printf '%s\n' "$_n"
}

# The value of field $1 (`Name=value`) in the line $2.
vramguard_field() {
    case " $2 " in
        *" $1="*) ;;
        *) return 0 ;;
    esac
    _v=${2#*" $1="}
    printf '%s\n' "${_v%% *}"
}

# The shards Slurm configured on the GPU of gres index $1 on this node, or nothing.
vramguard_gpu_shards() {
    _slurmd=
    for _candidate in "$(command -v slurmd 2>/dev/null)" /usr/sbin/slurmd /usr/local/sbin/slurmd; do
        if [ -n "$_candidate" ] && [ -x "$_candidate" ]; then
            _slurmd=$_candidate
            break
        fi
    done
    if [ -n "$_slurmd" ]; then
        # One line per GPU and per GPU's shards: `Gres Name=shard ... Count=8 Index=0 ...
        # File=/dev/nvidia0`; the shards of a GPU are those with its device file.
        if [ -n "${SLURMD_NODENAME:-}" ]; then
            _gres=$("$_slurmd" -G -N "$SLURMD_NODENAME" 2>&1)
        else
            _gres=$("$_slurmd" -G 2>&1)
        fi
        _file=
        while IFS= read -r _line; do
            case " $_line " in
                *" Name=gpu "*) ;;
                *) continue ;;
            esac
            [ "$(vramguard_field Index "$_line")" = "$1" ] && _file=$(vramguard_field File "$_line")
        done <<EOF
$_gres
EOF
        if [ -n "$_file" ]; then
            _sum=0
            _seen=
            while IFS= read -r _line; do
                case " $_line " in
                    *" Name=shard "*) ;;
                    *) continue ;;
                esac
                [ "$(vramguard_field File "$_line")" = "$_file" ] || continue
                _count=$(vramguard_number "$(vramguard_field Count "$_line")")
                [ -n "$_count" ] || return 0
                _sum=$((_sum + _count))
                _seen=1
            done <<EOF
$_gres
EOF
            [ -n "$_seen" ] && printf '%s\n' "$_sum"
            return 0
        fi
    fi
    # The controller's view (`Gres=gpu:1,shard:8`), which tells a GPU's shards only when the
    # node has one GPU.
    _node=$(scontrol show node "${SLURMD_NODENAME:-$(hostname)}" 2>/dev/null) || return 0
    _gpus=
    _shards=
    for _word in $_node; do
        case "$_word" in
            Gres=*) ;;
            *) continue ;;
        esac
        _old_ifs=$IFS
        IFS=,
        for _item in ${_word#Gres=}; do
            _item=${_item%%(*}
            case "$_item" in
                gpu:*) _gpus=${_item##*:} ;;
                shard:*) _shards=${_item##*:} ;;
            esac
        done
        IFS=$_old_ifs
    done
    [ "$_gpus" = 1 ] && vramguard_number "$_shards"
    return 0
}

# How many tasks of this step run on this node (SLURM_STEP_TASKS_PER_NODE, e.g. `2(x3),1`, at
# SLURM_NODEID); 1 for a batch script.
vramguard_local_tasks() {
    _left=$(vramguard_number "${SLURM_NODEID:-0}")
    _old_ifs=$IFS
    IFS=,
    for _item in ${SLURM_STEP_TASKS_PER_NODE:-1}; do
        _tasks=$(vramguard_number "${_item%%(*}")
        _repeat=1
        case "$_item" in
            *'(x'*')')
                _repeat=${_item#*(x}
                _repeat=$(vramguard_number "${_repeat%)}")
                ;;
        esac
        if [ -z "$_tasks" ] || [ -z "$_repeat" ] || [ -z "$_left" ]; then
            break
        fi
        if [ "$_left" -lt "$_repeat" ]; then
            IFS=$_old_ifs
            [ "$_tasks" -gt 0 ] && printf '%s\n' "$_tasks" || echo 1
            return 0
        fi
        _left=$((_left - _repeat))
    done
    IFS=$_old_ifs
    echo 1
}

# The task's VRAMGUARD_LIMIT, or nothing (after a warning) when its share cannot be told.
vramguard_share() {
    _held=$(vramguard_number "${SLURM_SHARDS_ON_NODE:-}")
    _gpus=${SLURM_STEP_GPUS:-${SLURM_JOB_GPUS:-}}
    if [ -n "$_held" ] && [ "$_held" -gt 0 ]; then
        # Slurm takes a job's shards on a node from one GPU; should they lie on several, the
        # share is of their shards together (the limit is the same on every card).
        _of=0
        _old_ifs=$IFS
        IFS=,
        for _gpu in $_gpus; do
            IFS=$_old_ifs
            _count=$(vramguard_gpu_shards "$_gpu")
            if [ -z "$_count" ]; then
                _of=0
                break
            fi
            _of=$((_of + _count))
        done
        IFS=$_old_ifs
        if [ "$_of" -eq 0 ]; then
            vramguard_warn "cannot tell how many shards GPU ${_gpus:-?} of ${SLURMD_NODENAME:-this node} has (slurmd -G, scontrol show node): this task is guarded but not held to its ${_held} shards"
            return 0
        fi
        _tasks=$(vramguard_local_tasks)
        # Percent of the budget with six decimals, rounded down: the shares never add up to more.
        _scaled=$((_held * 100000000 / (_of * _tasks)))
        [ "$_scaled" -gt 100000000 ] && _scaled=100000000
        printf '%d.%06d%%\n' $((_scaled / 1000000)) $((_scaled % 1000000))
    elif [ -n "$_gpus" ] || [ "$(vramguard_number "${SLURM_GPUS_ON_NODE:-}")" -gt 0 ] 2>/dev/null; then
        echo '100%'
    else
        echo 0
    fi
}

if ! vramguard_can_load "$_VRAMGUARD_LIBRARY"; then
    vramguard_warn "$_VRAMGUARD_LIBRARY cannot be loaded on ${SLURMD_NODENAME:-this node} (${_vramguard_why}): this task runs WITHOUT the GPU memory guard"
    exit 0
fi
# The library first, then the task's own preloads (colon or space separated) but any other copy
# of the guard.
_vramguard_preload=$_VRAMGUARD_LIBRARY
_old_ifs=$IFS
IFS=': '
for _entry in ${LD_PRELOAD:-}; do
    case "$_entry" in
        libvramguard.so | */libvramguard.so) ;;
        *) _vramguard_preload="$_vramguard_preload:$_entry" ;;
    esac
done
IFS=$_old_ifs
[ "$_vramguard_preload" = "${LD_PRELOAD:-}" ] \
    || printf 'export LD_PRELOAD=%s\n' "$_vramguard_preload"
printf 'export VRAMGUARD_DIR=%s\n' "$_VRAMGUARD_DIR"
# @VRAMGUARD_OPTIONS@
_vramguard_limit=$(vramguard_share)
case "$_vramguard_limit" in
    print\ *) printf '%s\n' "$_vramguard_limit" ;;
    ?*) printf 'export VRAMGUARD_LIMIT=%s\n' "$_vramguard_limit" ;;
esac
exit 0
