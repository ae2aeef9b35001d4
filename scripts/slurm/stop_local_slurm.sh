#!/usr/bin/env bash
# Stop the daemons that start_local_slurm.sh started, by the pids in their pid files only.
set -uo pipefail
DIR=${SLURM_LOCAL_DIR:-/tmp/slurm-local}
running() { local st; st=$(sed 's/^.*) //' /proc/"$1"/stat 2>/dev/null | cut -d' ' -f1); [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]; }
stop() {  # stop PIDFILE COMM
  local p; p=$(cat "$1" 2>/dev/null) || return 0
  if [ -n "$p" ] && [ "$(cat /proc/"$p"/comm 2>/dev/null)" = "$2" ] && running "$p"; then
    kill "$p"
    for _ in $(seq 1 50); do running "$p" || break; sleep 0.2; done
    if running "$p"; then kill -9 "$p"; fi
  fi
  rm -f "$1"
}
stop "$DIR"/slurmd.pid slurmd
stop "$DIR"/slurmctld.pid slurmctld
stop "$DIR"/munged.pid munged        # only present if start_local_slurm.sh started munged
