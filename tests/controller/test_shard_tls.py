"""The per-cluster CA and shard certificate: the pure renewal decision, the Secret, the pods that
mount it, and the reconcile pass (API double): new shards serve TLS, shards created before TLS
existed stay plain, and the topology's URLs follow each StatefulSet."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

from shardrec.api import pki
from shardrec_operator.desired import names
from shardrec_operator.desired.router import build_router_deployment
from shardrec_operator.desired.shard_tls import (
    TLS_ANNOTATION,
    TlsMaterial,
    build_shard_tls_secret,
    recheck_after_seconds,
    renewal_needed,
    renewed,
    server_name,
    statefulset_serves_tls,
    tls_material_of,
)
from shardrec_operator.reconcile import resources as kinds
from tests.controller.samples import NAME, NAMESPACE, cluster
from tests.controller.world import World

NOW = datetime(2026, 12, 5, tzinfo=UTC)
HOST = "recs-shard.ml.svc"


def _material(now: datetime = NOW, name: str = HOST) -> TlsMaterial:
    return renewed(None, "all", name, now)


def test_nothing_stored_issues_everything() -> None:
    assert renewal_needed(None, HOST, NOW) == "all"
    material = _material()
    assert pki.signed_by(material.server.cert_pem, material.ca.cert_pem)
    assert pki.dns_names(material.server.cert_pem) == [HOST]


def test_a_fresh_certificate_needs_nothing_and_one_aging_is_renewed_by_the_same_ca() -> None:
    material = _material()
    assert renewal_needed(material, HOST, NOW + timedelta(days=59)) == "none"
    later = NOW + timedelta(days=61)  # less than a third of 90 days left
    assert renewal_needed(material, HOST, later) == "server"
    again = renewed(material, "server", HOST, later)
    assert again.ca == material.ca and again.server != material.server
    assert renewal_needed(again, HOST, later) == "none"


def test_a_certificate_from_another_ca_or_for_another_name_is_replaced() -> None:
    material = _material()
    foreign = TlsMaterial(material.ca, _material().server)
    assert renewal_needed(foreign, HOST, NOW) == "server"
    assert renewal_needed(material, "other-shard.ml.svc", NOW) == "server"


def test_an_expired_ca_is_replaced_with_everything() -> None:
    material = _material()
    assert renewal_needed(material, HOST, NOW + pki.CA_VALIDITY + timedelta(days=1)) == "all"


def test_the_pass_comes_back_when_renewal_is_due() -> None:
    seconds = recheck_after_seconds(_material(), NOW)
    assert timedelta(days=59) < timedelta(seconds=seconds) <= timedelta(days=60, minutes=5)


def test_the_secret_round_trips_and_a_damaged_one_reads_as_none() -> None:
    material = _material()
    secret = build_shard_tls_secret(cluster(), material)
    assert secret["metadata"]["name"] == names.shard_tls_secret(NAME)
    assert tls_material_of(secret) == material
    secret["data"]["tls.crt"] = base64.b64encode(b"not a certificate").decode()
    assert tls_material_of(secret) is None
    assert tls_material_of(None) is None


def test_which_statefulsets_serve_tls() -> None:
    assert statefulset_serves_tls(None), "a StatefulSet still to be created serves TLS"
    assert statefulset_serves_tls({"metadata": {"annotations": {TLS_ANNOTATION: "true"}}})
    assert not statefulset_serves_tls({"metadata": {"annotations": {TLS_ANNOTATION: "false"}}})
    assert not statefulset_serves_tls({"metadata": {}}), "created before TLS existed: plain"


def test_routers_trust_the_ca_only_and_verify_the_clusters_name() -> None:
    sample = cluster()
    pod = build_router_deployment(sample)["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "shard-tls"]
    assert volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}], "never the CA key"
    command = pod["containers"][0]["command"]
    assert command[command.index("--shard-ca") + 1] == "/var/run/shardrec/shard-tls/ca.crt"
    name = command[command.index("--shard-tls-name") + 1]
    assert name == server_name(sample) == f"recs-shard.{NAMESPACE}.svc"


def _stored_material(world: World) -> TlsMaterial:
    material = tls_material_of(world.api.get(kinds.SECRET, NAMESPACE, names.shard_tls_secret(NAME)))
    assert material is not None
    return material


def test_a_new_cluster_serves_tls_and_publishes_https_urls() -> None:
    world = World()
    world.settle()
    assert world.status["phase"] == "Ready"
    for statefulset in world.api.of_kind(kinds.STATEFUL_SET):
        assert statefulset["metadata"]["annotations"][TLS_ANNOTATION] == "true"
    topology = world.topology()
    assert topology is not None and topology.active is not None
    urls = [replica.url for shard in topology.active.endpoints for replica in shard.replicas]
    assert urls and all(url.startswith("https://") for url in urls)
    first = _stored_material(world)
    assert world.reconcile().writes == 0, "a settled cluster re-issues nothing"
    assert _stored_material(world) == first


def test_the_certificate_is_renewed_by_the_same_ca_when_due() -> None:
    world = World()
    world.settle()
    first = _stored_material(world)
    world.now += timedelta(days=61)
    world.reconcile()
    second = _stored_material(world)
    assert second.ca == first.ca and second.server != first.server
    assert "CertificateIssued" in world.event_reasons()


def test_statefulsets_created_before_tls_stay_plain_and_so_do_their_urls() -> None:
    world = World()
    world.settle()
    for statefulset in world.api.of_kind(kinds.STATEFUL_SET):  # as an older operator left them
        statefulset["metadata"]["annotations"].pop(TLS_ANNOTATION)
        world.api.put(statefulset)
    world.reconcile()
    world.settle()
    for statefulset in world.api.of_kind(kinds.STATEFUL_SET):
        assert statefulset["metadata"]["annotations"][TLS_ANNOTATION] == "false"
        command = statefulset["spec"]["template"]["spec"]["containers"][0]["command"]
        assert "--tls-cert" not in command
    topology = world.topology()
    assert topology is not None and topology.active is not None
    assert all(r.url.startswith("http://") for s in topology.active.endpoints for r in s.replicas)
