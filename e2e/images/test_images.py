"""The OCI archives `make images` built for the current tree (e2e/images/build.sh --paths names them):
valid OCI layouts whose digests verify, configured as the chart and the CRD expect (name, UID 10001,
entrypoint), and, unpacked and run as UID 10001 in a chroot, each image's commands work. The operator
image must not be able to import hnswlib.

Skips when the archives of this tree do not exist (run `make images`), unless SHARDREC_REQUIRE_IMAGES=1.
The chroot runs need root; without it only the archive checks run.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "shardrec-operator"
CRD = ROOT / "crds" / "recommenderclusters.shardrec.io.yaml"
UID = "10001:10001"

pytestmark = pytest.mark.images


@dataclass(frozen=True)
class Image:
    target: str
    archive: Path
    layout: Path  # the archive unpacked
    ref_name: str
    manifest: dict[str, Any]
    config: dict[str, Any]

    def blob(self, digest: str) -> Path:
        return _blob(self.layout, digest)


def _blob(layout: Path, digest: str) -> Path:
    algorithm, hex_digest = digest.split(":")
    return layout / "blobs" / algorithm / hex_digest


def _archives() -> dict[str, Path]:
    proc = subprocess.run(
        ["bash", str(ROOT / "e2e" / "images" / "build.sh"), "--paths"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return {target: Path(path) for target, path in (line.split() for line in proc.stdout.splitlines())}


def _chart_operator_image() -> str:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["image"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return f"{values['repository']}:{values['tag'] or chart['appVersion']}"


def _crd_default_image() -> str:
    crd = yaml.safe_load(CRD.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return str(spec["properties"]["image"]["default"])


EXPECTED = {
    # target: (name the default deployment uses, Entrypoint, Cmd)
    "operator": (
        _chart_operator_image,
        ["shardrec-operator"],
        ["--liveness=http://0.0.0.0:8080/healthz", "--metrics-address=0.0.0.0", "--metrics-port=9090"],
    ),
    "serving": (_crd_default_image, None, ["recctl", "--help"]),
}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Image]:
    archives = _archives()
    absent = [str(path) for path in archives.values() if not path.is_file()]
    if absent:
        message = f"no image archives for this tree ({', '.join(absent)}): run `make images`"
        if os.environ.get("SHARDREC_REQUIRE_IMAGES", "") not in ("", "0"):
            pytest.fail(f"{message} (SHARDREC_REQUIRE_IMAGES=1)")
        pytest.skip(message)
    found: dict[str, Image] = {}
    for target, archive in archives.items():
        layout = tmp_path_factory.mktemp(f"{target}-layout")
        with tarfile.open(archive) as tar:
            tar.extractall(layout, filter="data")
        index = json.loads((layout / "index.json").read_text())
        assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
        assert index["schemaVersion"] == 2
        (descriptor,) = index["manifests"]
        assert descriptor["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        manifest = _json_blob(layout, descriptor)
        config = _json_blob(layout, manifest["config"])
        ref_name = descriptor["annotations"]["org.opencontainers.image.ref.name"]
        found[target] = Image(target, archive, layout, ref_name, manifest, config)
    return found


def _json_blob(layout: Path, descriptor: dict[str, Any]) -> dict[str, Any]:
    """The JSON blob a descriptor points to, its size and digest checked."""
    path = _blob(layout, descriptor["digest"])
    data = path.read_bytes()
    assert len(data) == descriptor["size"], path
    assert f"sha256:{hashlib.sha256(data).hexdigest()}" == descriptor["digest"], path
    parsed: dict[str, Any] = json.loads(data)
    return parsed


def _layers(image: Image) -> Iterator[tuple[Path, str]]:
    """Each layer blob (digest and size checked) with the diff_id its content must have."""
    layers = image.manifest["layers"]
    diff_ids = image.config["rootfs"]["diff_ids"]
    assert len(layers) == len(diff_ids)
    for layer, diff_id in zip(layers, diff_ids, strict=True):
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
        blob = image.blob(layer["digest"])
        assert blob.stat().st_size == layer["size"]
        yield blob, diff_id


def _uncompressed_size(blob: Path, diff_id: str) -> int:
    digest, size = hashlib.sha256(), 0
    with gzip.open(blob) as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    assert f"sha256:{digest.hexdigest()}" == diff_id, blob
    return size


@pytest.mark.parametrize("target", sorted(EXPECTED))
def test_archive_is_a_valid_oci_image_configured_for_the_chart(
    images: dict[str, Image], target: str, record_property: Any
) -> None:
    image = images[target]
    name, entrypoint, cmd = EXPECTED[target]
    assert image.ref_name == name(), "the name the chart / the CRD deploy by default"
    config = image.config
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert config["config"]["User"] == UID
    assert config["config"].get("Entrypoint") == entrypoint
    assert config["config"].get("Cmd") == cmd
    assert "PATH=/opt/shardrec/bin:" in " ".join(config["config"]["Env"])
    compressed = sum(layer["size"] for layer in image.manifest["layers"])
    uncompressed = sum(_uncompressed_size(blob, diff_id) for blob, diff_id in _layers(image))
    sizes = f"{compressed / 2**20:.0f} MB compressed, {uncompressed / 2**20:.0f} MB unpacked"
    record_property(f"{target}_size", sizes)
    print(f"{target}: {sizes}")


def test_operator_image_is_smaller_than_the_data_plane(images: dict[str, Image]) -> None:
    def size(image: Image) -> int:
        return sum(layer["size"] for layer in image.manifest["layers"])

    assert size(images["operator"]) < size(images["serving"])


# ---- running them: unpack the layers into a root filesystem, chroot as UID 10001 ------------------

COMMANDS: dict[str, list[list[str]]] = {
    "serving": [
        ["shardrec-shard", "--help"],
        ["shardrec-router", "--help"],
        ["recctl", "--help"],
        ["recctl", "index", "build", "--help"],
        ["python", "-c", "import fastapi, hnswlib, kubernetes, numpy, uvicorn"],
    ],
    "operator": [
        ["shardrec-operator", "--help"],
        ["python", "-c", "import kopf, kubernetes, shardrec_operator.handlers"],
    ],
}
WHITEOUT = ".wh."


def _unpack(image: Image, rootfs: Path) -> None:
    """Apply the layers in order, with OCI whiteouts (deleted files and opaque directories)."""
    for blob, _ in _layers(image):
        with tarfile.open(blob) as tar:
            names = tar.getnames()
        for name in names:
            path = Path(name)
            if path.name == WHITEOUT + WHITEOUT + ".opq":
                target = rootfs / path.parent
                for child in target.iterdir() if target.is_dir() else []:
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
            elif path.name.startswith(WHITEOUT):
                target = rootfs / path.parent / path.name[len(WHITEOUT) :]
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                elif target.exists() or target.is_symlink():
                    target.unlink()
        subprocess.run(
            ["tar", "-xzf", blob, "-C", rootfs, "--numeric-owner", "--exclude", f"{WHITEOUT}*"],
            check=True,
            timeout=300,
        )


def _in_image(image: Image, rootfs: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(item.split("=", 1) for item in image.config["config"]["Env"])
    return subprocess.run(
        ["chroot", f"--userspec={UID}", rootfs, *argv],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("target", sorted(COMMANDS))
def test_commands_run_inside_the_image_as_uid_10001(
    images: dict[str, Image], target: str, tmp_path: Path
) -> None:
    if os.geteuid() != 0 or not shutil.which("chroot"):
        pytest.skip("running an unpacked image needs root and chroot")
    image = images[target]
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    _unpack(image, rootfs)
    assert (rootfs / "opt" / "shardrec" / "bin" / "python").is_symlink()
    for argv in COMMANDS[target]:
        proc = _in_image(image, rootfs, argv)
        assert proc.returncode == 0, f"{argv}: {proc.stdout}{proc.stderr}"
        if argv[-1] == "--help":
            assert "usage:" in proc.stdout, proc.stdout
    whoami = _in_image(image, rootfs, ["python", "-c", "import os; print(os.getuid(), os.getgid())"])
    assert whoami.stdout.split() == ["10001", "10001"]
    if target == "operator":
        proc = _in_image(image, rootfs, ["python", "-c", "import hnswlib"])
        assert proc.returncode != 0 and "No module named 'hnswlib'" in proc.stderr, proc.stderr
    compilers = [tool for tool in ("gcc", "g++", "cc", "c++") if (rootfs / "usr" / "bin" / tool).exists()]
    assert not compilers, f"a compiler in the final image: {compilers}"
