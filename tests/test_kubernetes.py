"""deploy/kubernetes/: valid against the schemas of a current Kubernetes (offline, with
kubernetes-validate), and consistent with oxyd itself (probes, config, drain timing)."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import yaml

from oxyd.config import load

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
NOT_KUBERNETES_API = {"Kustomization"}  # kustomize's own file, read by kubectl, not the API


def _docs() -> list[dict]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _kind(kind: str) -> list[dict]:
    return [d for d in _docs() if d["kind"] == kind]


def test_every_manifest_validates_against_current_kubernetes():
    version = kubernetes_validate.latest_version()
    checked = 0
    for doc in _docs():
        if doc["kind"] in NOT_KUBERNETES_API:
            continue
        kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
    kinds = {d["kind"] for d in _docs()}
    assert {"StatefulSet", "Service", "PodDisruptionBudget", "Secret", "ConfigMap"} <= kinds
    assert checked >= 7


def test_kustomization_lists_every_manifest_but_the_secret():
    (kust,) = _kind("Kustomization")
    files = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml", "secret.yaml"}
    assert set(kust["resources"]) == files


def test_statefulset_matches_what_oxyd_expects(tmp_path):
    (sts,) = _kind("StatefulSet")
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e for e in c["env"]}
    # cluster.nodes follows the replicas; the node ordinal is the pod's (hostname oxyd-N).
    assert int(env["OXYD_CLUSTER_NODES"]["value"]) == spec["replicas"]
    assert sts["metadata"]["name"] == "oxyd"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert spec["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert {"name": "data", "mountPath": "/data"} in c["volumeMounts"]
    # The headless Service gives the peer names of cluster.peer_url.
    peers = next(s for s in _kind("Service") if s["spec"].get("clusterIP") == "None")
    assert spec["serviceName"] == peers["metadata"]["name"]
    # The config file is valid for oxyd, and its paths are where the pod mounts things.
    (cm,) = [d for d in _kind("ConfigMap") if "config.yaml" in d.get("data", {})]
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(cm["data"]["config.yaml"])
    token = tmp_path / "token"
    token.write_text("x" * 32)
    cfg = load(cfg_file, env={"OXYD_CLUSTER_NODES": "3", "OXYD_CLUSTER_TOKEN_FILE": str(token)})
    assert cfg.cluster.peer_url.startswith(f"http://oxyd-{{n}}.{peers['metadata']['name']}:")
    assert str(cfg.data_dir) == "/data" and cfg.http.host == "0.0.0.0"
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert str(load(cfg_file, env={}).cluster.token_file.parent) in mounts
    # Termination: the preStop pause plus oxyd's own drain fit in the grace period.
    pause_s = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain_s = cfg.supervisor.stop_grace_s + 30  # app.stop waits this long for the writer
    assert pod["terminationGracePeriodSeconds"] > pause_s + drain_s


def test_disruption_budget_and_scrape_config():
    (pdb,) = _kind("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    (scrape,) = [d for d in _kind("ConfigMap") if "oxyd-scrape.yaml" in d.get("data", {})]
    job = yaml.safe_load(scrape["data"]["oxyd-scrape.yaml"])["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer"
