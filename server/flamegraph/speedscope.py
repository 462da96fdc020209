"""speedscope JSON (https://www.speedscope.app/file-format-schema.json).

A "sampled" profile whose samples are the collapsed stacks and whose weights are
self times: speedscope's evented profiles require strictly nested intervals, which
concurrent child spans are not.
"""

from __future__ import annotations

import json

from server.flamegraph.registry import Renderer, register


def render_speedscope(stacks: dict[str, int], title: str) -> str:
    frames: list[dict[str, str]] = []
    index: dict[str, int] = {}
    samples: list[list[int]] = []
    weights: list[int] = []
    for stack, value in sorted(stacks.items()):
        ids = []
        for f in stack.split(";"):
            if f not in index:
                index[f] = len(frames)
                frames.append({"name": f})
            ids.append(index[f])
        samples.append(ids)
        weights.append(value)
    doc = {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "shared": {"frames": frames},
        "profiles": [
            {
                "type": "sampled",
                "name": title,
                "unit": "nanoseconds",
                "startValue": 0,
                "endValue": sum(weights),
                "samples": samples,
                "weights": weights,
            }
        ],
        "name": title,
        "exporter": "zerotrace",
    }
    return json.dumps(doc, separators=(",", ":"))


register(Renderer("speedscope", (".json",), "application/json", stacks=render_speedscope))
