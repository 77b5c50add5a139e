#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this machine, for the end-to-end test that runs the
# chart's operator and the workers as pods (tests/tests/real_node.rs). Needs root, the Debian
# packages containerd, runc, containernetworking-plugins, umoci, iptables (.ci/run installs them),
# gcc with a static libc (the pause image), and the binaries of scripts/controlplane.sh.
#
#   scripts/node.sh start DIR      start everything with its state in DIR; prints KEY=VALUE lines:
#                                  KUBECONFIG (admin), STREAMJOB_NODE_BOOTSTRAP (Kafka, as pods
#                                  and the host reach it), STREAMJOB_NODE_GATEWAY
#   scripts/node.sh import DIR ARCHIVE...   import OCI archives into the node's containerd
#   scripts/node.sh restart-containerd DIR   stop containerd (SIGTERM: its shims and containers
#                                  keep running) and start it again on the same state, as a
#                                  package upgrade or a crash and systemd's restart would
#   scripts/node.sh stop DIR       stop it all and undo what start did on the host
#
# The parts: etcd, kube-apiserver (listening on and advertising the bridge's gateway address, so
# pods reach it through the `kubernetes` Service; ServiceAccount admission on, so pods get their
# token), kube-controller-manager, kube-scheduler, containerd (own root, state and socket under
# DIR; runc through a wrapper, see below) with the CNI `bridge` plugin on a private /24, the
# kubelet (cgroupfs, cgroup v1 allowed), kube-proxy (iptables mode), and an Apache Kafka broker
# (scripts/kafka-broker.sh's jars) listening on the gateway address. Pods reach the bridge's /24
# and this machine only: nothing is routed beyond the host (IP forwarding stays as it is, and a
# FORWARD rule drops anything from the /24 to elsewhere). One node per machine at a time (the
# bridge's name and the /24 are fixed; STREAMJOB_NODE_SUBNET=10.a.b changes the /24, and the
# Service range is 10.a.(b+1).0/24).
#
# Host quirk: where root lacks CAP_SYS_RESOURCE (this kind of VM), runc cannot set the negative
# oom_score_adj the kubelet asks for pause containers ("can't get final child's PID from pipe:
# EOF"); containerd runs runc through DIR/runc-wrapper, which lowers a negative
# process.oomScoreAdj in the bundle's config.json to 0 first. Pods' own values are untouched.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bridge=sjnode0
subnet="${STREAMJOB_NODE_SUBNET:-10.213.37}"
gateway="$subnet.1"
service_subnet="${subnet%.*}.$(( ${subnet##*.} + 1 ))"
node_name=streamjob-node
admin_token=streamjob-node-admin-token
pause_image=streamjob.local/pause:3.10

log() { echo "== node: $*" >&2; }
fail() { echo "node.sh: $*" >&2; exit 1; }

# N free TCP ports on the gateway address, below the ephemeral range.
free_ports() {
  python3 - "$1" "$gateway" <<'PY'
import random, socket, sys
wanted, host = int(sys.argv[1]), sys.argv[2]
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
            s.bind((host, port))
            s.close()
            with socket.socket() as t:
                t.bind(("127.0.0.1", port))
        except OSError:
            continue
    chosen.append(port)
    if len(chosen) == wanted:
        break
if len(chosen) < wanted:
    sys.exit(f"no {wanted} free ports")
print(" ".join(map(str, chosen)))
PY
}

# Starts "$@" in the background with its output in DIR/logs/NAME.log and its pid in DIR/pids/NAME.
spawn() {
  local dir=$1 name=$2
  shift 2
  nohup "$@" >"$dir/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$dir/pids/$name"
}

# Waits up to SECONDS for COMMAND to succeed; on timeout prints the log's tail and fails.
wait_for() {
  local dir=$1 what=$2 seconds=$3 logname=$4
  shift 4
  local deadline=$(( $(date +%s) + seconds ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "node.sh: $what not within ${seconds}s; $dir/logs/$logname.log ends:" >&2
      tail -n 25 "$dir/logs/$logname.log" >&2 || true
      return 1
    fi
    sleep 0.5
  done
}

assets() {
  local assets="${KUBEBUILDER_ASSETS:-}"
  [ -n "$assets" ] || assets=$(bash "$root/scripts/controlplane.sh")
  for binary in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    [ -x "$assets/$binary" ] || fail "$assets has no $binary (scripts/controlplane.sh builds it)"
  done
  echo "$assets"
}

# The pause image, from build/pause/linux/pause.c of the pinned k8s.io/kubernetes module, as an
# OCI archive cached beside the control plane's binaries.
pause_archive() {
  local assets=$1 archive="$1/pause.tar"
  [ -f "$archive" ] && { echo "$archive"; return; }
  local release source work
  release=$(basename "$assets"); release=${release%%-*}
  source=$(cd "$root/tests/controlplane" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
  [ -f "$source" ] || fail "no $source (go mod download in tests/controlplane)"
  work=$(mktemp -d)
  mkdir -p "$work/rootfs"
  gcc -Os -Wall -Werror -static -DVERSION="\"$release-streamjob\"" -o "$work/rootfs/pause" "$source" ||
    fail "gcc -static pause.c (needs libc6-dev)"
  strip "$work/rootfs/pause"
  umoci init --layout "$work/layout" && umoci new --image "$work/layout:pause"
  umoci insert --image "$work/layout:pause" "$work/rootfs/pause" /pause
  umoci config --image "$work/layout:pause" --config.user 65535:65535 --config.entrypoint /pause --no-history
  skopeo copy --quiet "oci:$work/layout:pause" "oci-archive:$archive.partial:$pause_image"
  mv "$archive.partial" "$archive"
  rm -rf "$work"
  echo "$archive"
}

write_configs() {
  local dir=$1 api_port=$2 etcd_port=$3 etcd_peer=$4 kubelet_port=$5 proxy_health=$6 proxy_metrics=$7
  openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
  echo "$admin_token,admin,admin,system:masters" >"$dir/tokens.csv"
  cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: node
  cluster:
    server: https://$gateway:$api_port
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: $admin_token
contexts:
- name: node
  context:
    cluster: node
    user: admin
    namespace: default
current-context: node
EOF
  cat >"$dir/runc-wrapper" <<'EOF'
#!/bin/sh
# runc, with a negative process.oomScoreAdj lowered to 0 in the bundle's config.json first: this
# host's root lacks CAP_SYS_RESOURCE, which a negative oom_score_adj needs (scripts/node.sh).
bundle=""
previous=""
for argument in "$@"; do
  [ "$previous" = "--bundle" ] || [ "$previous" = "-b" ] && bundle=$argument
  previous=$argument
done
if [ -n "$bundle" ] && [ -f "$bundle/config.json" ]; then
  sed -i -E 's/"oomScoreAdj": ?-[0-9]+/"oomScoreAdj":0/' "$bundle/config.json"
fi
exec runc "$@"
EOF
  chmod +x "$dir/runc-wrapper"
  mkdir -p "$dir/cni/net.d"
  cat >"$dir/cni/net.d/10-streamjob.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "streamjob-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$dir/cni/ipam",
        "ranges": [[{ "subnet": "$subnet.0/24", "rangeStart": "$subnet.10", "gateway": "$gateway" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
  cat >"$dir/containerd.toml" <<EOF
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
plugin_dir = ""
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "$dir/containerd/containerd.sock"
[ttrpc]
  address = "$dir/containerd/containerd.sock.ttrpc"
[debug]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_image"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$dir/runc-wrapper"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/net.d"
EOF
  cat >"$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$dir/containerd/containerd.sock
address: $gateway
port: $kubelet_port
readOnlyPort: 0
healthzPort: 0
# Serves logs and exec to the API server, which presents no client certificate here; it listens
# on the gateway address only (reachable from this machine and the node's pods).
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
podLogsDir: $dir/pod-logs
failSwapOn: false
resolvConf: /etc/resolv.conf
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
maxPods: 40
EOF
  cat >"$dir/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
hostnameOverride: $node_name
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:$proxy_health
metricsBindAddress: 127.0.0.1:$proxy_metrics
clusterCIDR: $subnet.0/24
clientConnection:
  kubeconfig: $dir/kubeconfig
conntrack:
  maxPerCore: 0
EOF
}

start_kafka() {
  local dir=$1 port=$2 controller=$3 classpath cluster_id home="$1/kafka"
  classpath="$(bash "$root/scripts/kafka-broker.sh" libs)/*"
  mkdir -p "$home"
  cat >"$home/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller
listeners=PLAINTEXT://$gateway:$port,CONTROLLER://127.0.0.1:$controller
advertised.listeners=PLAINTEXT://$gateway:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$home/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
group.consumer.heartbeat.interval.ms=250
group.consumer.min.heartbeat.interval.ms=100
group.consumer.session.timeout.ms=10000
group.consumer.min.session.timeout.ms=1000
auto.create.topics.enable=false
EOF
  cluster_id=$(python3 -c 'import base64, uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')
  java -cp "$classpath" kafka.tools.StorageTool format --ignore-formatted --cluster-id="$cluster_id" \
    -c "$home/server.properties" >"$dir/logs/kafka-format.log" 2>&1 ||
    { cat "$dir/logs/kafka-format.log" >&2; return 1; }
  KAFKA_NODE_HOME="$home" spawn "$dir" kafka java -Xms256m -Xmx768m -XX:+UseG1GC \
    -Dlog4j2.configurationFile="$root/tests/broker/log4j2.yaml" -cp "$classpath" \
    kafka.Kafka "$home/server.properties"
}

kubectl_() { "$assets/kubectl" --kubeconfig "$dir/kubeconfig" "$@"; }

start() {
  dir=$1
  [ "$(id -u)" = 0 ] || fail "needs root (containerd, the kubelet, network setup)"
  for tool in containerd runc ctr iptables ip gcc umoci skopeo openssl curl java; do
    command -v "$tool" >/dev/null || fail "$tool is missing (.ci/run installs it)"
  done
  [ -x /usr/lib/cni/bridge ] || fail "no /usr/lib/cni/bridge (apt-get install containernetworking-plugins)"
  ip link show "$bridge" >/dev/null 2>&1 && fail "bridge $bridge exists: another node runs (scripts/node.sh stop DIR)"
  if ip route show | grep -v "^default" | grep -q "^${subnet%.*}\.\(${subnet##*.}\|$(( ${subnet##*.} + 1 ))\)\."; then
    fail "$subnet.0/24 or $service_subnet.0/24 is routed here already (set STREAMJOB_NODE_SUBNET)"
  fi
  assets=$(assets)
  local pause
  pause=$(pause_archive "$assets")
  mkdir -p "$dir/logs" "$dir/pids"
  dir=$(cd "$dir" && pwd)
  echo "$assets" >"$dir/assets"
  local started
  started=$(date +%s)

  log "bridge $bridge $gateway/24 (pods), Services on $service_subnet.0/24"
  ip link add "$bridge" type bridge
  ip addr add "$gateway/24" dev "$bridge"
  ip link set "$bridge" up
  echo "$bridge" >"$dir/bridge"
  iptables -w -I FORWARD -s "$subnet.0/24" ! -d "$subnet.0/24" -j DROP \
    -m comment --comment "streamjob-node: nothing routed beyond the host"
  echo "$subnet.0/24" >"$dir/forward-rule"

  local ports
  read -r -a ports <<<"$(free_ports 9)"
  local api_port=${ports[0]} etcd_port=${ports[1]} etcd_peer=${ports[2]} kubelet_port=${ports[3]}
  local proxy_health=${ports[4]} proxy_metrics=${ports[5]} kafka_port=${ports[6]} kafka_controller=${ports[7]}
  write_configs "$dir" "$api_port" "$etcd_port" "$etcd_peer" "$kubelet_port" "$proxy_health" "$proxy_metrics"

  log "kafka on $gateway:$kafka_port"
  start_kafka "$dir" "$kafka_port" "$kafka_controller"

  log "etcd, kube-apiserver on $gateway:$api_port"
  spawn "$dir" etcd "$assets/etcd" --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "default=http://127.0.0.1:$etcd_peer" --unsafe-no-fsync --log-level warn
  spawn "$dir" kube-apiserver "$assets/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$etcd_port" --cert-dir="$dir/certs" \
    --secure-port="$api_port" --bind-address="$gateway" --advertise-address="$gateway" \
    --service-cluster-ip-range="$service_subnet.0/24" --allow-privileged=true \
    --authorization-mode=Node,RBAC --token-auth-file="$dir/tokens.csv" \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$dir/sa.key" --service-account-signing-key-file="$dir/sa.key" \
    --kubelet-preferred-address-types=InternalIP
  wait_for "$dir" "kube-apiserver ready" 120 kube-apiserver \
    curl -skf --max-time 2 -H "Authorization: Bearer $admin_token" "https://$gateway:$api_port/readyz"

  log "kube-controller-manager, kube-scheduler"
  spawn "$dir" kube-controller-manager "$assets/kube-controller-manager" \
    --kubeconfig="$dir/kubeconfig" --leader-elect=false --secure-port=0 \
    --use-service-account-credentials=false --service-account-private-key-file="$dir/sa.key" \
    --root-ca-file="$dir/certs/apiserver.crt" \
    --controllers='*,-nodeipam,-ttl,-bootstrap-signer-controller,-token-cleaner-controller'
  spawn "$dir" kube-scheduler "$assets/kube-scheduler" \
    --kubeconfig="$dir/kubeconfig" --authentication-kubeconfig="$dir/kubeconfig" \
    --authorization-kubeconfig="$dir/kubeconfig" --leader-elect=false --secure-port=0

  log "containerd"
  mkdir -p "$dir/containerd"
  spawn "$dir" containerd containerd --config "$dir/containerd.toml"
  wait_for "$dir" "containerd serving" 60 containerd \
    ctr --address "$dir/containerd/containerd.sock" version
  ctr --address "$dir/containerd/containerd.sock" -n k8s.io images import "$pause" >/dev/null

  log "kubelet, kube-proxy"
  spawn "$dir" kubelet "$assets/kubelet" --config="$dir/kubelet.yaml" \
    --kubeconfig="$dir/kubeconfig" --root-dir="$dir/kubelet" --cert-dir="$dir/kubelet/pki" \
    --node-ip="$gateway" --hostname-override="$node_name"
  spawn "$dir" kube-proxy "$assets/kube-proxy" --config="$dir/kube-proxy.yaml"
  wait_for "$dir" "node $node_name Ready" 120 kubelet \
    kubectl_ wait --for=condition=Ready "node/$node_name" --timeout=2s
  wait_for "$dir" "the default ServiceAccount" 60 kube-controller-manager \
    kubectl_ get serviceaccount default -n default
  wait_for "$dir" "the kubernetes Service's endpoints" 60 kube-apiserver \
    sh -c "'$assets/kubectl' --kubeconfig '$dir/kubeconfig' get endpointslices -n default \
      -l kubernetes.io/service-name=kubernetes -o jsonpath='{.items[0].endpoints[0].addresses[0]}' | grep -qx '$gateway'"
  wait_for "$dir" "kafka started" 120 kafka grep -q "Kafka Server started" "$dir/logs/kafka.log"
  log "ready in $(( $(date +%s) - started )) s"
  echo "KUBECONFIG=$dir/kubeconfig"
  echo "STREAMJOB_NODE_BOOTSTRAP=$gateway:$kafka_port"
  echo "STREAMJOB_NODE_GATEWAY=$gateway"
}

import() {
  dir=$1
  shift
  for archive in "$@"; do
    ctr --address "$dir/containerd/containerd.sock" -n k8s.io images import "$archive" >&2
  done
}

restart_containerd() {
  dir=$(cd "$1" && pwd)
  [ -f "$dir/pids/containerd" ] || fail "no containerd runs for $dir"
  stop_pid "$dir/pids/containerd"
  echo "== node.sh: containerd restarted at $(date -u +%FT%TZ)" >>"$dir/logs/containerd.log"
  nohup containerd --config "$dir/containerd.toml" >>"$dir/logs/containerd.log" 2>&1 </dev/null &
  echo $! >"$dir/pids/containerd"
  wait_for "$dir" "containerd serving again" 60 containerd \
    ctr --address "$dir/containerd/containerd.sock" version
}

stop_pid() {
  local pid_file=$1 signal=${2:-TERM} pid waited=0
  [ -f "$pid_file" ] || return 0
  pid=$(cat "$pid_file")
  kill "-$signal" "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && [ $waited -lt 40 ]; do sleep 0.25; waited=$(( waited + 1 )); done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pid_file"
}

stop() {
  dir=$(cd "$1" && pwd)
  # The kubelet first (it would restart what goes away), then every container and shim of this
  # containerd (found by its socket in their command lines), then the rest.
  stop_pid "$dir/pids/kubelet"
  stop_pid "$dir/pids/kube-proxy"
  local socket="$dir/containerd/containerd.sock" pid
  for proc in /proc/[0-9]*; do
    pid=${proc#/proc/}
    if { tr '\0' ' ' <"$proc/cmdline"; } 2>/dev/null | grep -q -- "-address $socket "; then
      # A shim: its container processes are its children.
      pkill -KILL -P "$pid" 2>/dev/null || true
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for name in containerd kube-scheduler kube-controller-manager kube-apiserver etcd kafka; do
    stop_pid "$dir/pids/$name"
  done
  # Mounts under DIR (container root filesystems, pod volumes), deepest first.
  awk -v dir="$dir/" 'index($2, dir) == 1 { print $2 }' /proc/self/mounts | sort -r |
    while read -r mount; do umount -l "$mount" 2>/dev/null || true; done
  # The kubelet's cgroups (cgroupfs driver): kubepods in every hierarchy, leaves first.
  for hierarchy in /sys/fs/cgroup/*/; do
    [ -d "$hierarchy/kubepods" ] || continue
    find "$hierarchy/kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  if [ -f "$dir/forward-rule" ]; then
    iptables -w -D FORWARD -s "$(cat "$dir/forward-rule")" ! -d "$(cat "$dir/forward-rule")" -j DROP \
      -m comment --comment "streamjob-node: nothing routed beyond the host" 2>/dev/null || true
    rm -f "$dir/forward-rule"
  fi
  # kube-proxy's chains.
  if [ -f "$dir/assets" ] && [ -x "$(cat "$dir/assets")/kube-proxy" ]; then
    "$(cat "$dir/assets")/kube-proxy" --cleanup >"$dir/logs/kube-proxy-cleanup.log" 2>&1 || true
  fi
  # The kubelet's own chains (KUBE-FIREWALL and the canaries), which nothing else here uses.
  if [ -f "$dir/assets" ]; then
    for tables in iptables ip6tables; do
      command -v "$tables" >/dev/null || continue
      for table in filter nat mangle; do
        for chain in INPUT OUTPUT; do
          while "$tables" -w -t "$table" -D "$chain" -j KUBE-FIREWALL 2>/dev/null; do :; done
        done
        for chain in KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT KUBE-PROXY-CANARY; do
          "$tables" -w -t "$table" -F "$chain" 2>/dev/null || true
          "$tables" -w -t "$table" -X "$chain" 2>/dev/null || true
        done
      done
    done
  fi
  if [ -f "$dir/bridge" ]; then
    ip link del "$(cat "$dir/bridge")" 2>/dev/null || true
    rm -f "$dir/bridge"
  fi
}

case "${1:-}" in
  start) start "${2:?start DIR}" ;;
  import) import "${2:?import DIR ARCHIVE...}" "${@:3}" ;;
  restart-containerd) restart_containerd "${2:?restart-containerd DIR}" ;;
  stop) stop "${2:?stop DIR}" ;;
  *) echo "usage: $0 start DIR | import DIR ARCHIVE... | restart-containerd DIR | stop DIR" >&2; exit 2 ;;
esac
