"""Saved test results: one JSON file per name (``--latency-save NAME``).

``<storage>/<NAME>.json`` holds, per test id, the statistics of every metric it measured
(:func:`pyinstrument_ai.latency.bounds.summarize_metrics`), plus the machine and library
versions they were measured on: a comparison across machines is reported as such.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from collections.abc import Mapping
from typing import Any

__all__ = [
    "DEFAULT_STORAGE",
    "STORE_SCHEMA",
    "load",
    "machine",
    "path_for",
    "save",
    "versions",
]

DEFAULT_STORAGE = os.path.join(".pyinstrument-ai", "latency")
STORE_SCHEMA = 1
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
#: distributions whose versions explain a change in latency
_DISTS = (
    "pyinstrument-ai",
    "torch",
    "transformers",
    "tokenizers",
    "onnxruntime",
    "torchserve",
    "numpy",
    "pytest",
)


def path_for(storage: str, name: str, where: str = "name") -> str:
    if not name or not _NAME.match(name) or name in (".", ".."):
        raise ValueError(f"{where}: {name!r} is not a usable name (letters, digits, _ . -)")
    return os.path.join(storage, f"{name}.json")


def _cpu_model() -> str:
    # /proc/cpuinfo names the CPU on Linux; platform.processor() is often empty there
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "?"


def machine() -> dict[str, Any]:
    """Facts about this machine that change latency."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "hostname": platform.node(),
        "system": platform.system(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "python": platform.python_version(),
    }


def versions() -> dict[str, str]:
    """Installed versions of the libraries that matter (read from metadata: nothing imported)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for d in _DISTS:
        try:
            out[d] = version(d)
        except PackageNotFoundError:
            pass
    return out


def save(path: str, name: str, tests: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``tests`` (test id -> result) under ``name``; returns what was written."""
    data = {
        "schema": STORE_SCHEMA,
        "name": name,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "versions": versions(),
        "tests": dict(sorted(tests.items())),
    }
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)  # a reader never sees half a file
    return data


def load(path: str, where: str = "saved results") -> dict[str, Any]:
    """A saved file; ValueError naming ``where`` if it is missing or not ours."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{where}: no saved results at {path}") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{where}: cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("tests"), dict):
        raise ValueError(f"{where}: {path} is not a pyinstrument-ai latency file")
    if data.get("schema", 0) > STORE_SCHEMA:
        raise ValueError(f"{where}: {path} was written by a newer pyinstrument-ai")
    return data
