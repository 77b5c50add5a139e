#!/usr/bin/env bash
# Builds the real Kubernetes control plane the end-to-end tests start (envtest convention):
# etcd, kube-apiserver, kube-controller-manager and kubectl, and the node's parts that
# scripts/node.sh starts (kubelet, kube-scheduler, kube-proxy), in one `go build` from the Go
# modules pinned in tests/controlplane/go.mod, into a cache outside the clone. Prints the folder,
# for KUBEBUILDER_ASSETS. A second run with the same pins only checks the cache.
set -euo pipefail
cd "$(dirname "$0")/../tests/controlplane"

release=$(awk '$1 == "k8s.io/kubernetes" { print $2 }' go.mod)
pins=$(sha256sum go.mod go.sum etcd/main.go | sha256sum | cut -c1-12)
assets="${STREAMJOB_CACHE:-$HOME/.cache/streamjob}/kubebuilder-assets/$release-$pins"
binaries=(etcd kube-apiserver kube-controller-manager kubectl kubelet kube-scheduler kube-proxy)

all_built() {
  for binary in "${binaries[@]}"; do [ -x "$assets/$binary" ] || return 1; done
}

if ! all_built; then
  echo "== building the control plane $release into $assets (first run: several minutes)" >&2
  mkdir -p "$assets.partial"
  start=$(date +%s)
  # The version the binaries report (clients such as Helm and kubectl check it).
  version_flags=""
  for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    minor=${release#v1.}; minor=${minor%%.*}
    version_flags+=" -X $package.gitVersion=$release -X $package.gitMajor=1 -X $package.gitMinor=$minor"
    version_flags+=" -X $package.gitTreeState=clean"
  done
  GOFLAGS=-mod=readonly go build -ldflags="$version_flags" -o "$assets.partial/" \
    ./etcd k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kube-proxy >&2
  rm -rf "$assets" && mv "$assets.partial" "$assets"
  echo "== control plane built in $(( $(date +%s) - start )) s" >&2
fi
all_built || { echo "control plane build left no ${binaries[*]} in $assets" >&2; exit 1; }
echo "$assets"
