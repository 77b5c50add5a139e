#!/usr/bin/env bash
# A real Apache Kafka cluster (KRaft, each node broker and controller) on loopback, for the
# tests. The jars come from Maven Central through tests/broker/pom.xml and are cached outside
# the clone.
#
#   scripts/kafka-broker.sh start DIR [NODES]   format and start NODES (default 1) nodes in DIR;
#                                               prints STREAMJOB_TEST_BOOTSTRAP=host:port,...
#   scripts/kafka-broker.sh stop DIR            stop them
#   scripts/kafka-broker.sh libs                resolve the jars; prints their folder
#
# The consumer group protocol (KIP-848) gets a 250 ms heartbeat and a 10 s session (Kafka's
# defaults: 5 s and 45 s), so that the workers' `--group-protocol auto` takes it;
# STREAMJOB_KAFKA_CONSUMER_HEARTBEAT_MS=5000 gives Kafka's heartbeat back (and auto the classic one).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
pom="$root/tests/broker/pom.xml"

libs() {
  local version pins dir
  version=$(sed -n 's|.*<kafka.version>\(.*\)</kafka.version>.*|\1|p' "$pom")
  pins=$(sha256sum "$pom" | cut -c1-12)
  dir="${STREAMJOB_CACHE:-$HOME/.cache/streamjob}/kafka/$version-$pins"
  if [ ! -f "$dir/complete" ]; then
    echo "== resolving Apache Kafka $version from Maven Central into $dir" >&2
    rm -rf "$dir" && mkdir -p "$dir/libs"
    mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$dir/libs" >&2
    touch "$dir/complete"
  fi
  echo "$dir/libs"
}

# N distinct free loopback ports below the kernel's ephemeral range, so that no outgoing
# connection takes one while the node that owns it is down (the fault suite kills a node and
# restarts it on its ports).
free_ports() {
  python3 - "$1" <<'PY'
import random, socket, sys
wanted = int(sys.argv[1])
try:
    first_ephemeral = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except (OSError, ValueError, IndexError):
    first_ephemeral = 32768
ports = list(range(10000, first_ephemeral))
random.shuffle(ports)
chosen = []
for port in ports:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
    chosen.append(port)
    if len(chosen) == wanted:
        break
if len(chosen) < wanted:
    sys.exit(f"no {wanted} free ports between 10000 and {first_ephemeral}")
print(" ".join(map(str, chosen)))
PY
}

start() {
  local dir="$1" nodes="${2:-1}" classpath cluster_id voters="" bootstrap="" replication
  classpath="$(libs)/*"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  # Kafka's own form (URL-safe base64 of a UUID); passed as --cluster-id=ID, since one that
  # starts with "-" would read as an option.
  cluster_id=$(python3 -c 'import base64, uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')
  replication=$(( nodes < 3 ? nodes : 3 ))
  local -a client_ports controller_ports ports
  local port_list
  port_list=$(free_ports $((2 * nodes)))
  read -r -a ports <<<"$port_list"
  for node in $(seq 1 "$nodes"); do
    client_ports[node]=${ports[2 * node - 2]}
    controller_ports[node]=${ports[2 * node - 1]}
    voters+="${voters:+,}$node@127.0.0.1:${controller_ports[node]}"
    bootstrap+="${bootstrap:+,}127.0.0.1:${client_ports[node]}"
  done
  for node in $(seq 1 "$nodes"); do
    local home="$dir/node-$node"
    rm -rf "$home" && mkdir -p "$home"
    cat >"$home/server.properties" <<PROPERTIES
process.roles=broker,controller
node.id=$node
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:${client_ports[node]},CONTROLLER://127.0.0.1:${controller_ports[node]}
advertised.listeners=PLAINTEXT://127.0.0.1:${client_ports[node]}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$home/data
num.partitions=1
default.replication.factor=$replication
min.insync.replicas=$(( replication > 1 ? 2 : 1 ))
offsets.topic.replication.factor=$replication
transaction.state.log.replication.factor=$replication
transaction.state.log.min.isr=$(( replication > 1 ? 2 : 1 ))
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
group.consumer.heartbeat.interval.ms=${STREAMJOB_KAFKA_CONSUMER_HEARTBEAT_MS:-250}
group.consumer.min.heartbeat.interval.ms=100
group.consumer.session.timeout.ms=10000
group.consumer.min.session.timeout.ms=1000
auto.create.topics.enable=false
PROPERTIES
    java -cp "$classpath" kafka.tools.StorageTool format --ignore-formatted --cluster-id="$cluster_id" \
      -c "$home/server.properties" >"$home/format.log" 2>&1 ||
      { cat "$home/format.log" >&2; exit 1; }
    KAFKA_NODE_HOME="$home" nohup java -Xms256m -Xmx768m -XX:+UseG1GC \
      -Dlog4j2.configurationFile="$root/tests/broker/log4j2.yaml" -cp "$classpath" \
      kafka.Kafka "$home/server.properties" >"$home/broker.log" 2>&1 &
    echo $! >"$home/pid"
  done
  for node in $(seq 1 "$nodes"); do
    local home="$dir/node-$node" waited=0
    until grep -q "Kafka Server started" "$home/broker.log" 2>/dev/null; do
      if ! kill -0 "$(cat "$home/pid")" 2>/dev/null || [ $waited -ge 120 ]; then
        echo "Kafka node $node did not start; its log ($home/broker.log) ends:" >&2
        tail -20 "$home/broker.log" >&2
        stop "$dir"
        exit 1
      fi
      sleep 1
      waited=$(( waited + 1 ))
    done
  done
  echo "$bootstrap" >"$dir/bootstrap"
  echo "STREAMJOB_TEST_BOOTSTRAP=$bootstrap"
}

stop() {
  local dir="$1"
  for pid_file in "$dir"/node-*/pid; do
    [ -f "$pid_file" ] || continue
    kill "$(cat "$pid_file")" 2>/dev/null || true
  done
  for pid_file in "$dir"/node-*/pid; do
    [ -f "$pid_file" ] || continue
    local pid waited=0
    pid=$(cat "$pid_file")
    while kill -0 "$pid" 2>/dev/null && [ $waited -lt 30 ]; do sleep 1; waited=$(( waited + 1 )); done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pid_file"
  done
}

case "${1:-}" in
  start) start "${2:?start DIR [NODES]}" "${3:-1}" ;;
  stop) stop "${2:?stop DIR}" ;;
  libs) libs ;;
  *) echo "usage: $0 start DIR [NODES] | stop DIR | libs" >&2; exit 2 ;;
esac
