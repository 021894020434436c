"""The external-cluster mode without a cluster: the context guard, the context pinning, the kind
config, and the suite's refusals and skips (run as a pytest subprocess, never reaching a server)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import yaml

from shardrec.serving.index.embeddings import load_embeddings

ROOT = Path(__file__).resolve().parents[2]
E2E = ROOT / "e2e"


def _load(name: str, path: Path) -> ModuleType:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


external = _load("shardrec_e2e_external_cluster", E2E / "operator" / "external_cluster.py")
kind_config = _load("shardrec_e2e_kind_config", E2E / "kind" / "kind_config.py")


def _kubeconfig(path: Path, current: str, contexts: tuple[str, ...] = ("prod", "kind-e2e")) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": c, "cluster": {"server": f"https://127.0.0.1:{9 + i}"}}
                    for i, c in enumerate(contexts)
                ],
                "users": [{"name": c, "user": {"token": f"token-of-{c}"}} for c in contexts],
                "contexts": [{"name": c, "context": {"cluster": c, "user": c}} for c in contexts],
                "current-context": current,
            }
        )
    )
    return path


def test_without_the_variable_the_local_control_plane_is_used() -> None:
    assert external.guarded_kubeconfig({}) is None
    assert external.guarded_kubeconfig({external.CONTEXT_ENV: "kind-e2e"}) is None


def test_the_guard_demands_the_context_be_named(tmp_path: Path) -> None:
    config = _kubeconfig(tmp_path / "kc", current="kind-e2e")
    with pytest.raises(external.ContextGuardError, match="SHARDREC_E2E_CONTEXT is not"):
        external.guarded_kubeconfig({external.KUBECONFIG_ENV: str(config)})


def test_the_guard_refuses_another_current_context(tmp_path: Path) -> None:
    config = _kubeconfig(tmp_path / "kc", current="prod")
    env = {external.KUBECONFIG_ENV: str(config), external.CONTEXT_ENV: "kind-e2e"}
    with pytest.raises(external.ContextGuardError, match=r"current context is 'prod'.*'kind-e2e'"):
        external.guarded_kubeconfig(env)


def test_the_guard_passes_the_named_current_context(tmp_path: Path) -> None:
    config = _kubeconfig(tmp_path / "kc", current="kind-e2e")
    env = {external.KUBECONFIG_ENV: str(config), external.CONTEXT_ENV: "kind-e2e"}
    assert external.guarded_kubeconfig(env) == (config.resolve(), "kind-e2e")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "cannot read it"),
        ("[unclosed", "not YAML"),
        ("- a list", "not a kubeconfig"),
        ("contexts: []\n", "has no current-context"),
        ("current-context: ghost\ncontexts: [{name: kind-e2e}]\n", "'ghost' is not among its contexts"),
    ],
)
def test_the_guard_names_a_broken_kubeconfig(tmp_path: Path, text: str | None, message: str) -> None:
    config = tmp_path / "kc"
    if text is not None:
        config.write_text(text)
    env = {external.KUBECONFIG_ENV: str(config), external.CONTEXT_ENV: "kind-e2e"}
    with pytest.raises(external.ContextGuardError, match=message):
        external.guarded_kubeconfig(env)


def test_the_guard_wants_one_file_not_a_list(tmp_path: Path) -> None:
    env = {external.KUBECONFIG_ENV: f"{tmp_path}/a{os.pathsep}{tmp_path}/b", external.CONTEXT_ENV: "x"}
    with pytest.raises(external.ContextGuardError, match="one file"):
        external.guarded_kubeconfig(env)


def _kubectl_or_skip() -> str:
    try:
        return str(external.find_kubectl(os.environ))
    except external.ContextGuardError as error:
        pytest.skip(str(error))


def test_the_cluster_is_pinned_to_the_guarded_context(tmp_path: Path) -> None:
    """The copy the operator and the REST client read holds the guarded context and nothing else."""
    source = _kubeconfig(tmp_path / "kc", current="kind-e2e")
    cluster = external.ExternalCluster.open(source, "kind-e2e", _kubectl_or_skip(), tmp_path / "pinned")
    try:
        pinned = yaml.safe_load(cluster.kubeconfig.read_text())
        assert pinned["current-context"] == "kind-e2e"
        assert [c["name"] for c in pinned["contexts"]] == ["kind-e2e"]
        assert "token-of-prod" not in cluster.kubeconfig.read_text()
        assert cluster.kubeconfig.stat().st_mode & 0o077 == 0, "credentials readable by others"
        argv = cluster.kubectl_command("get", "pods")
        assert argv[1:] == [f"--kubeconfig={cluster.kubeconfig}", "--context=kind-e2e", "get", "pods"]
    finally:
        cluster.close()


def test_the_store_is_seeded_writable_with_valid_embeddings(tmp_path: Path) -> None:
    env = {
        external.IMAGE_ENV: "shardrec/shardrec:kind-e2e",
        external.STORE_NODE_DIR_ENV: "/shardrec-store/",
        external.STORE_HOST_DIR_ENV: str(tmp_path),
    }
    data_plane = external.DataPlane.from_env(env)
    assert data_plane is not None and data_plane.node_path("e2e-1") == "/shardrec-store/e2e-1"
    directory = external.seed_store(data_plane, "e2e-1", "/embeddings/movielens", 32)
    assert directory == tmp_path / "e2e-1" / "embeddings" / "movielens"
    assert (tmp_path / "e2e-1").stat().st_mode & 0o777 == 0o777, "pods (uid 10001) must write here"
    embeddings = load_embeddings(directory)
    assert embeddings.items.shape == (400, 32) and embeddings.items.dtype == np.float32
    assert external.DataPlane.from_env({**env, external.IMAGE_ENV: ""}) is None
    with pytest.raises(ValueError, match="SHARDREC_E2E_STORE_NODE_DIR"):
        external.DataPlane.from_env({**env, external.STORE_NODE_DIR_ENV: "relative"})


def test_the_kind_config_has_two_zones_and_a_shared_store_on_every_worker(tmp_path: Path) -> None:
    config = yaml.safe_load(kind_config.CONFIG.read_text())
    kind_config.check(config)
    rendered = kind_config.render(config, tmp_path)
    workers = [n for n in rendered["nodes"] if n["role"] == "worker"]
    assert sorted(w["labels"][kind_config.ZONE_LABEL] for w in workers) == ["zone-a", "zone-b"]
    assert {m["hostPath"] for w in workers for m in w["extraMounts"]} == {str(tmp_path)}
    assert config["nodes"][1]["extraMounts"][0]["hostPath"] != str(tmp_path), "the input is left alone"
    one_zone = yaml.safe_load(kind_config.CONFIG.read_text())
    for node in one_zone["nodes"][1:]:
        node["labels"][kind_config.ZONE_LABEL] = "zone-a"
    with pytest.raises(kind_config.KindConfigError, match="two zones"):
        kind_config.check(one_zone)
    no_store = yaml.safe_load(kind_config.CONFIG.read_text())
    del no_store["nodes"][2]["extraMounts"]
    with pytest.raises(kind_config.KindConfigError, match=r"nodes\[2\].extraMounts"):
        kind_config.check(no_store)


def _pytest(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SHARDREC_E2E_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_suite_refuses_to_start_against_an_unconfirmed_context(tmp_path: Path) -> None:
    config = _kubeconfig(tmp_path / "kc", current="prod")
    env = {external.KUBECONFIG_ENV: str(config), external.CONTEXT_ENV: "kind-e2e"}
    result = _pytest(["e2e/operator/test_01_crd.py"], env)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "refusing to run the e2e suite" in output and "'prod'" in output, output
    assert " passed" not in output


def test_the_suite_skips_kwok_only_and_real_pod_tests_with_their_reasons(tmp_path: Path) -> None:
    if shutil.which("kubectl") is None and not os.environ.get(external.KUBECTL_ENV):
        _kubectl_or_skip()
    config = _kubeconfig(tmp_path / "kc", current="kind-e2e")
    env = {external.KUBECONFIG_ENV: str(config), external.CONTEXT_ENV: "kind-e2e"}
    result = _pytest(["e2e/operator/test_04_rebalance.py", "e2e/operator/test_05_failover.py"], env)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "4 skipped" in output, output
    assert "external cluster: cordons the nodes labelled type=kwok" in output
    assert "external cluster: loses a node by taking it away from kwok" in output
    assert "external cluster: makes every node NotReady by taking them away from kwok" in output
    assert "external cluster: needs real pods on the external cluster: set SHARDREC_E2E_IMAGE" in output
