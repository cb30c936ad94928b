"""Wheels the loop half needs on a GPU machine that has a CUDA torch but no network.

    make gpu-wheels     # here (PyPI reachable): download/build into runs/gpu-wheels
    make gpu-check-loop # there: installs them (if the machine lacks them), then runs the check

``download`` fetches, with ``pip download --no-deps``, the versions this environment runs (the
ones pyproject.toml's pins resolved to here) of what the loop half imports beyond torch and the
packages a CUDA image ships (numpy, pyyaml, pyarrow, safetensors, tokenizers, huggingface-hub,
psutil, ninja, msgpack, einops, py-cpuinfo, tqdm, regex, typer): DeepSpeed and its hjson,
pydantic and its parts, and transformers (the pin is 5.19; an image may ship another).
DeepSpeed is on PyPI as an sdist only: it is built here into a pure-Python wheel with no op
compiled (DS_BUILD_OPS=0; the loop uses torch's AdamW and needs none; DeepSpeed JIT-builds an op
on first use where one is asked for). pydantic-core is the one compiled wheel, so the target
Python matters: --python-version (default 3.12, the lent H200 machine's). The total must stay
under 64 MiB, what travels with a device run (measured 2026-12-01: about 17 MiB).

``install`` (stdlib only: it runs before anything is installed) puts the carried packages this
Python lacks, or has at another version, with ``pip install --no-index --no-deps --find-links
DIR --target SITE`` into SITE, which the Makefile puts first on PYTHONPATH. It does nothing when
the folder is missing, when the wheels were built for another Python, or when every carried
package is installed at its version (a full install). SITE is emptied first, so an earlier
install never shadows this one.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Distribution names, in versions come from this environment (download).
CARRIED = ("typing-extensions", "annotated-types", "typing-inspection", "pydantic-core",
           "pydantic", "hjson", "deepspeed", "transformers")
SDIST_ONLY = {"deepspeed"}
LIMIT_BYTES = 64 * 2**20  # the device tool carries at most 64 MiB of working tree per call
LOCK = "wheels.json"  # what was downloaded, for which Python: written by download, read by install
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64")


def _dist(name: str) -> str:
    """A distribution's normalised name, from itself or from a wheel's file name."""
    return re.sub(r"[-_.]+", "-", name.split("-")[0] if name.endswith(".whl") else name).lower()


def pinned() -> dict[str, str]:
    """The carried distributions at the versions installed in this environment."""
    return {name: importlib.metadata.version(name) for name in CARRIED}


def download(folder: Path, python_version: str) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.whl"):  # one version of each: two would stop the install
        old.unlink()
    versions = pinned()
    tag = python_version.replace(".", "")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    binary = [f"{n}=={v}" for n, v in versions.items() if n not in SDIST_ONLY]
    subprocess.run([*pip, "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", python_version, "--implementation", "cp",
                    "--abi", f"cp{tag}", *(f"--platform={p}" for p in PLATFORMS),
                    "-d", str(folder), *binary], check=True)
    for name in SDIST_ONLY:
        # no build isolation: DeepSpeed's setup.py imports torch, which this venv has
        subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
                        str(folder), f"{name}=={versions[name]}"], check=True,
                       env=os.environ | {"DS_BUILD_OPS": "0"})
    wheels = sorted(folder.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    by_name = {_dist(w.name): w.name for w in wheels}
    assert sorted(by_name) == sorted(_dist(n) for n in CARRIED), (by_name, CARRIED)
    lock = {"python_version": python_version, "versions": versions, "wheels": by_name,
            "bytes": {w.name: w.stat().st_size for w in wheels}, "total_bytes": total}
    (folder / LOCK).write_text(json.dumps(lock, indent=2) + "\n")
    for w in wheels:
        print(f"  {w.stat().st_size / 2**20:6.2f} MiB  {w.name}")
    print(f"  {total / 2**20:6.2f} MiB  in all, in {folder} (limit {LIMIT_BYTES // 2**20} MiB)")
    if total > LIMIT_BYTES:
        raise SystemExit(f"the carried wheels are {total / 2**20:.1f} MiB, over the "
                         f"{LIMIT_BYTES // 2**20} MiB a device run carries")
    return lock


def missing(versions: dict[str, str]) -> list[str]:
    """Carried distributions this interpreter lacks, or has at another version."""
    out = []
    for name, version in versions.items():
        try:
            if importlib.metadata.version(name) != version:
                out.append(name)
        except importlib.metadata.PackageNotFoundError:
            out.append(name)
    return out


def install(folder: Path, target: Path) -> int:
    shutil.rmtree(target, ignore_errors=True)
    lock_path = folder / LOCK
    if not lock_path.exists():
        print(f"no carried wheels in {folder} (make gpu-wheels writes them): using what "
              f"{sys.executable} has")
        return 0
    lock = json.loads(lock_path.read_text())
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if lock["python_version"] != here:
        print(f"the wheels in {folder} are for Python {lock['python_version']}, this is {here}: "
              f"not installing them (make gpu-wheels GPU_PYVER={here})")
        return 0
    need = missing(lock["versions"])
    if not need:
        print(f"{sys.executable} has every carried package at its version: nothing to install")
        return 0
    # only what is missing: a package the machine has at the carried version stays its own
    print(f"installing {', '.join(need)} from {folder} into {target}")
    wheels = [str(folder / lock["wheels"][_dist(name)]) for name in need]
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                           "--disable-pip-version-check", "--no-index", "--no-deps",
                           "--find-links", str(folder), "--no-compile", "--no-cache-dir",
                           "--target", str(target), *wheels], check=False)
    return done.returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("download", help="fetch and build the wheels (needs PyPI)")
    d.add_argument("--dir", type=Path, required=True)
    d.add_argument("--python-version", default="3.12", help="of the GPU machine's Python")
    i = sub.add_parser("install", help="install them into --target (no network)")
    i.add_argument("--dir", type=Path, required=True)
    i.add_argument("--target", type=Path, default=Path(tempfile.gettempdir()) / "mixray-gpu-site")
    args = p.parse_args(argv)
    if args.command == "download":
        download(args.dir, args.python_version)
        return 0
    return install(args.dir, args.target)


if __name__ == "__main__":
    sys.exit(main())
