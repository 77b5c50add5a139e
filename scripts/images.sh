#!/usr/bin/env bash
# Builds the two container images without a Docker engine, as OCI archives with the chart's tags:
#   OUT/streamjob-operator.tar  ghcr.io/streamjob/streamjob-operator:<appVersion>
#   OUT/streamjob-worker.tar    ghcr.io/streamjob/streamjob-worker:<appVersion>
# Same recipe and filesystem layout as operator/Dockerfile and worker/Dockerfile: a
# distroless/cc-equivalent root (glibc, libgcc, OpenSSL, zlib, CA certificates, netbase, tzdata,
# a `nonroot` 65532 user; no shell, no package manager) assembled from Debian bookworm's .debs
# (`apt-get download`), one layer; then the binary in /usr/local/bin as a second layer; user
# 65532:65532, exec-form entrypoint, the metrics port exposed. Tools: umoci and skopeo (Debian
# packages), dpkg-deb, cargo.
#
#   bash scripts/images.sh [OUT]        (default OUT: $CARGO_TARGET_DIR/images or target/images)
#
# Binaries: as the Dockerfiles build them, the operator with `--profile dist --no-default-features`
# (what CI already builds for the memory benchmark) and the worker with `--release`.
# STREAMJOB_WORKER_PROFILE=dist builds the worker with the operator's profile instead: it reuses
# the dependencies the operator's dist build compiled (one crate and a whole-program link, instead
# of every dependency again under `release`); CI does that to save a release build (.ci/run).
# STREAMJOB_OPERATOR_BIN / STREAMJOB_WORKER_BIN use given binaries.
# STREAMJOB_IMAGE_REGISTRY (default ghcr.io/streamjob) and STREAMJOB_IMAGE_TAG (default the
# chart's appVersion) name the images.
set -euo pipefail
cd "$(dirname "$0")/.."
root_dir=$PWD

target="${CARGO_TARGET_DIR:-target}"
out="${1:-$target/images}"
mkdir -p "$out"
out=$(cd "$out" && pwd)
registry="${STREAMJOB_IMAGE_REGISTRY:-ghcr.io/streamjob}"
tag="${STREAMJOB_IMAGE_TAG:-$(awk -F'"' '/^appVersion:/ { print $2 }' charts/streamjob-operator/Chart.yaml)}"
[ -n "$tag" ] || { echo "images.sh: no appVersion in charts/streamjob-operator/Chart.yaml" >&2; exit 1; }
cache="${STREAMJOB_CACHE:-$HOME/.cache/streamjob}/debs"
# The runtime root's packages (distroless/cc-debian12's set, less libstdc++/libgomp, which nothing
# here links; the NEEDED check below fails the build if that changes).
packages=(libc6 libgcc-s1 libssl3 zlib1g ca-certificates netbase tzdata)

for tool in umoci skopeo dpkg-deb; do
  command -v "$tool" >/dev/null || {
    echo "images.sh: $tool is missing (apt-get install umoci skopeo)" >&2
    exit 1
  }
done

start=$(date +%s)
operator_bin="${STREAMJOB_OPERATOR_BIN:-}"
worker_bin="${STREAMJOB_WORKER_BIN:-}"
if [ -z "$operator_bin" ]; then
  echo "== cargo build --profile dist -p streamjob-operator --no-default-features" >&2
  cargo build --profile dist --locked -p streamjob-operator --no-default-features --bin streamjob-operator >&2
  operator_bin="$target/dist/streamjob-operator"
fi
if [ -z "$worker_bin" ]; then
  worker_profile="${STREAMJOB_WORKER_PROFILE:-release}"
  echo "== cargo build --profile $worker_profile -p streamjob-worker" >&2
  cargo build --profile "$worker_profile" --locked -p streamjob-worker --bin streamjob-worker >&2
  worker_bin="$target/$worker_profile/streamjob-worker"
fi
built=$(date +%s)

work=$(mktemp -d -t streamjob-images.XXXXXX)
trap 'rm -rf "$work"' EXIT

echo "== runtime root from Debian packages: ${packages[*]}" >&2
mkdir -p "$cache"
versions=()
for package in "${packages[@]}"; do
  version=$(apt-cache policy "$package" | awk '/Candidate:/ { print $2 }')
  [ -n "$version" ] && [ "$version" != "(none)" ] || {
    echo "images.sh: apt knows no $package (apt-get update?)" >&2
    exit 1
  }
  versions+=("$package=$version")
  if ! ls "$cache/${package}_"*"${version#*:}"_*.deb >/dev/null 2>&1; then
    (cd "$cache" && apt-get download -q "$package=$version" >&2 2>/dev/null) ||
      (cd "$cache" && apt-get download "$package=$version" >&2)
  fi
done
base="$work/base"
mkdir -p "$base"
for package_version in "${versions[@]}"; do
  package=${package_version%%=*}
  version=${package_version#*=}
  dpkg-deb -x "$(ls "$cache/${package}_"*"${version#*:}"_*.deb | head -n 1)" "$base"
done
# What the packages' maintainer scripts would do, and what distroless adds.
mkdir -p "$base/etc/ssl/certs" "$base/usr/lib/ssl" "$base/tmp" "$base/home/nonroot" "$base/root"
find "$base/usr/share/ca-certificates" -name '*.crt' | LC_ALL=C sort | xargs cat \
  >"$base/etc/ssl/certs/ca-certificates.crt"
ln -sfn /etc/ssl/certs "$base/usr/lib/ssl/certs"
ln -sfn /etc/ssl/certs/ca-certificates.crt "$base/usr/lib/ssl/cert.pem"
cat >"$base/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$base/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
tty:x:5:
staff:x:50:
nonroot:x:65532:
EOF
ln -sfn /usr/share/zoneinfo/UTC "$base/etc/localtime"
chmod 1777 "$base/tmp"
chmod 700 "$base/root"
chown 65532:65532 "$base/home/nonroot"
# Documentation and the packages' own metadata are not needed at run time.
rm -rf "$base/usr/share/doc" "$base/usr/share/man" "$base/usr/share/lintian" "$base/usr/share/info"
# Debian's merged /usr: the .debs ship /lib64/ld-linux-x86-64.so.2 and /lib/x86_64-linux-gnu
# under their historical paths; make sure the dynamic loader the binaries name is there.
for bin in "$operator_bin" "$worker_bin"; do
  [ -x "$bin" ] || { echo "images.sh: no binary $bin" >&2; exit 1; }
  interpreter=$(readelf -l "$bin" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
  [ -e "$base$interpreter" ] || { echo "images.sh: $bin needs $interpreter, not in the root" >&2; exit 1; }
  for needed in $(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    found=$(find "$base/lib" "$base/usr/lib" "$base/lib64" -name "$needed" 2>/dev/null | head -n 1)
    [ -n "$found" ] || {
      echo "images.sh: $bin needs $needed, which none of ${packages[*]} provides" >&2
      exit 1
    }
  done
done

layout="$work/layout"
umoci init --layout "$layout"
umoci new --image "$layout:base"
umoci unpack --image "$layout:base" "$work/base-bundle" >/dev/null
rmdir "$work/base-bundle/rootfs" && mv "$base" "$work/base-bundle/rootfs"
umoci repack --image "$layout:base" --history.created_by "debian bookworm: ${versions[*]}" \
  "$work/base-bundle"
rm -rf "$work/base-bundle"

build_image() {
  local component=$1 bin=$2 port=$3
  shift 3
  local name="streamjob-$component"
  local staged="$work/$component-bin"
  mkdir -p "$staged"
  install -m 0755 "$bin" "$staged/$name"
  umoci config --image "$layout:base" --tag "$name" \
    --config.user 65532:65532 --config.workingdir / \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --config.entrypoint "/usr/local/bin/$name" --config.exposedports "$port/tcp" \
    --clear config.cmd "$@" \
    --config.label "org.opencontainers.image.title=$name" \
    --config.label "org.opencontainers.image.version=$tag" \
    --config.label "org.opencontainers.image.source=https://github.com/streamjob/streamjob" \
    --config.label "org.opencontainers.image.base.name=debian:bookworm (${versions[*]})" \
    --no-history
  umoci insert --image "$layout:$name" --history.created_by "COPY $name /usr/local/bin/$name" \
    "$staged/$name" "/usr/local/bin/$name"
  rm -f "$out/$name.tar"
  skopeo copy --quiet "oci:$layout:$name" "oci-archive:$out/$name.tar:$registry/$name:$tag"
  echo "$out/$name.tar  $registry/$name:$tag  $(du -m "$out/$name.tar" | cut -f1) MiB" >&2
}
build_image operator "$operator_bin" 8080 --config.cmd run
build_image worker "$worker_bin" 9090

echo "== images built in $(( $(date +%s) - built )) s (binaries: $(( built - start )) s)" >&2
cat >&2 <<EOF
Push them to a registry (then set image.repository / workerImage in the chart to it):
  skopeo copy oci-archive:$out/streamjob-operator.tar docker://REGISTRY/streamjob-operator:$tag
  skopeo copy oci-archive:$out/streamjob-worker.tar docker://REGISTRY/streamjob-worker:$tag
Or load them into a local cluster (the chart's default names, imagePullPolicy IfNotPresent):
  kind load image-archive $out/streamjob-operator.tar     (and streamjob-worker.tar)
  minikube image load $out/streamjob-operator.tar         (and streamjob-worker.tar)
  ctr -n k8s.io images import $out/streamjob-operator.tar (containerd nodes)
EOF
echo "$out"
