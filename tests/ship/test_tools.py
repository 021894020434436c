"""tests/ship/tools.py finds the pinned helm where e2e/tools/build-helm.sh caches it: under
$SHARDREC_CACHE, which e2e/tools/cache-env.sh defaults to ~/.cache/shardrec when unset or empty."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ship.tools import helm_candidates, read_tool_versions


def _cached_helm(root: Path) -> Path:
    helm = root / "tools" / f"helm-{read_tool_versions()['HELM_VERSION']}-go1.0" / "helm"
    helm.parent.mkdir(parents=True)
    helm.write_text("#!/bin/sh\n")
    return helm


@pytest.mark.parametrize("setting", ["unset", "empty"])
def test_an_unset_or_empty_cache_root_means_the_default_one(
    setting: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SHARDREC_HELM", raising=False)
    if setting == "unset":
        monkeypatch.delenv("SHARDREC_CACHE", raising=False)
    else:
        monkeypatch.setenv("SHARDREC_CACHE", "")
    helm = _cached_helm(tmp_path / ".cache" / "shardrec")
    assert helm in helm_candidates()


def test_a_set_cache_root_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHARDREC_HELM", raising=False)
    monkeypatch.setenv("SHARDREC_CACHE", str(tmp_path / "cold"))
    assert _cached_helm(tmp_path / "cold") in helm_candidates()
