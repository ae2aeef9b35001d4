#!/usr/bin/env bash
# Stop what start_local_slurm.sh started and remove what it made: its jobs (cancelled), the
# processes of its node namespaces, its daemons (by the pids in their pid files only), and the
# namespaces and links listed in $SLURM_LOCAL_DIR/made. Idempotent: a second run finds nothing.
set -uo pipefail
DIR=${SLURM_LOCAL_DIR:-/tmp/slurm-local}
running() { local st; st=$(sed 's/^.*) //' /proc/"$1"/stat 2>/dev/null | cut -d' ' -f1); [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]; }
# alive PIDFILE COMM -> 0 if the pid in PIDFILE is a running process whose name is COMM
alive() { local p; p=$(cat "$1" 2>/dev/null) || return 1; [ -n "$p" ] && [ "$(cat /proc/"$p"/comm 2>/dev/null)" = "$2" ] && running "$p"; }
stop() {  # stop PIDFILE COMM
  if alive "$1" "$2"; then
    local p; p=$(cat "$1"); kill "$p"
    for _ in $(seq 1 50); do running "$p" || break; sleep 0.2; done
    if running "$p"; then kill -9 "$p"; fi
  fi
  rm -f "$1"
}

# 1. Jobs end through SLURM while it is still up: cancel what is queued or running, and wait
# until slurmctld has heard from every step. A step that ends after slurmctld is gone retries its
# completion message for ever, and its slurmstepd ignores SIGTERM.
if alive "$DIR"/slurmctld.pid slurmctld; then
  jobs=$(squeue -h -o %A 2>/dev/null)
  if [ -n "$jobs" ]; then
    # shellcheck disable=SC2086  # one job id per word
    scancel $jobs 2>/dev/null
    for _ in $(seq 1 75); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi

# 2. A node namespace holds only what start_local_slurm.sh put there: a slurmd and the job steps
# it forked (job steps outlive their slurmd). What is left there goes first: a namespace with a
# process in it would outlive its name, holding its veth on the bridge.
namespaces=$(sed -n 's/^netns //p' "$DIR"/made 2>/dev/null)
pids=""
for ns in $namespaces; do
  [ -e /run/netns/"$ns" ] && pids+=" $(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')"
done
left() { local p out=""; for p in $pids; do running "$p" && out+=" $p"; done; echo "$out"; }
if [ -n "$(left)" ]; then
  # shellcheck disable=SC2046  # one pid per word
  kill $(left) 2>/dev/null
  for _ in $(seq 1 25); do [ -z "$(left)" ] && break; sleep 0.2; done
  # shellcheck disable=SC2046
  [ -n "$(left)" ] && kill -9 $(left) 2>/dev/null
  for _ in $(seq 1 25); do [ -z "$(left)" ] && break; sleep 0.2; done
fi

# 3. daemons by pid file (slurmd.pid: a one-node cluster; slurmd.NODE.pid: one per node)
for pidfile in "$DIR"/slurmd.pid "$DIR"/slurmd.*.pid; do
  [ -e "$pidfile" ] && stop "$pidfile" slurmd
done
stop "$DIR"/slurmctld.pid slurmctld
stop "$DIR"/munged.pid munged        # only present if start_local_slurm.sh started munged

# 4. namespaces (deleting one deletes the veth end inside it, and with it the pair), then links
[ -f "$DIR"/made ] || exit 0
for ns in $namespaces; do
  [ -e /run/netns/"$ns" ] && ip netns del "$ns"
done
for link in $(sed -n 's/^link //p' "$DIR"/made); do
  ip link show "$link" >/dev/null 2>&1 && ip link del "$link"
done
rm -f "$DIR"/made "$DIR"/hosts
exit 0
