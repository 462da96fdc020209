"""The pod cache against a loopback server replaying recorded Kubernetes API
responses: list, watch events, 410 Gone, outages, 403, garbage, a slow server."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from agent.enrich import counters as reasons
from agent.enrich.cgroup import cgroup_id_of
from proto.span import Endpoint, Span

from .conftest import (
    C_CART,
    C_CHECKOUT,
    C_DB,
    C_REPORT,
    U_CART,
    U_CHECKOUT,
    U_DB,
    systemd_pod_slice,
)
from .fakeproc import add_process
from .kubereplay import Reply, fixture, wait_until, watch_reply

RS_CHECKOUT = Reply(body=fixture("replicaset.json"))
U_REPORT = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"


def _cgroup_line(qos: str, uid: str, prefix: str, cid: str) -> str:
    return f"0::/{systemd_pod_slice(qos, uid)}/{prefix}-{cid}.scope\n"


@pytest.fixture
def procs(tmp_path):
    """Fake /proc with one process per recorded container (pids 1001...)."""
    add_process(
        tmp_path,
        1001,
        _cgroup_line("burstable", U_CHECKOUT, "cri-containerd", C_CHECKOUT),
        comm="checkout",
    )
    add_process(tmp_path, 1002, _cgroup_line("besteffort", U_DB, "crio", C_DB), comm="postgres")
    add_process(
        tmp_path, 1003, _cgroup_line("burstable", U_CART, "cri-containerd", C_CART), comm="cart"
    )
    return tmp_path


def _tags(enricher, pid: int, cgroup_id: int = 0) -> Span:
    span = Span(pid=pid, cgroup_id=cgroup_id)
    enricher.enrich(span)
    return span


@pytest.mark.kernel
def test_real_pod_cgroups_follow_list_watch_and_relist(lab, replay, make_enricher) -> None:
    """Processes in real cgroups named after the recorded pods' containers carry the
    pods' tags, and the tags follow ADDED / MODIFIED / DELETED, a 410 and a relist."""
    made = {}
    for name, qos, uid, prefix, cid in [
        ("checkout", "burstable", U_CHECKOUT, "cri-containerd", C_CHECKOUT),
        ("db", "besteffort", U_DB, "crio", C_DB),
        ("report", "besteffort", U_REPORT, "cri-containerd", C_REPORT),
        ("cart", "burstable", U_CART, "cri-containerd", C_CART),
    ]:
        cg = lab.make(f"{systemd_pod_slice(qos, uid)}/{prefix}-{cid}.scope")
        made[name] = (lab.spawn(cg).pid, cgroup_id_of(str(cg)))

    gate = threading.Event()
    replay.script("replicaset", RS_CHECKOUT)
    replay.script(
        "watch", watch_reply("watch_events.jsonl", gate=gate), watch_reply("watch_gone.jsonl")
    )
    replay.script(
        "list", Reply(body=fixture("podlist.json")), Reply(body=fixture("podlist_after_gone.json"))
    )
    enricher = make_enricher(replay.url, deleted_grace=0.0)
    assert enricher.pods.wait_synced(5)

    def tags(name: str) -> dict[str, str]:
        return _tags(enricher, *made[name]).resource

    span = _tags(enricher, *made["checkout"])
    r = span.resource
    assert span.service == "checkout"
    assert r["k8s.pod.name"] == "checkout-7d9f8b6c5d-x2x9q"
    assert r["k8s.namespace.name"] == "shop"
    assert r["k8s.node.name"] == "node-a"
    assert r["k8s.deployment.name"] == "checkout"  # via the ReplicaSet's owner
    assert r["k8s.replicaset.name"] == "checkout-7d9f8b6c5d"
    assert r["k8s.container.name"] == "checkout"
    assert r["container.id"] == C_CHECKOUT
    assert r["container.runtime"] == "containerd"
    assert r["k8s.serviceaccount.name"] == "checkout"
    assert r["k8s.pod.ip"] == "10.244.1.17"
    assert (r["team"], r["service.version"], r["vcs.commit"]) == ("payments", "1.4.2", "9f2c1e7")
    assert r["cloud.availability_zone"] == "eu-west-1b"
    assert r["process.executable.name"] == "sleep"
    db = tags("db")
    assert (db["k8s.statefulset.name"], db["service.name"], db["team"]) == ("db", "db", "storage")
    assert "k8s.pod.name" not in tags("report")  # not on the node yet

    gate.set()  # ADDED report, MODIFIED checkout, DELETED db, BOOKMARK
    assert wait_until(lambda: tags("checkout").get("team") == "payments-core")
    assert tags("checkout")["service.version"] == "1.4.3"
    report = tags("report")
    assert report["k8s.job.name"] == "nightly-report-29412360"
    assert report["k8s.cronjob.name"] == "nightly-report"
    assert wait_until(lambda: "k8s.pod.name" not in tags("db"))
    db = tags("db")  # deleted: still tagged with what the cgroup says
    assert (db["container.id"], db["k8s.pod.uid"]) == (C_DB, U_DB)

    # Then 410 Gone -> a full list, whose new pod appears; the deleted ones stay gone.
    assert wait_until(lambda: tags("cart").get("k8s.deployment.name") == "cart")
    assert enricher.counters()[reasons.WATCH_EXPIRED] == 1
    assert wait_until(lambda: replay.count("watch") >= 3)  # the watch after the relist
    watches = replay.queries("watch")
    assert [q["resourceVersion"] for q in watches[:3]] == ["1000", "1020", "2000"]
    assert all(q["fieldSelector"] == "spec.nodeName=node-a" for q in replay.queries("list"))
    assert "k8s.pod.name" not in tags("report")


def test_list_and_watch_requests_are_node_scoped(replay, make_enricher) -> None:
    enricher = make_enricher(replay.url)
    assert enricher.pods.wait_synced(5)
    assert wait_until(lambda: replay.count("watch") == 1)
    (lst,) = replay.queries("list")
    assert lst == {"fieldSelector": "spec.nodeName=node-a"}
    (watch,) = replay.queries("watch")
    assert watch["watch"] == "true" and watch["resourceVersion"] == "1000"
    assert watch["fieldSelector"] == "spec.nodeName=node-a"
    assert watch["allowWatchBookmarks"] == "true" and int(watch["timeoutSeconds"]) > 0
    t0 = time.monotonic()
    enricher.close()  # must cut the open watch, not wait for it
    assert time.monotonic() - t0 < 2


def test_http_410_on_watch_relists(replay, make_enricher, procs) -> None:
    replay.script(
        "watch",
        Reply(
            status=410,
            body=b'{"kind":"Status","apiVersion":"v1",'
            b'"status":"Failure","reason":"Expired","code":410}',
        ),
    )
    replay.script(
        "list", Reply(body=fixture("podlist.json")), Reply(body=fixture("podlist_after_gone.json"))
    )
    enricher = make_enricher(replay.url, proc_root=str(procs))
    assert wait_until(lambda: enricher.pods.lists == 2)
    assert _tags(enricher, 1003).resource["k8s.pod.name"] == "cart-5c8d7f9b6-q4lzt"
    assert enricher.counters()[reasons.WATCH_EXPIRED] == 1


def test_outage_keeps_serving_and_logs_once(replay, make_enricher, procs, caplog) -> None:
    caplog.set_level(logging.INFO, logger="zerotrace.enrich")
    replay.script("replicaset", RS_CHECKOUT)
    enricher = make_enricher(replay.url, proc_root=str(procs))
    assert enricher.pods.wait_synced(5)
    assert wait_until(lambda: replay.count("watch") == 1)

    replay.stop()  # connection refused from now on
    assert wait_until(lambda: enricher.counters().get(reasons.API_ERROR, 0) >= 3)
    r = _tags(enricher, 1001).resource
    assert (r["k8s.pod.name"], r["k8s.deployment.name"]) == (
        "checkout-7d9f8b6c5d-x2x9q",
        "checkout",
    )

    # Back, but failing with 500 first; the watch resumes where it was (no relist).
    replay.script("watch", Reply(status=500, body=fixture("status_500.json")))
    replay.start()
    assert wait_until(lambda: replay.count("watch") >= 3, timeout=5)
    assert replay.queries("watch")[-1]["resourceVersion"] == "1000"
    assert enricher.pods.lists == 1
    assert wait_until(lambda: any("watching pods again" in m for m in caplog.messages))
    warnings = [m for m in caplog.messages if "unreachable" in m]
    assert len(warnings) == 1, caplog.messages
    assert sum("error 500" in m for m in caplog.messages) == 1
    assert sum("watching pods again" in m for m in caplog.messages) == 1


def test_403_spans_flow_with_what_is_known(replay, make_enricher, procs, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="zerotrace.enrich")
    replay.fallback["list"] = Reply(status=403, body=fixture("status_403.json"))
    enricher = make_enricher(replay.url, proc_root=str(procs))
    assert wait_until(lambda: enricher.counters().get(reasons.API_FORBIDDEN, 0) >= 3)
    span = _tags(enricher, 1001)
    r = span.resource
    assert "k8s.pod.name" not in r
    assert (r["container.id"], r["k8s.pod.uid"], r["k8s.node.name"]) == (
        C_CHECKOUT,
        U_CHECKOUT,
        "node-a",
    )
    assert span.service == "checkout"  # the process name, for lack of a pod
    assert sum("RBAC" in m for m in caplog.messages) == 1


def test_replicaset_403_falls_back_to_the_template_hash(replay, make_enricher, procs) -> None:
    replay.script("replicaset", Reply(status=403, body=fixture("status_403_replicaset.json")))
    enricher = make_enricher(replay.url, proc_root=str(procs))
    assert enricher.pods.wait_synced(5)
    assert _tags(enricher, 1001).resource["k8s.deployment.name"] == "checkout"
    assert enricher.counters()[reasons.REPLICASET_LOOKUP_FAILED] == 1


def test_garbage_is_counted_and_relisted(replay, make_enricher, procs) -> None:
    replay.script("list", Reply(body=fixture("garbage.txt"), content_type="text/html"))
    replay.script("watch", watch_reply("watch_garbage.jsonl"))
    enricher = make_enricher(replay.url, proc_root=str(procs))
    # garbage list -> backoff -> good list -> garbage watch line -> good list again
    assert wait_until(lambda: enricher.pods.lists == 2)
    assert enricher.counters()[reasons.API_GARBAGE] == 2
    assert _tags(enricher, 1001).resource["k8s.pod.name"] == "checkout-7d9f8b6c5d-x2x9q"


def test_slow_api_does_not_slow_spans(replay, make_enricher, procs) -> None:
    replay.script("list", Reply(body=fixture("podlist.json"), delay=2.0))
    enricher = make_enricher(replay.url, proc_root=str(procs), request_timeout=0.2)
    t0 = time.monotonic()
    span = _tags(enricher, 1001)  # the API hangs; the span must not
    assert time.monotonic() - t0 < 0.1
    assert span.resource["container.id"] == C_CHECKOUT
    assert wait_until(lambda: enricher.counters().get(reasons.API_ERROR, 0) >= 1, timeout=3)
    assert enricher.pods.wait_synced(5)
    assert _tags(enricher, 1001).resource["k8s.pod.name"] == "checkout-7d9f8b6c5d-x2x9q"


def test_remote_pod_ip_resolves_to_peer_tags(replay, make_enricher, procs) -> None:
    enricher = make_enricher(replay.url, proc_root=str(procs))
    assert enricher.pods.wait_synced(5)
    span = Span(pid=1003, remote=Endpoint("::ffff:10.244.1.17", 8080))
    enricher.enrich(span)
    assert span.attributes["peer.service"] == "checkout"
    assert span.attributes["k8s.peer.pod.name"] == "checkout-7d9f8b6c5d-x2x9q"
    assert span.attributes["k8s.peer.namespace.name"] == "shop"
    assert enricher.peer("10.244.1.23")["peer.service"] == "db"
    # A hostNetwork pod shares the node's IP: that IP must not name one pod.
    assert enricher.peer("192.168.49.2") == {}


def test_410_again_and_again_backs_off(replay, make_enricher) -> None:
    gone = Reply(status=410, body=b'{"kind":"Status","apiVersion":"v1","code":410}')
    replay.fallback["watch"] = gone
    enricher = make_enricher(replay.url, backoff_initial=0.2, backoff_max=0.2)
    time.sleep(1.0)
    # Relisting at once every time would make dozens of lists in a second.
    assert 2 <= replay.count("list") <= 10
    assert enricher.counters()[reasons.WATCH_EXPIRED] >= 2
