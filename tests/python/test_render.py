"""`streamjob-operator render` and `crd` produce objects a Kubernetes API server accepts."""

import subprocess

import pytest
import yaml

from k8s import assert_valid, load_all, pod_spec_of, restricted_violations

EXAMPLES = ["wordcount.yaml", "clicks-per-user.yaml", "passthrough-exactly-once.yaml", "sliding-average.yaml"]


def render(operator_bin, root, example):
    result = subprocess.run(
        [str(operator_bin), "render", "-f", str(root / "examples" / example)],
        capture_output=True, text=True, check=True,
    )
    return load_all(result.stdout)


def test_crd_is_a_valid_v1_crd(operator_bin, root):
    printed = subprocess.run([str(operator_bin), "crd"], capture_output=True, text=True, check=True).stdout
    assert printed == (root / "crds" / "streamjob.yaml").read_text()
    (crd,) = load_all(printed)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert_valid(crd)


@pytest.mark.parametrize("example", EXAMPLES)
def test_render_prints_four_valid_children(operator_bin, root, example):
    objects = render(operator_bin, root, example)
    assert [o["kind"] for o in objects] == ["ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget"]
    for obj in objects:
        assert_valid(obj)
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "streamjob-worker"
        assert labels["app.kubernetes.io/managed-by"] == "streamjob-operator"


@pytest.mark.parametrize("example", EXAMPLES)
def test_worker_pods_meet_the_restricted_standard(operator_bin, root, example):
    statefulset = next(o for o in render(operator_bin, root, example) if o["kind"] == "StatefulSet")
    pod_spec = pod_spec_of(statefulset)
    assert restricted_violations(pod_spec) == []
    assert pod_spec["automountServiceAccountToken"] is False
    container = pod_spec["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "checksum/config" in statefulset["spec"]["template"]["metadata"]["annotations"]


def test_credentials_stay_in_the_secret(operator_bin, root):
    objects = render(operator_bin, root, "passthrough-exactly-once.yaml")
    config_map = next(o for o in objects if o["kind"] == "ConfigMap")
    worker_config = yaml.safe_load(config_map["data"]["job.yaml"])
    auth = worker_config["spec"]["source"]["auth"]
    assert set(auth) == {"mechanism", "secretRef", "tls"}
    assert set(auth["secretRef"]) == {"name", "usernameKey", "passwordKey"}
    statefulset = next(o for o in objects if o["kind"] == "StatefulSet")
    env = {e["name"]: e for e in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["STREAMJOB_KAFKA_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "kafka-credentials", "key": "password", "optional": False,
    }


def test_render_rejects_an_invalid_manifest_with_the_schema_message(operator_bin, root):
    result = subprocess.run(
        [str(operator_bin), "render", "-f", str(root / "examples" / "invalid" / "min-above-max.yaml")],
        capture_output=True, text=True,
    )
    assert result.returncode != 0
    assert "autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas" in result.stderr
