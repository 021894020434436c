"""S3 client libraries for partition downloads: `python benchmarks/objectstore_bench.py [--mb 1024]`
(also part of `make bench-objectstore`). Writes its table into docs/benchmarks.md between the
objectstore markers.

One object of `--mb` MiB (random bytes) is uploaded to a real SeaweedFS S3 gateway on 127.0.0.1
(e2e/objectstore/seaweed.py), then each library downloads it to a local file, as a shard pod's init
container would, in its own fresh process (imports excluded from the numbers):

- boto3: `client.download_file` (s3transfer: ranged GETs on 10 threads by default)
- obstore: `obstore.get(...).stream()` written to the file (Rust object_store, one GET)
- s3fs: `S3FileSystem.get` (aiobotocore)

After one untimed warm-up download, rounds are interleaved (A, B, C, C, B, A, ...) so noise from
the shared machine hits all; each row is the median over rounds of wall MiB/s and process CPU
seconds (all threads, user + system) per GiB, plus the SeaweedFS server's CPU per GiB alongside.
The downloaded file's sha256 is checked every time. boto3 and s3fs pin python-dateutil<3
(botocore), which the kubernetes client of the project's venv refuses, so the workers run in a
separate venv (`.state/bench-s3-venv`, made on first use with pip) holding only the three
libraries.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, write_marked_section

BEGIN = (
    "<!-- objectstore:begin (written by `python benchmarks/objectstore_bench.py`; "
    "edit the script, not this) -->"
)
END = "<!-- objectstore:end -->"
LIBRARIES = ("boto3", "obstore", "s3fs")
UPLOAD = (
    "import obstore, os, sys; from obstore.store import S3Store; "
    "s = S3Store('bench', config={'endpoint': sys.argv[1], 'region': 'us-east-1', "
    "'access_key_id': os.environ['AWS_ACCESS_KEY_ID'], 'secret_access_key': "
    "os.environ['AWS_SECRET_ACCESS_KEY'], 'virtual_hosted_style_request': False}, "
    "client_options={'allow_http': True}); obstore.put(s, 'partition.bin', open(sys.argv[2], 'rb'))"
)
VENV = REPO / ".state" / "bench-s3-venv"
REQUIREMENTS = ["obstore", "s3fs"]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

WORKER = r"""
import hashlib, json, os, sys, time
library, endpoint, bucket, key, dest = sys.argv[1:6]
access, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
if library == "boto3":
    import boto3
    from botocore.config import Config
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=access, aws_secret_access_key=secret,
                          config=Config(s3={"addressing_style": "path"}))
    def run():
        client.download_file(bucket, key, dest)
elif library == "obstore":
    import obstore
    from obstore.store import S3Store
    store = S3Store(bucket, config={"endpoint": endpoint, "region": "us-east-1", "access_key_id": access,
                                    "secret_access_key": secret, "virtual_hosted_style_request": False},
                    client_options={"allow_http": True})
    def run():
        with open(dest, "wb") as out:
            for chunk in obstore.get(store, key).stream(min_chunk_size=8 << 20):
                out.write(chunk)
elif library == "s3fs":
    import s3fs
    fs = s3fs.S3FileSystem(key=access, secret=secret, client_kwargs={"endpoint_url": endpoint,
                           "region_name": "us-east-1"}, config_kwargs={"s3": {"addressing_style": "path"}})
    def run():
        fs.get(f"{bucket}/{key}", dest)
else:
    raise SystemExit(f"unknown library {library}")
wall0, cpu0 = time.perf_counter(), time.process_time()
run()
wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
digest = hashlib.sha256()
with open(dest, "rb") as handle:
    while chunk := handle.read(8 << 20):
        digest.update(chunk)
print(json.dumps({"wall": wall, "cpu": cpu, "sha256": digest.hexdigest(), "bytes": os.path.getsize(dest)}))
"""


def load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def bench_python() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *REQUIREMENTS], check=True)
        # s3fs's aiobotocore pins botocore tightly: take the boto3 of exactly that botocore.
        botocore = subprocess.run(
            [str(python), "-c", "import botocore; print(botocore.__version__)"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "boto3", f"botocore=={botocore}"], check=True
        )
    return python


def versions(python: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json; "
        f"print(json.dumps({{n: m.version(n) for n in {list(LIBRARIES)!r}}}))"
    )
    return dict(
        json.loads(
            subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout
        )
    )


def server_cpu(pid: int) -> float:
    """CPU seconds of the weed process (it runs master, volume, filer and S3 gateway in one)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def make_object(path: Path, mib: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for _ in range(mib):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


Samples = dict[str, list[tuple[float, float, float]]]


def measure(args: argparse.Namespace, python: Path) -> Samples:
    """Upload one object, then download it with each library, rounds interleaved."""
    seaweed = load("shardrec_e2e_seaweed", REPO / "e2e" / "objectstore" / "seaweed.py")
    args.work.mkdir(parents=True, exist_ok=True)
    source = args.work / "object.bin"
    expected = make_object(source, args.mb)
    size = source.stat().st_size
    gib = size / (1 << 30)
    samples: Samples = {name: [] for name in LIBRARIES}
    with seaweed.SeaweedS3.start(seaweed.find_weed(), args.work / "seaweedfs") as s3:
        s3.create_bucket("bench")
        env = {**os.environ, **s3.client_env()}
        subprocess.run([str(python), "-c", UPLOAD, s3.endpoint, str(source)], env=env, check=True)
        source.unlink()
        assert s3.process is not None
        # One untimed download first: the first read of a fresh object also warms SeaweedFS (its
        # volume file into the page cache), which would otherwise count against whoever goes first.
        warm = args.work / "warm.bin"
        subprocess.run(
            [str(python), "-c", WORKER, "obstore", s3.endpoint, "bench", "partition.bin", str(warm)],
            env=env, capture_output=True, check=True,
        )  # fmt: skip
        warm.unlink()
        for round_number in range(args.rounds):
            for library in LIBRARIES if round_number % 2 == 0 else LIBRARIES[::-1]:
                dest = args.work / f"download-{library}.bin"
                dest.unlink(missing_ok=True)
                before = server_cpu(s3.process.pid)
                out = subprocess.run(
                    [str(python), "-c", WORKER, library, s3.endpoint, "bench", "partition.bin", str(dest)],
                    env=env, capture_output=True, text=True, check=True,
                )  # fmt: skip
                served = server_cpu(s3.process.pid) - before
                result = json.loads(out.stdout.strip().splitlines()[-1])
                dest.unlink()
                if result["sha256"] != expected or result["bytes"] != size:
                    raise SystemExit(f"{library}: downloaded bytes differ from the object")
                sample = (size / (1 << 20) / result["wall"], result["cpu"] / gib, served / gib)
                samples[library].append(sample)
                print(f"{library}: {sample[0]:.0f} MiB/s, {sample[1]:.2f} client CPU s/GiB")
    return samples


def render(args: argparse.Namespace, libs: dict[str, str], samples: Samples) -> str:
    rows = []
    for library in LIBRARIES:
        rates, cpus, servers = zip(*samples[library], strict=True)
        rows.append(
            f"| {library} {libs[library]} | {statistics.median(rates):.0f} "
            f"| {min(rates):.0f}-{max(rates):.0f} | {statistics.median(cpus):.2f} "
            f"| {statistics.median(servers):.2f} |"
        )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            BEGIN,
            "### S3 client libraries: one partition download from SeaweedFS",
            "",
            f"`python benchmarks/objectstore_bench.py --mb {args.mb} --rounds {args.rounds}` on {stamp}, "
            f"{os.cpu_count()} CPUs ({platform.machine()}), Python {platform.python_version()}, SeaweedFS "
            f"(e2e/objectstore/versions.env) on 127.0.0.1 sharing the machine. One {args.mb} MiB object "
            "downloaded to a local file by each library in a fresh process; medians over the rounds. "
            "Client CPU = user + system of the downloading process (all threads), per GiB; server CPU = "
            "the weed process, per GiB.",
            "",
            "| library | MiB/s (median) | MiB/s (range) | client CPU s/GiB | server CPU s/GiB |",
            "|---|---:|---:|---:|---:|",
            *rows,
            END,
        ]
    )


def write(section: str) -> None:
    doc = REPO / "docs" / "benchmarks.md"
    write_marked_section(doc, section)
    print(f"wrote {doc}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=1024, help="object size in MiB (default 1024)")
    parser.add_argument("--rounds", type=int, default=5, help="downloads per library (default 5)")
    parser.add_argument("--work", type=Path, default=REPO / ".state" / "bench-objectstore")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()
    python = bench_python()
    section = render(args, versions(python), measure(args, python))
    print(section)
    if not args.no_write:
        write(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
