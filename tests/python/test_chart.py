"""The Helm chart, linted and rendered with the real Helm SDK, checked with kubernetes-validate."""

import copy

import helm_python
import pytest
import yaml

from k8s import assert_valid, load_all, pod_spec_of, restricted_violations

CHART = "charts/streamjob-operator"
PROMETHEUS_OPERATOR_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}

ALL_ON = {
    "metrics": {
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "grafanaDashboard": {"enabled": True},
    },
    "networkPolicy": {"enabled": True},
    "workerNetworkPolicy": {"enabled": True, "namespaces": ["team-a"], "kafka": {"cidrs": ["10.20.0.0/16"]}},
    "podDisruptionBudget": {"enabled": True},
    "commonAnnotations": {"team": "platform"},
    "extraEnv": [{"name": "EXTRA", "value": "1"}],
    "image": {"repository": "registry.example.com/streamjob-operator", "pullSecrets": ["regcred"]},
    "priorityClassName": "system-cluster-critical",
}

TOGGLES = {
    "defaults": {},
    "all-on": ALL_ON,
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "namespaced-observed": {
        "watchNamespaces": ["team-a", "team-b"],
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
        "workerNetworkPolicy": {"enabled": True},
    },
    "no-leader-election": {"leaderElection": {"enabled": False}, "replicaCount": 1},
    "no-rbac": {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "existing"}},
    "no-pdb-no-service": {"podDisruptionBudget": {"enabled": False}, "metrics": {"service": {"enabled": False}}},
}


@pytest.fixture(scope="module")
def chart(root):
    return helm_python.Chart.load(str(root / CHART))


def render(chart, values):
    manifests = chart.render(values, name="streamjob", namespace="streamjob-system", is_install=True)
    objects = []
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(load_all(text))
    return objects


@pytest.mark.parametrize("toggle", ["defaults", "all-on"])
def test_lint_is_clean_in_strict_mode(root, toggle):
    report = helm_python.lint(str(root / CHART), TOGGLES[toggle], strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("toggle", sorted(TOGGLES))
def test_every_rendered_object_is_valid(chart, toggle):
    objects = render(chart, TOGGLES[toggle])
    assert objects, "the chart renders objects"
    for obj in objects:
        if obj["kind"] in PROMETHEUS_OPERATOR_KINDS:
            assert obj["apiVersion"] == "monitoring.coreos.com/v1" and obj["spec"]
            continue
        assert_valid(obj)


@pytest.mark.parametrize("toggle", sorted(TOGGLES))
def test_operator_pod_meets_the_restricted_standard(chart, toggle):
    (deployment,) = [o for o in render(chart, TOGGLES[toggle]) if o["kind"] == "Deployment"]
    pod_spec = pod_spec_of(deployment)
    assert restricted_violations(pod_spec) == []
    container = pod_spec["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_worker_pods_of_every_example_meet_the_restricted_standard(operator_bin, root):
    import subprocess

    for example in sorted((root / "examples").glob("*.yaml")):
        rendered = subprocess.run([str(operator_bin), "render", "-f", str(example)], capture_output=True, text=True, check=True)
        for obj in load_all(rendered.stdout):
            spec = pod_spec_of(obj)
            if spec is not None:
                assert restricted_violations(spec) == [], example.name


def rbac_rules(objects):
    for obj in objects:
        if obj["kind"] in ("ClusterRole", "Role"):
            for rule in obj["rules"]:
                yield obj, rule


@pytest.mark.parametrize("toggle", sorted(TOGGLES))
def test_rbac_has_no_wildcards(chart, toggle):
    for obj, rule in rbac_rules(render(chart, TOGGLES[toggle])):
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule.get(field, []), (obj["metadata"]["name"], rule)


# Exactly the calls operator/src makes (tests/tests/chart_install.rs runs the operator on a real
# API server with nothing else).
JOB_RULES = {
    ("streamjob.io", "streamjobs"): {"get", "list", "watch", "patch"},
    ("streamjob.io", "streamjobs/status"): {"patch"},
    ("streamjob.io", "streamjobs/finalizers"): {"update"},
    ("apps", "statefulsets"): {"get", "list", "watch", "create", "patch"},
    ("", "services"): {"get", "list", "watch", "create", "patch"},
    ("", "configmaps"): {"get", "list", "watch", "create", "patch"},
    ("policy", "poddisruptionbudgets"): {"get", "list", "watch", "create", "patch"},
    ("", "pods"): {"list", "watch"},
    ("", "secrets"): {"get"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("", "events"): {"list", "watch"},
}


def granted(role):
    verbs = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                verbs.setdefault((group, resource), set()).update(rule["verbs"])
    return verbs


@pytest.mark.parametrize("toggle", ["defaults", "namespaced"])
def test_rbac_is_exactly_what_the_operator_calls(chart, toggle):
    objects = render(chart, TOGGLES[toggle])
    job_roles = [o for o in objects if o["kind"] in ("ClusterRole", "Role") and not o["metadata"]["name"].endswith("leader-election")]
    assert job_roles
    for role in job_roles:
        assert granted(role) == JOB_RULES, role["metadata"]


def test_leader_election_may_touch_only_the_release_lease(chart):
    objects = render(chart, {})
    (lease,) = [o for o in objects if o["kind"] == "Lease"]
    (role,) = [o for o in objects if o["kind"] == "Role" and o["metadata"]["name"].endswith("leader-election")]
    (rule,) = role["rules"]
    assert rule["resources"] == ["leases"] and set(rule["verbs"]) == {"get", "patch"}
    assert rule["resourceNames"] == [lease["metadata"]["name"]]


def test_namespaced_mode_renders_roles_not_cluster_roles(chart):
    objects = render(chart, TOGGLES["namespaced"])
    kinds = [o["kind"] for o in objects]
    assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds
    job_roles = {o["metadata"]["namespace"] for o in objects if o["kind"] == "Role" and not o["metadata"]["name"].endswith("leader-election")}
    assert job_roles == {"team-a", "team-b"}
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args


@pytest.mark.parametrize("bad, message", [
    ({"replicaCount": "two"}, "replicaCount"),
    ({"logFormat": "xml"}, "logFormat"),
    ({"image": {"repository": "x", "pullPolicy": "Sometimes"}}, "pullPolicy"),
    ({"watchNamespaces": "team-a"}, "watchNamespaces"),
    ({"unknownSetting": True}, "unknownSetting"),
    ({"metrics": {"workerPodMonitor": {"enabled": "yes"}}}, "workerPodMonitor"),
    ({"workerNetworkPolicy": {"kafka": {"cidrs": ["kafka.example.com"]}}}, "cidrs"),
    ({"workerNetworkPolicy": {"kafka": {"ports": [0]}}}, "ports"),
])
def test_bad_values_are_rejected_by_the_schema(chart, bad, message):
    with pytest.raises(helm_python.HelmError) as raised:
        chart.render(bad, name="streamjob", namespace="streamjob-system", is_install=True)
    assert message in str(raised.value)


def test_chart_crd_is_the_generated_crd(root):
    assert (root / CHART / "crds" / "streamjob.yaml").read_bytes() == (root / "crds" / "streamjob.yaml").read_bytes()


def test_alerts_and_dashboard_cover_what_operators_watch(chart):
    objects = render(chart, ALL_ON)
    (rule,) = [o for o in objects if o["kind"] == "PrometheusRule"]
    alerts = {r["alert"] for group in rule["spec"]["groups"] for r in group["rules"]}
    assert alerts == {"StreamJobLagGrowing", "StreamJobDegraded", "StreamJobWorkerCrashLooping",
                      "StreamJobAutoscalerDegraded", "StreamJobOperatorDown"}
    lag = next(r for g in rule["spec"]["groups"] for r in g["rules"] if r["alert"] == "StreamJobLagGrowing")
    assert lag["for"] == "10m"
    (dashboard_map,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("dashboard")]
    dashboard = yaml.safe_load(dashboard_map["data"]["streamjob.json"])
    titles = " | ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("lag", "desired vs ready", "records in / out", "latency", "dead-lettered", "reconcile errors"):
        assert topic in titles, topic


def test_defaults_run_two_replicas_with_leader_election(chart):
    (deployment,) = [o for o in render(chart, {}) if o["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 2
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--leader-election=true" in args
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":0.1.0")


def test_the_leader_lease_belongs_to_the_release(chart):
    objects = render(chart, {})
    (lease,) = [o for o in objects if o["kind"] == "Lease"]
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--lease-name={lease['metadata']['name']}" in args, "helm uninstall removes the Lease the operator uses"
    assert not [o for o in render(chart, TOGGLES["no-leader-election"]) if o["kind"] == "Lease"]


def of_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


@pytest.mark.parametrize("values, monitors", [
    ({}, 0),
    ({"metrics": {"serviceMonitor": {"enabled": True}}}, 1),
    ({"metrics": {"serviceMonitor": {"enabled": True}, "workerPodMonitor": {"enabled": False}}}, 0),
])
def test_workers_are_scraped_whenever_the_operator_is(chart, values, monitors):
    assert len(of_kind(render(chart, values), "PodMonitor")) == monitors


def test_the_worker_pod_monitor_covers_the_watched_namespaces(chart):
    (cluster_wide,) = of_kind(render(chart, {"metrics": {"serviceMonitor": {"enabled": True}}}), "PodMonitor")
    assert cluster_wide["spec"]["namespaceSelector"] == {"any": True}
    (namespaced,) = of_kind(render(chart, TOGGLES["namespaced-observed"]), "PodMonitor")
    assert namespaced["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    assert namespaced["metadata"]["labels"]["release"] == "prometheus", "selected by the same Prometheus"
    (endpoint,) = namespaced["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["interval"] == "30s"


def rendered_worker_pod(operator_bin, root):
    import subprocess

    example = root / "examples" / "wordcount.yaml"
    rendered = subprocess.run([str(operator_bin), "render", "-f", str(example)], capture_output=True, text=True, check=True)
    (stateful_set,) = [o for o in load_all(rendered.stdout) if o["kind"] == "StatefulSet"]
    return stateful_set["spec"]["template"]


def test_pod_monitor_and_network_policy_select_the_workers_the_operator_builds(chart, operator_bin, root):
    template = rendered_worker_pod(operator_bin, root)
    labels = template["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
    objects = render(chart, TOGGLES["namespaced-observed"])
    (monitor,) = of_kind(objects, "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] in ports
    assert monitor["spec"]["jobLabel"] in labels, "the job label names the StreamJob"
    worker_policies = [p for p in of_kind(objects, "NetworkPolicy") if p["metadata"]["name"].endswith("-workers")]
    assert {p["metadata"]["namespace"] for p in worker_policies} == {"team-a", "team-b"}
    for policy in worker_policies:
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        (ingress,) = policy["spec"]["ingress"]
        assert [p["port"] for p in ingress["ports"]] == ["http-metrics"] and "http-metrics" in ports


def test_the_worker_network_policy_lets_out_only_dns_and_kafka(chart):
    (policy,) = [p for p in of_kind(render(chart, ALL_ON), "NetworkPolicy") if p["metadata"]["name"].endswith("-workers")]
    assert policy["metadata"]["namespace"] == "team-a"
    dns, kafka = policy["spec"]["egress"]
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")} and "to" not in dns
    assert [p["port"] for p in kafka["ports"]] == [9092, 9093, 9094]
    assert kafka["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["from"] == [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }]


def test_the_worker_network_policy_needs_namespaces(chart):
    with pytest.raises(helm_python.HelmError) as raised:
        render(chart, {"workerNetworkPolicy": {"enabled": True}})
    assert "workerNetworkPolicy.namespaces" in str(raised.value)


def test_dashboard_groups_workers_by_the_label_the_pod_monitor_sets(chart):
    objects = render(chart, ALL_ON)
    (service_monitor,) = of_kind(objects, "ServiceMonitor")
    assert service_monitor["spec"]["endpoints"][0]["honorLabels"] is True, "the operator's job and namespace labels stay"
    (dashboard_map,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("dashboard")]
    dashboard = yaml.safe_load(dashboard_map["data"]["streamjob.json"])
    worker_exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if "streamjob_worker_" in t["expr"]]
    assert worker_exprs
    for expr in worker_exprs:
        assert "namespace, job)" in expr and "service" not in expr, expr
