"""The container images' Dockerfiles, parsed with Docker's own parser (the `dockerfile` package)."""

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
