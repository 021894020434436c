"""Namespaced operators do not scan the cluster: kopf's `settings.scanning.disabled`.

With `--namespace`, the chart grants no cluster-wide list of Namespaces or CustomResourceDefinitions.
kopf lists both at startup unless scanning is disabled, retries each forbidden list through its whole
error backoff (54 s), then falls back to the given namespaces: the first reconcile came about a minute
after the operator pod was Ready (measured on the real node, e2e/node/README.md). Cluster-wide
operators keep scanning (they may list both, and then notice CRDs installed after they start).
"""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from shardrec_operator import handlers, main


def configured(memo: dict[str, Any]) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    handlers.configure(settings=settings, memo=kopf.Memo({"runtime": object(), **memo}))
    return settings


def test_a_namespaced_operator_does_not_scan_namespaces_or_crds() -> None:
    assert configured({"namespaced": True}).scanning.disabled is True


def test_a_cluster_wide_operator_scans() -> None:
    assert configured({"namespaced": False}).scanning.disabled is False
    assert configured({}).scanning.disabled is False  # a memo from elsewhere (tests) keeps kopf's default


@pytest.mark.parametrize(
    ("argv", "namespaced"), [(["--namespace", "a", "--namespace", "b"], True), ([], False)]
)
def test_main_tells_the_startup_handler_whether_it_is_namespaced(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], namespaced: bool
) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(main, "load_api_client", lambda kubeconfig: None)
    monkeypatch.setattr(main, "KubernetesClusterApi", lambda client: object())
    monkeypatch.setattr(main.kopf, "run", lambda **kwargs: seen.update(kwargs))
    assert main.main([*argv, "--metrics-port", "0"]) == 0
    assert seen["memo"]["namespaced"] is namespaced
    assert seen["clusterwide"] is not namespaced
    assert configured(dict(seen["memo"])).scanning.disabled is namespaced
