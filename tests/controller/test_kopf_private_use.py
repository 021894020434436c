"""handlers.py edits one private part of kopf (the registered timer's `requires_finalizer`).

kopf has no public switch for it (nolar/kopf#896 and #1183, both closed unmerged), so kopf is
pinned to one exact version in pyproject.toml and these tests fail loudly the day the private
parts we touch, or kopf's own use of them, change shape.
"""

from __future__ import annotations

import dataclasses
import logging
from importlib.metadata import version
from pathlib import Path
from typing import Any

import kopf
import pytest

from shardrec.api import v1alpha1 as api
from shardrec_operator import handlers
from tests.controller.samples import body

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_kopf_is_pinned_to_the_version_installed() -> None:
    assert f'"kopf=={version("kopf")}"' in PYPROJECT.read_text(encoding="utf-8"), (
        "kopf must be pinned exactly: handlers._timer_needs_no_finalizer edits its private registry"
    )


def test_the_private_registry_has_the_shape_handlers_edits() -> None:
    spawning = kopf.get_default_registry()._spawning
    assert isinstance(spawning._handlers, list)
    timer = next(h for h in spawning._handlers if getattr(h, "fn", None) is handlers.reconcile_on_timer)
    assert dataclasses.is_dataclass(timer)
    assert "requires_finalizer" in {field.name for field in dataclasses.fields(timer)}


def test_kopf_itself_decides_that_a_cluster_needs_no_finalizer_for_the_timer() -> None:
    # The question kopf's processing asks before it adds a finalizer (reactor/processing.py).
    from kopf._cogs.structs import bodies, ephemera, patches, references
    from kopf._core.intents import causes

    resource = references.Resource(group=api.GROUP, version=api.VERSION, plural=api.PLURAL)
    document: dict[str, Any] = body()
    cause = causes.SpawningCause(
        logger=logging.getLogger(__name__),
        indices={},
        memo=ephemera.Memo(),
        resource=resource,
        patch=patches.Patch(),
        body=bodies.Body(document),
        reset=False,
    )
    spawning = kopf.get_default_registry()._spawning
    assert [h.fn for h in spawning.iter_handlers(cause)] == [handlers.reconcile_on_timer]
    assert spawning.requires_finalizer(cause=cause) is False


@pytest.mark.parametrize("flag", [True, False])
def test_kopf_asks_for_the_finalizer_only_for_the_artifact_cleanup(flag: bool) -> None:
    from kopf._cogs.structs import bodies, diffs, ephemera, patches, references
    from kopf._core.intents import causes

    resource = references.Resource(group=api.GROUP, version=api.VERSION, plural=api.PLURAL)
    document: dict[str, Any] = body(deleteArtifactsOnDelete=flag)
    cause = causes.ChangingCause(
        logger=logging.getLogger(__name__),
        indices={},
        memo=ephemera.Memo(),
        resource=resource,
        patch=patches.Patch(),
        body=bodies.Body(document),
        initial=False,
        reason=causes.Reason.UPDATE,
        diff=diffs.EMPTY,
        old=None,
        new=None,
    )
    assert kopf.get_default_registry()._changing.requires_finalizer(cause=cause) is flag
