"""The container images' Dockerfiles, parsed with Docker's own parser (the `dockerfile` package)."""

import json
import os
import pathlib
import shutil
import subprocess

import dockerfile
import pytest


@pytest.mark.parametrize("component", ["operator", "worker"])
def test_dockerfile_is_multi_stage_release_non_root_and_shell_free(root, component):
    commands = dockerfile.parse_file(str(root / component / "Dockerfile"))
    stages = [c for c in commands if c.cmd == "FROM"]
    assert len(stages) >= 2, "multi-stage: a build stage and a runtime stage"
    runtime_start = commands.index(stages[-1])
    runtime = commands[runtime_start:]
    build = commands[:runtime_start]
    optimised = ("cargo build --release --locked", "cargo build --profile dist --locked")
    assert any(c.cmd == "RUN" and any(o in c.value[0] for o in optimised) for c in build)
    assert "distroless" in stages[-1].value[0], "minimal runtime image without a shell"
    users = [c for c in runtime if c.cmd == "USER"]
    assert users and users[-1].value[0].split(":")[0].isdigit(), "numeric USER"
    assert users[-1].value[0].split(":")[0] != "0"
    entrypoint = [c for c in runtime if c.cmd == "ENTRYPOINT"]
    assert entrypoint and entrypoint[-1].json, "exec-form ENTRYPOINT: no shell needed at run time"
    assert entrypoint[-1].value[0] == f"/usr/local/bin/streamjob-{component}"
    assert not any(c.cmd == "RUN" for c in runtime), "nothing runs in the runtime stage"


def test_shipped_images_carry_no_embedded_broker(root):
    """`dev` (the worker crate and librdkafka's mock cluster) stays out of the operator image,
    `dev-broker` out of the worker image."""
    builds = {
        component: " ".join(
            c.value[0] for c in dockerfile.parse_file(str(root / component / "Dockerfile")) if c.cmd == "RUN"
        )
        for component in ("operator", "worker")
    }
    assert "-p streamjob-operator --no-default-features" in builds["operator"]
    assert "dev-broker" not in builds["worker"] and "--all-features" not in builds["worker"]


# The images scripts/images.sh builds without a Docker engine (OCI archives): their config and
# filesystem match the Dockerfiles, and the binary starts in them under runc.

IMAGES = {"operator": {"port": "8080/tcp", "cmd": ["run"]}, "worker": {"port": "9090/tcp", "cmd": None}}


def _real_part_missing(what):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} (CI=true: a test that needs it fails instead of skipping)")
    pytest.skip(what)


@pytest.fixture(scope="session")
def images_dir(root, tmp_path_factory):
    """STREAMJOB_IMAGES, or the images built now by scripts/images.sh."""
    for tool in ("umoci", "skopeo"):
        if shutil.which(tool) is None:
            _real_part_missing(f"no {tool} to build or read the images (apt-get install umoci skopeo)")
    if os.environ.get("STREAMJOB_IMAGES"):
        return pathlib.Path(os.environ["STREAMJOB_IMAGES"])
    out = tmp_path_factory.mktemp("images")
    subprocess.run(["bash", str(root / "scripts" / "images.sh"), str(out)], check=True, stdout=subprocess.DEVNULL)
    return out


def _dockerfile_runtime(root, component):
    commands = dockerfile.parse_file(str(root / component / "Dockerfile"))
    stages = [i for i, c in enumerate(commands) if c.cmd == "FROM"]
    return commands[stages[-1]:]


def _unpack(archive, work):
    """The image as an OCI runtime bundle (umoci writes config.json from the image config)."""
    layout = work / "layout"
    subprocess.run(["skopeo", "copy", "--quiet", f"oci-archive:{archive}", f"oci:{layout}:image"], check=True)
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:image", str(work / "bundle")], check=True,
                   stdout=subprocess.DEVNULL)
    return work / "bundle"


@pytest.mark.parametrize("component", sorted(IMAGES))
def test_image_config_matches_the_dockerfile(root, images_dir, component):
    archive = images_dir / f"streamjob-{component}.tar"
    inspected = subprocess.run(["skopeo", "inspect", "--config", f"oci-archive:{archive}"], check=True,
                               capture_output=True, text=True)
    config = json.loads(inspected.stdout)["config"]
    runtime = _dockerfile_runtime(root, component)
    user = [c for c in runtime if c.cmd == "USER"][-1].value[0]
    entrypoint = [c for c in runtime if c.cmd == "ENTRYPOINT"][-1].value
    exposed = {f"{c.value[0]}/tcp" if "/" not in c.value[0] else c.value[0] for c in runtime if c.cmd == "EXPOSE"}
    cmd = [c.value for c in runtime if c.cmd == "CMD"]
    assert config["User"] == user == "65532:65532"
    assert config["Entrypoint"] == list(entrypoint) == [f"/usr/local/bin/streamjob-{component}"]
    assert set(config["ExposedPorts"]) == exposed == {IMAGES[component]["port"]}
    assert config.get("Cmd") == (list(cmd[-1]) if cmd else None) == IMAGES[component]["cmd"]
    # The archive names the image as the chart does: REGISTRY/streamjob-COMPONENT:appVersion.
    index = json.loads(subprocess.run(["tar", "-xOf", str(archive), "index.json"], check=True,
                                      capture_output=True, text=True).stdout)
    names = [m.get("annotations", {}).get("org.opencontainers.image.ref.name") for m in index["manifests"]]
    chart = (root / "charts" / "streamjob-operator" / "Chart.yaml").read_text()
    app_version = next(line.split('"')[1] for line in chart.splitlines() if line.startswith("appVersion:"))
    assert names == [f"ghcr.io/streamjob/streamjob-{component}:{app_version}"]


@pytest.mark.parametrize("component", sorted(IMAGES))
def test_image_filesystem_is_distroless_like(images_dir, tmp_path, component):
    rootfs = _unpack(images_dir / f"streamjob-{component}.tar", tmp_path) / "rootfs"
    binary = rootfs / "usr" / "local" / "bin" / f"streamjob-{component}"
    assert binary.is_file() and os.access(binary, os.X_OK)
    assert "nonroot:x:65532:65532:" in (rootfs / "etc" / "passwd").read_text()
    assert (rootfs / "home" / "nonroot").stat().st_uid == 65532
    assert "BEGIN CERTIFICATE" in (rootfs / "etc" / "ssl" / "certs" / "ca-certificates.crt").read_text()
    for library in ("libc.so.6", "libgcc_s.so.1", "libssl.so.3", "libcrypto.so.3", "libz.so.1"):
        assert list(rootfs.glob(f"usr/lib/x86_64-linux-gnu/{library}")) or list(
            rootfs.glob(f"lib/x86_64-linux-gnu/{library}")), library
    for absent in ("bin/sh", "usr/bin/sh", "bin/bash", "usr/bin/apt-get", "usr/bin/dpkg"):
        assert not (rootfs / absent).exists(), f"/{absent} in a shell-free image"


@pytest.mark.parametrize("component", sorted(IMAGES))
def test_binary_starts_in_the_image_under_runc(images_dir, tmp_path, component):
    if shutil.which("runc") is None or os.geteuid() != 0:
        _real_part_missing("running an image needs runc and root")
    bundle = _unpack(images_dir / f"streamjob-{component}.tar", tmp_path)
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text())
    assert config["process"]["user"]["uid"] == 65532 and config["process"]["user"]["gid"] == 65532
    assert config["process"]["args"][0] == f"/usr/local/bin/streamjob-{component}"
    # As the chart's restricted security context runs it: read-only root, no capabilities.
    config["process"]["args"] = [config["process"]["args"][0], "--help"]
    config["process"]["terminal"] = False
    config["process"]["capabilities"] = {key: [] for key in ("bounding", "effective", "permitted", "ambient")}
    config["process"]["noNewPrivileges"] = True
    config["root"]["readonly"] = True
    config_path.write_text(json.dumps(config))
    container = f"streamjob-image-test-{component}-{os.getpid()}"
    run = subprocess.run(["runc", "--root", str(tmp_path / "runc"), "run", "--bundle", str(bundle), container],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr
    assert "Usage:" in run.stdout and f"streamjob-{component}" in run.stdout, run.stdout
