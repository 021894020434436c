"""Scenario 16: the operator provisions the cluster's shard token Secret and its TLS Secret (CA and
shard certificate), owned by the cluster and mounted into shard and router pods; the topology names
https:// shards; the token rotation starts when asked (accept the new token first, keep sending
the old one)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from shardrec.api import pki
from shardrec_operator.reconcile import resources as kinds

pytestmark = [pytest.mark.controlplane]


def _decoded(secret: dict[str, Any], key: str) -> list[str]:
    return base64.b64decode(secret["data"][key]).decode().split()


def _the_ca_secret_is_owned_and_the_topology_says_https(scenario: Any) -> None:
    stored = scenario.kube.get(kinds.SECRET.path(scenario.namespace, f"{scenario.name}-shard-tls"))
    assert stored is not None
    (owner,) = stored["metadata"]["ownerReferences"]
    assert owner["uid"] == scenario.body()["metadata"]["uid"]
    assert sorted(stored["data"]) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]
    cert = base64.b64decode(stored["data"]["tls.crt"])
    assert pki.dns_names(cert) == [f"{scenario.name}-shard.{scenario.namespace}.svc"]
    assert pki.signed_by(cert, base64.b64decode(stored["data"]["ca.crt"]))
    topology = scenario.topology()
    assert topology is not None
    urls = [r["url"] for s in topology["active"]["endpoints"] for r in s["replicas"]]
    assert urls and all(url.startswith("https://") for url in urls), urls


def test_the_token_secret_exists_is_owned_and_mounted(scenario: Any, harness: Any) -> None:
    seen: dict[str, Any] = {}
    secret_name = f"{scenario.name}-shard-token"

    def secret() -> dict[str, Any]:
        found: dict[str, Any] | None = scenario.kube.get(kinds.SECRET.path(scenario.namespace, secret_name))
        assert found is not None, f"no Secret {secret_name}"
        return found

    def the_secret_is_owned_by_the_cluster() -> None:
        scenario.wait_ready("v1")
        stored = secret()
        (owner,) = stored["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"]) == (
            "RecommenderCluster",
            scenario.body()["metadata"]["uid"],
            True,
        )
        send, accepted = _decoded(stored, "send"), _decoded(stored, "accepted")
        assert len(send) == 1 and len(send[0]) == 64 and accepted == send
        assert stored["metadata"]["annotations"]["shardrec.io/token-phase"] == "stable"
        seen["token"] = send[0]

    def shard_and_router_pods_mount_it() -> None:
        pods = scenario.children(kinds.POD)
        shards = [p for p in pods if p["metadata"]["labels"].get("app.kubernetes.io/component") == "shard"]
        routers = [p for p in pods if p["metadata"]["labels"].get("app.kubernetes.io/component") == "router"]
        assert shards and routers, [p["metadata"]["name"] for p in pods]
        for pod, key, flag in [(p, "accepted", "--admin-token-file") for p in shards] + [
            (p, "send", "--shard-token-file") for p in routers
        ]:
            (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "shard-token"]
            assert volume["secret"]["secretName"] == secret_name
            assert [item["key"] for item in volume["secret"]["items"]] == [key]
            command = pod["spec"]["containers"][0]["command"]
            assert command[command.index(flag) + 1] == f"/var/run/shardrec/shard-token/{key}"
        # TLS: shards mount their certificate and key, routers the CA certificate only.
        for pod, keys in [(p, ["tls.crt", "tls.key"]) for p in shards] + [(p, ["ca.crt"]) for p in routers]:
            (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "shard-tls"]
            assert volume["secret"]["secretName"] == f"{scenario.name}-shard-tls"
            assert [item["key"] for item in volume["secret"]["items"]] == keys

    def the_token_survives_passes() -> None:
        before = secret()["metadata"]["resourceVersion"]
        scenario.operator.stop()
        scenario.operator.start()  # a new process, a full pass, nothing to change
        scenario.wait_ready("v1")
        after = secret()
        assert _decoded(after, "send") == [seen["token"]]
        assert after["metadata"]["resourceVersion"] == before

    def a_rotation_first_accepts_the_new_token() -> None:
        scenario.kube.kubectl(
            "-n", scenario.namespace, "annotate", "recommenderclusters", scenario.name,
            "shardrec.io/rotate-shard-token=1", "--overwrite",
        )  # fmt: skip

        def accepting() -> bool:
            return bool(secret()["metadata"]["annotations"]["shardrec.io/token-phase"] == "accepting")

        harness.wait_for("the Secret to enter the accepting phase", accepting, timeout=60)
        stored = secret()
        accepted = _decoded(stored, "accepted")
        assert _decoded(stored, "send") == [seen["token"]], "the old token is still the one sent"
        assert accepted[0] == seen["token"] and len(accepted) == 2 and accepted[1] != seen["token"]

    scenario.create()
    scenario.run(
        [
            ("the Secret exists, owned by the cluster, one 64-hex token", the_secret_is_owned_by_the_cluster),
            ("shard pods mount `accepted`, router pods `send`", shard_and_router_pods_mount_it),
            (
                "the TLS Secret is owned, its certificate names the cluster, URLs are https",
                lambda: _the_ca_secret_is_owned_and_the_topology_says_https(scenario),
            ),
            ("an operator restart keeps the token (no write)", the_token_survives_passes),
            (
                "the rotate annotation starts a rotation: accept new, send old",
                a_rotation_first_accepts_the_new_token,
            ),
        ]
    )
