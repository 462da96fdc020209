"""Least privilege: the agent may only get/list/watch pods, replicasets and nodes,
in deploy/kubernetes/ and in the rendered Helm chart alike."""

from __future__ import annotations

import pytest

from .manifests import chart_objects, plain_objects

ALLOWED = {("", "pods"), ("", "nodes"), ("apps", "replicasets")}
READ = {"get", "list", "watch"}


def _grants(objects) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs, over every Role/ClusterRole in the set."""
    grants: dict[tuple[str, str], set[str]] = {}
    roles = [d for _, d in objects if d["kind"] in ("ClusterRole", "Role")]
    assert roles, "no RBAC role found"
    for role in roles:
        assert "aggregationRule" not in role  # would import other roles' rules
        for rule in role.get("rules", []):
            assert "nonResourceURLs" not in rule
            assert "resourceNames" not in rule or rule["resourceNames"]
            for group in rule["apiGroups"]:
                for res in rule["resources"]:
                    grants.setdefault((group, res), set()).update(rule["verbs"])
    return grants


@pytest.mark.parametrize("source", ["kubernetes", "helm"])
def test_agent_gets_only_read_access_to_pods_replicasets_nodes(source: str) -> None:
    objects = plain_objects() if source == "kubernetes" else chart_objects()
    # The chart's install-time Job (its own account and Role: test_pki_job_may_only_
    # make_secrets_in_its_namespace) is not the agent.
    objects = [(n, d) for n, d in objects if not _hook(d)]
    grants = _grants(objects)
    assert set(grants) == ALLOWED, "extra or missing resources"
    for key, verbs in grants.items():
        assert verbs == READ, f"{key}: {sorted(verbs)}"
    for group, res in grants:
        assert "*" not in group and "*" not in res and "/" not in res  # no subresources
    # Each binding ties that role to the agent's ServiceAccount and nothing else.
    roles = {d["metadata"]["name"] for _, d in objects if d["kind"] in ("ClusterRole", "Role")}
    accounts = {
        (d["metadata"]["name"], d["metadata"]["namespace"])
        for _, d in objects
        if d["kind"] == "ServiceAccount"
    }
    bindings = [d for _, d in objects if d["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    assert bindings
    for b in bindings:
        assert b["roleRef"]["name"] in roles
        for s in b["subjects"]:
            assert s["kind"] == "ServiceAccount"
            assert (s["name"], s["namespace"]) in accounts
    # The server needs no API access at all.
    sts = next(d for _, d in objects if d["kind"] == "StatefulSet")
    assert "serviceAccountName" not in sts["spec"]["template"]["spec"]


def _hook(d: dict) -> bool:
    return "helm.sh/hook" in d["metadata"].get("annotations", {})


def test_pki_job_may_only_make_secrets_in_its_namespace() -> None:
    """auth.generate: the Job that creates <release>-tls and <release>-tokens runs
    before install/upgrade under its own account, whose one Role reads and creates
    Secrets in the release's namespace (no list, update or delete; nothing
    cluster-wide); all of it is a hook, deleted once it succeeded."""
    objects = chart_objects("observability")
    hooks = [d for _, d in objects if _hook(d)]
    assert {d["kind"] for d in hooks} == {"ServiceAccount", "Role", "RoleBinding",
                                         "ConfigMap", "Job"}
    for d in hooks:
        ann = d["metadata"]["annotations"]
        assert ann["helm.sh/hook"] == "pre-install,pre-upgrade"
        assert "hook-succeeded" in ann["helm.sh/hook-delete-policy"]
        assert d["metadata"]["namespace"] == "observability"
    assert _grants([(None, d) for d in hooks]) == {("", "secrets"): {"get", "create"}}
    (b,) = [d for d in hooks if d["kind"] == "RoleBinding"]
    (job,) = [d for d in hooks if d["kind"] == "Job"]
    pod = job["spec"]["template"]["spec"]
    assert b["roleRef"]["kind"] == "Role" and b["subjects"] == [
        {"kind": "ServiceAccount", "name": pod["serviceAccountName"],
         "namespace": "observability"}]
    # the Job runs before the objects it needs exist only if they are hooks too,
    # with a lower weight
    assert all(int(d["metadata"]["annotations"]["helm.sh/hook-weight"])
               < int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
               for d in hooks if d is not job)
    assert not any(d["kind"] in ("ClusterRole", "ClusterRoleBinding") for d in hooks)
    assert not [d for _, d in chart_objects(values={"auth": {"generate": False}})
                if _hook(d)]


def test_the_check_itself_catches_a_widened_role() -> None:
    objects = plain_objects()
    role = next(d for _, d in objects if d["kind"] == "ClusterRole")
    role["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})
    assert ("", "secrets") in _grants(objects)
    role["rules"][-1] = {"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]}
    assert _grants(objects)[("", "pods")] - READ == {"delete"}
