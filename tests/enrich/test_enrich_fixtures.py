"""The replayed responses are the API's real shapes: each deserialises into the
`kubernetes` client's models (pydantic, extra keys forbidden, required fields
enforced), the same way the client reads a live API server."""

from __future__ import annotations

import json

import pytest
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
    raw = json.loads(text)
    assert raw["kind"] == model.removeprefix("V1") and raw["apiVersion"] in ("v1", "apps/v1")


@pytest.mark.parametrize("name", ["watch_events.jsonl", "watch_gone.jsonl"])
def test_watch_streams_are_real_watch_events(name: str) -> None:
    client = ApiClient()
    for line in (FIXTURES / name).read_text().splitlines():
        event = json.loads(line)
        client.deserialize(line, "V1WatchEvent", "application/json")
        kind = event["object"]["kind"]
        if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
            assert kind == "Pod"
            client.deserialize(json.dumps(event["object"]), "V1Pod", "application/json")
        elif event["type"] == "ERROR":
            client.deserialize(json.dumps(event["object"]), "V1Status", "application/json")


def test_a_misspelt_key_would_be_caught() -> None:
    bad = {"kind": "Node", "apiVersion": "v1", "metadata": {"name": "n", "lables": {}}}
    with pytest.raises(Exception, match="lables"):
        ApiClient().deserialize(json.dumps(bad), "V1Node", "application/json")
