#!/usr/bin/env bash
# $all read throughput in cluster mode: one Skald node against two, each node
# capped at a share of one CPU with a cgroup (v1 `cpu` controller; run as
# root), standing in for a machine of its own: on one 2-core machine two
# uncapped nodes share the same cores, so their sum cannot grow.
#
#   benches/cluster_reads.sh [SECONDS=8] [QUOTA_US=30000] [ROUNDS=3]
#
# Needs `cargo build --release`, the shared load generator (ESBENCH, default
# ../shared/bench/esbench built in /var/tmp/esbench-target) and `nats-server`
# (NATS_SERVER, default the test venv in the target directory). Three
# JetStream servers (R3, sync always) and two nodes on loopback ports
# 14231-14233, 16231-16233, 50191-50192; node A is preloaded with 300,000
# events, node B joins empty and catches up; then, per round, 4 readers on A
# alone, and 2 readers on each node at once. Results in docs/benchmarks.md.
set -euo pipefail
S=${1:-8}; Q=${2:-30000}; R=${3:-3}
TARGET=${CARGO_TARGET_DIR:-target}
BIN=$TARGET/release/skald
E=${ESBENCH:-/var/tmp/esbench-target/release/esbench}
NATS=${NATS_SERVER:-$TARGET/nats-venv/bin/nats-server}
W=$(mktemp -d)
CG=/sys/fs/cgroup/cpu
res() { grep RESULT | grep -o 'events_per_s=[0-9.]*' | cut -d= -f2; }
up() { for _ in $(seq 200); do curl -fsS "http://127.0.0.1:$1/health/live" >/dev/null 2>&1 && return; sleep 0.1; done; echo "no server on $1" >&2; exit 1; }
head_of() { curl -s "127.0.0.1:$1/info" | python3 -c 'import json,sys; print(json.load(sys.stdin)["head_position"])'; }
cpu() { awk '{print ($14+$15)}' "/proc/$1/stat"; }
PIDS=()
cleanup() { kill -TERM "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rmdir $CG/skald-a $CG/skald-b 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
routes="nats-route://127.0.0.1:16231, nats-route://127.0.0.1:16232, nats-route://127.0.0.1:16233"
for i in 1 2 3; do
  printf 'server_name: n%s\nlisten: 127.0.0.1:1423%s\njetstream { store_dir: "%s/n%s", sync_interval: always }\ncluster { name: skr, listen: 127.0.0.1:1623%s, routes: [%s] }\n' \
    "$i" "$i" "$W" "$i" "$i" "$routes" > "$W/n$i.conf"
  "$NATS" -c "$W/n$i.conf" >"$W/n$i.log" 2>&1 & PIDS+=($!)
done
C=nats://127.0.0.1:14231,nats://127.0.0.1:14232,nats://127.0.0.1:14233
"$BIN" serve --data-dir "$W/a" --listen 127.0.0.1:50191 --cluster $C >"$W/a.log" 2>&1 & A=$!; PIDS+=($A); up 50191
"$E" preload --events 300000 --target skald --url http://127.0.0.1:50191 >/dev/null 2>&1
"$BIN" serve --data-dir "$W/b" --listen 127.0.0.1:50192 --cluster $C >"$W/b.log" 2>&1 & B=$!; PIDS+=($B); up 50192
for _ in $(seq 600); do [ "$(head_of 50192)" == "$(head_of 50191)" ] && break; sleep 0.2; done
echo "heads: A $(head_of 50191), B $(head_of 50192)"
for n in a b; do mkdir -p $CG/skald-$n; echo 100000 > $CG/skald-$n/cpu.cfs_period_us; echo "$Q" > $CG/skald-$n/cpu.cfs_quota_us; done
echo $A > $CG/skald-a/cgroup.procs; echo $B > $CG/skald-b/cgroup.procs
echo "each node capped at $Q/100000 of a CPU; $S s per run (after 1 s of warm-up)"
for r in $(seq "$R"); do
  a0=$(cpu $A); one=$("$E" read-all --readers 4 --seconds "$S" --target skald --url http://127.0.0.1:50191 2>/dev/null | res); a1=$(cpu $A)
  b2=$(cpu $B)
  "$E" read-all --readers 2 --seconds "$S" --target skald --url http://127.0.0.1:50191 2>/dev/null | res > "$W/ra" & P=$!
  tb=$("$E" read-all --readers 2 --seconds "$S" --target skald --url http://127.0.0.1:50192 2>/dev/null | res); wait $P; ta=$(cat "$W/ra")
  a3=$(cpu $A); b3=$(cpu $B)
  echo "round $r: one node $one events/s (A $((a1-a0)) cs CPU) | two nodes A $ta + B $tb events/s (A $((a3-a1)) cs, B $((b3-b2)) cs) | two/one $(python3 -c "print(round(($ta+$tb)/$one,2))")"
done
