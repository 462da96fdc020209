"""The replayed responses are the API's real shapes: each deserialises into the
`kubernetes` client's models the way the client reads a live API server, and
validates strictly against them (pydantic `model_validate`: required fields
enforced, unknown keys refused -- `from_dict` alone would drop them silently)."""

from __future__ import annotations

import json

import pytest
from kubernetes import client as k8s
from kubernetes.client import ApiClient

from .kubereplay import FIXTURES

SHAPES = {
    "podlist.json": "V1PodList",
    "podlist_after_gone.json": "V1PodList",
    "replicaset.json": "V1ReplicaSet",
    "node.json": "V1Node",
    "status_403.json": "V1Status",
    "status_403_replicaset.json": "V1Status",
    "status_500.json": "V1Status",
}


@pytest.mark.parametrize(("name", "model"), sorted(SHAPES.items()))
def test_fixture_is_a_real_api_object(name: str, model: str) -> None:
    text = (FIXTURES / name).read_text()
    obj = ApiClient().deserialize(text, model, "application/json")
    assert type(obj).__name__ == model
    getattr(k8s, model).model_validate(json.loads(text))
    raw = json.loads(text)
    assert raw["kind"] == model.removeprefix("V1") and raw["apiVersion"] in ("v1", "apps/v1")


@pytest.mark.parametrize("name", ["watch_events.jsonl", "watch_gone.jsonl"])
def test_watch_streams_are_real_watch_events(name: str) -> None:
    client = ApiClient()
    for line in (FIXTURES / name).read_text().splitlines():
        event = json.loads(line)
        client.deserialize(line, "V1WatchEvent", "application/json")
        k8s.V1WatchEvent.model_validate(event)
        kind = event["object"]["kind"]
        if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
            assert kind == "Pod"
            k8s.V1Pod.model_validate(event["object"])
        elif event["type"] == "ERROR":
            k8s.V1Status.model_validate(event["object"])


def test_a_misspelt_key_would_be_caught() -> None:
    bad = {"kind": "Node", "apiVersion": "v1", "metadata": {"name": "n", "lables": {}}}
    with pytest.raises(ValueError, match="lables"):
        k8s.V1Node.model_validate(bad)
