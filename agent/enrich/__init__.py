"""Tags for spans: host, process, container and Kubernetes pod/workload attributes.

Public entry: `Enricher(EnrichConfig.from_env(yaml_section))`, then `enrich(span)`
per span, `counters()` for metrics, `close()` at shutdown.  See docs/kubernetes.md.
"""

from agent.enrich.config import EnrichConfig
from agent.enrich.enricher import Enricher, PodLookup
from agent.enrich.tags import PodTags

__all__ = ["EnrichConfig", "Enricher", "PodLookup", "PodTags"]
