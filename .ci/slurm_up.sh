#!/usr/bin/env bash
# A single-node Slurm on this machine for tests/test_slurm.py: Debian's
# slurm-wlm and munge (installed with apt only when missing), a minimal
# slurm.conf (this host the only node; no cgroups, no accounting), and munged,
# slurmctld and slurmd started directly (no systemd). Needs root. It never
# fails the caller: whether Slurm came up, or why not, is written to
# $CBS_SLURM_STATUS (default /tmp/cbs-slurm-status), which the test reads for
# its skip reason. Running it again with Slurm up changes nothing.
set -uo pipefail
status=${CBS_SLURM_STATUS:-/tmp/cbs-slurm-status}
say() { echo "$1" >"$status"; echo "slurm_up: $1"; }

if sinfo -h -o %t 2>/dev/null | grep -q idle && timeout 20 srun -N1 -n1 true 2>/dev/null; then
  say "up: $(sinfo -h -o '%P %D %t %c' | head -1)"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then say "not started: needs root to install and start Slurm"; exit 0; fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null) ||
    { say "not started: apt-get install slurm-wlm munge failed"; exit 0; }
fi

node=$(hostname -s)
cpus=$(nproc)
memory=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 3 / 4))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/lib/munge /var/log/munge
cat >/etc/slurm/slurm.conf <<EOF
ClusterName=cbs
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF

if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged ||
    { say "not started: munged did not start (see /var/log/munge/munged.log)"; exit 0; }
  sleep 1
fi
munge -n | unmunge >/dev/null 2>&1 || { say "not started: munge does not authenticate"; exit 0; }

pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld || { say "not started: slurmctld failed (see /var/log/slurm/slurmctld.log)"; exit 0; }
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd || { say "not started: slurmd failed (see /var/log/slurm/slurmd.log)"; exit 0; }

for _ in $(seq 30); do
  sinfo -h -o %t 2>/dev/null | grep -q idle && break
  sleep 1
done
scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
if ! timeout 60 srun -N1 -n1 hostname >/dev/null 2>&1; then
  say "not started: srun hostname failed (sinfo: $(sinfo -h -o '%t %E' 2>&1 | head -1); logs in /var/log/slurm)"
  exit 0
fi
say "up: $(sinfo -h -o '%P %D %t %c' | head -1)"
