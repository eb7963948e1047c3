"""The Helm chart and the Dockerfile, checked with the real tools that work offline here.

Helm v4's own SDK (``helm-python-sdk``) lints and renders ``charts/gateway`` with its default values
and the three files in ``charts/gateway/ci/``; every rendered manifest is validated with
``kubernetes-validate`` against the Kubernetes schemas of a pinned version; the security settings,
the migration hook and the egress allow-list are asserted; ``hadolint`` checks the Dockerfile.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helm_python import Chart, HelmValuesError, lint

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "gateway"
KUBERNETES = "1.31.0"  # the oldest Kubernetes the chart supports; its schemas ship in kubernetes-validate
VALUES = {
    "default": {},
    **{
        p.stem.removesuffix("-values"): yaml.safe_load(p.read_text())
        for p in sorted((CHART / "ci").glob("*.yaml"))
    },
}
CUSTOM_RESOURCES = {"monitoring.coreos.com/v1", "cilium.io/v2"}  # no schema in Kubernetes itself


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    files = Chart.load(str(CHART)).render(values, name="gw", namespace="ai")
    return [doc for text in files.values() for doc in yaml.safe_load_all(text) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_every_values_file_is_used() -> None:
    assert set(VALUES) == {"default", "postgres-redis", "weaviate", "minimal"}


@pytest.mark.parametrize("name", sorted(VALUES))
def test_the_chart_lints_clean_and_renders_valid_manifests(name: str) -> None:
    report = lint(str(CHART), VALUES[name], strict=True, kube_version=f"v{KUBERNETES}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []
    docs = render(VALUES[name])
    assert of_kind(docs, "StatefulSet")
    for doc in docs:
        if doc["apiVersion"] in CUSTOM_RESOURCES:
            continue
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


@pytest.mark.parametrize("name", sorted(VALUES))
def test_pods_run_unprivileged_on_a_read_only_root_with_only_their_volumes_writable(name: str) -> None:
    docs = render(VALUES[name])
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("StatefulSet", "Job")]
    assert pods
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
            writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
            assert writable == {"/srv/data", "/tmp"}
            assert container["envFrom"] == [
                {"secretRef": {"name": "execai-gateway-secrets"}}
            ]  # no inline secret
            assert all("valueFrom" not in e and "SECRET" not in e["name"] for e in container.get("env", []))


def test_spool_and_data_outlive_the_pod_and_the_schema_is_migrated_once_by_a_hook() -> None:
    docs = render({})
    [sts] = of_kind(docs, "StatefulSet")
    [claim] = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    [container] = sts["spec"]["template"]["spec"]["containers"]
    assert "--no-migrate" in container["args"]
    assert {"name": "GATEWAY_DATA_DIR", "value": "/srv/data"} in container["env"]
    [job] = of_kind(docs, "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["gateway", "db", "upgrade"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert of_kind(docs, "PodDisruptionBudget")
    assert sts["spec"]["template"]["spec"]["topologySpreadConstraints"]
    minimal = render(VALUES["minimal"])
    assert of_kind(minimal, "Job") == []
    [sts] = of_kind(minimal, "StatefulSet")
    assert "--no-migrate" not in sts["spec"]["template"]["spec"]["containers"][0]["args"]


def test_a_config_change_rolls_the_pods() -> None:
    def checksum(values: dict[str, Any]) -> str:
        [sts] = of_kind(render(values), "StatefulSet")
        return str(sts["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    base = VALUES["postgres-redis"]
    changed = {
        **base,
        "config": {**base["config"], "server": {"secret_key": "${GATEWAY_SECRET}", "workers": 3}},
    }
    assert checksum(base) != checksum(changed)
    assert checksum(base) == checksum(dict(base))


def test_production_extras_render_when_enabled() -> None:
    docs = render(VALUES["postgres-redis"])
    [hpa] = of_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource", "Pods"]
    assert "replicas" not in of_kind(docs, "StatefulSet")[0]["spec"]  # the autoscaler owns it
    assert of_kind(docs, "ServiceMonitor")
    [ingress] = of_kind(docs, "Ingress")
    assert ingress["spec"]["tls"][0]["secretName"] == "llm-execai-eu-tls"
    [policy] = of_kind(docs, "NetworkPolicy")
    database = [r for r in policy["spec"]["egress"] if r["ports"] == [{"port": 5432, "protocol": "TCP"}]]
    assert database == [
        {"ports": [{"port": 5432, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]}
    ]
    [cilium] = of_kind(render(VALUES["weaviate"]), "CiliumNetworkPolicy")
    fqdns = [r["toFQDNs"][0]["matchName"] for r in cilium["spec"]["egress"] if "toFQDNs" in r]
    assert fqdns == ["api.mistral.ai", "api.mistral.ai", "weaviate.rag.svc", "weaviate.rag.svc"]


def test_the_default_egress_is_what_the_shipped_config_connects_to() -> None:
    """The chart's default allow-list is `gateway config egress --values` for the shipped config.yaml
    (with none of its environment overrides set): regenerate it when config.yaml changes."""
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_URL", "_ENDPOINT", "_MODEL"))}
    printed = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli_main",
            "config",
            "egress",
            "--values",
            "-c",
            str(ROOT / "config.yaml"),
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=ROOT,
    ).stdout
    expected = yaml.safe_load(printed)["egress"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["networkPolicy"]["egress"] == expected
    [policy] = of_kind(render({}), "NetworkPolicy")
    rules = [r["ports"][0] for r in policy["spec"]["egress"]]
    assert rules == [{"port": d["port"], "protocol": d["protocol"]} for d in expected]
    listed = policy["metadata"]["annotations"]["execai.eu/egress"].split(", ")
    assert listed == [f"{d['name']} {d['host'] or '*'}:{d['port']}/{d['protocol']}" for d in expected]
    assert "deployment/openai-gpt4 api.openai.com:443/TCP" in listed  # the DPA fallback's host too


@pytest.mark.parametrize(
    ("values", "path"),
    [
        ({"replicaCount": 0}, "/replicaCount"),
        ({"workers": "two"}, "/workers"),
        ({"image": {"repository": "x", "tag": "1", "digest": "latest"}}, "/image/digest"),
        ({"persistence": {"size": "lots"}}, "/persistence/size"),
        (
            {
                "networkPolicy": {
                    "enabled": True,
                    "egress": [{"name": "x", "host": "h", "port": 0, "protocol": "TCP"}],
                }
            },
            "/networkPolicy/egress/0/port",
        ),
        (
            {"networkPolicy": {"enabled": True, "egress": [], "cidrs": {"h": ["not-a-cidr"]}}},
            "/networkPolicy/cidrs/h/0",
        ),
        ({"replicas": 2}, "additional properties 'replicas' not allowed"),
    ],
)
def test_an_invalid_value_is_refused_with_its_path(values: dict[str, Any], path: str) -> None:
    with pytest.raises(HelmValuesError) as exc:
        render(values)
    assert path in str(exc.value)
    report = lint(str(CHART), values)
    assert any(path in e for e in report["errors"]) or any(path in m["error"] for m in report["messages"])


def test_the_dockerfile_is_hadolint_clean_and_pins_its_base_by_digest() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert "@sha256:" in text.split("ARG BASE=", 1)[1].splitlines()[0]
    assert "USER 10001:10001" in text
