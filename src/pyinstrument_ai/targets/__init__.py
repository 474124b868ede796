"""The target registry: names -> modules that patch one library each.

A target module declares::

    NAME = "onnxruntime"                  # the name users pass to --targets / --disable
    MODULES = ("onnxruntime",)            # patch() runs when the first of these is imported
    DISTRIBUTION = "onnxruntime"          # pip distribution, for the version check
    SUPPORTED = (">=1.16", "<2")          # version range; outside it the target is skipped
    def patch(recorder) -> None: ...      # idempotent
    def unpatch() -> None: ...            # restores the original objects exactly

Built-in targets are declared here (module path, trigger modules, distribution), so a target
module is imported only once its library is: nothing of ours beyond this file runs at start-up
for a library the program never imports. Third parties add targets through the
entry-point group ``pyinstrument_ai.targets`` (``name = "package.module"``), or at run time
with :func:`register`.
"""

from __future__ import annotations

import sys

# type(sys) is types.ModuleType, without importing `types` at every auto-loaded start
ModuleType = type(sys)

ENTRY_POINT_GROUP = "pyinstrument_ai.targets"

#: name -> (module path, MODULES, DISTRIBUTION); tests check these match the modules
BUILTIN_DECLARED: dict[str, tuple[str, tuple[str, ...], str]] = {
    "transformers": (
        "pyinstrument_ai.targets.transformers",
        ("transformers.generation.utils",),
        "transformers",
    ),
    "onnxruntime": ("pyinstrument_ai.targets.onnxruntime", ("onnxruntime",), "onnxruntime"),
    "torchserve": ("pyinstrument_ai.targets.torchserve", ("ts.service",), "torchserve"),
    "asgi": (
        "pyinstrument_ai.targets.asgi",
        ("uvicorn.config", "starlette.applications"),
        "starlette",
    ),
    "wsgi": ("pyinstrument_ai.targets.wsgi", ("flask.app", "wsgiref.handlers"), "flask"),
}
BUILTIN: dict[str, str] = {name: decl[0] for name, decl in BUILTIN_DECLARED.items()}


class TargetInfo:
    """A selected target: what triggers it, and its module (imported on first need)."""

    __slots__ = ("name", "spec", "modules", "distribution", "_module")

    def __init__(self, name: str, spec: str | ModuleType) -> None:
        self.name = name
        self.spec = spec
        self._module: ModuleType | None = spec if isinstance(spec, ModuleType) else None
        decl = BUILTIN_DECLARED.get(name)
        if decl is not None and spec == decl[0]:
            self.modules, self.distribution = decl[1], decl[2]
        else:
            m = self.load()
            self.modules = tuple(getattr(m, "MODULES", ()))
            self.distribution = getattr(m, "DISTRIBUTION", None)

    def load(self) -> ModuleType:
        if self._module is None:
            self._module = load(self.spec)
        return self._module


_registered: dict[str, str | ModuleType] = {}
_entry_points: dict[str, str] | None = None


class UnknownTarget(LookupError):
    def __init__(self, names: list[str], known: list[str]) -> None:
        self.names = names
        self.known = known
        super().__init__(
            f"unknown target(s) {', '.join(names)}; known: {', '.join(sorted(known)) or 'none'}"
        )


def register(name: str, module: str | ModuleType) -> None:
    """Add (or replace) a target at run time: a module object or an importable module path."""
    _registered[name] = module


def unregister(name: str) -> None:
    _registered.pop(name, None)


def _discover_entry_points() -> dict[str, str]:
    """Entry points of group ``pyinstrument_ai.targets`` of every installed distribution.

    ``importlib.metadata.entry_points()`` would do, but importing it costs ~30-60 ms and this runs
    at every auto-loaded interpreter start; reading ``*.dist-info/entry_points.txt`` on
    ``sys.path`` ourselves costs ~1-2 ms. First distribution on ``sys.path`` wins, as in
    importlib.metadata.
    """
    global _entry_points
    if _entry_points is None:
        found: dict[str, str] = {}
        try:
            import os

            # The standard library's folders hold no distributions; listing them is a third
            # of the scan's time.
            stdlib = os.path.dirname(os.__file__)
            skip = {stdlib, os.path.join(stdlib, "lib-dynload")}
            for folder in sys.path:
                if folder not in skip:
                    _scan_folder(folder or ".", found)
        except Exception as exc:  # a broken distribution must not stop us
            from pyinstrument_ai._guard import report

            report("target entry points", exc)
        _entry_points = found
    return _entry_points


def _norm(dist: str) -> str:
    return dist.lower().replace("-", "_").replace(".", "_")


def installed_versions(dists: list[str]) -> dict[str, str]:
    """Versions of installed distributions, read from ``NAME-VERSION.dist-info`` folder names
    on ``sys.path`` (no import of the library, no importlib.metadata)."""
    import os

    wanted = {_norm(d): d for d in dists if d}
    found: dict[str, str] = {}
    for folder in sys.path:
        if len(found) == len(wanted):
            break
        try:
            names = os.listdir(folder or ".")
        except OSError:
            continue
        for name in names:
            if not name.endswith(".dist-info"):
                continue
            dist, _, version = name[: -len(".dist-info")].partition("-")
            d = wanted.get(_norm(dist))
            if d is not None and d not in found:
                found[d] = version
    return found


def _scan_folder(folder: str, found: dict[str, str]) -> None:
    import os

    try:
        names = os.listdir(folder)
    except OSError:
        return
    header = "[" + ENTRY_POINT_GROUP + "]"
    marker = header.encode()
    for name in names:
        if not (name.endswith(".dist-info") or name.endswith(".egg-info")):
            continue
        # Bytes through os.open/os.read: a text-mode open() per distribution costs 3-4x more,
        # and this runs at every auto-loaded start over every installed distribution.
        try:
            fd = os.open(os.path.join(folder, name, "entry_points.txt"), os.O_RDONLY)
        except OSError:
            continue
        try:
            chunks = []
            while chunk := os.read(fd, 16384):
                chunks.append(chunk)
        except OSError:
            continue
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if marker not in data:
            continue
        in_group = False
        for line in data.decode("utf-8", "replace").splitlines():
            line = line.strip()
            if line.startswith("["):
                in_group = line == header
            elif in_group and "=" in line and not line.startswith(("#", ";")):
                key, _, value = line.partition("=")
                found.setdefault(key.strip(), value.strip())


def registry() -> dict[str, str | ModuleType]:
    """Every known target: built-in, then entry points, then run-time registrations."""
    reg: dict[str, str | ModuleType] = dict(BUILTIN)
    reg.update(_discover_entry_points())
    reg.update(_registered)
    return reg


def select(
    enable: tuple[str, ...] | None, disable: tuple[str, ...]
) -> list[tuple[str, str | ModuleType]]:
    reg = registry()
    unknown = [n for n in (enable or ()) + disable if n not in reg]
    if unknown:
        raise UnknownTarget(unknown, list(reg))
    names = list(enable) if enable is not None else list(reg)
    return [(n, reg[n]) for n in names if n not in disable]


def load(spec: str | ModuleType) -> ModuleType:
    if isinstance(spec, ModuleType):
        return spec
    module_path, _, attr = spec.partition(":")
    module_path = module_path.strip()
    # what importlib.import_module does for an absolute name, without importing importlib
    # (and warnings) at the start of every auto-loaded process with a third-party target
    __import__(module_path)
    mod = sys.modules[module_path]
    return getattr(mod, attr.strip()) if attr else mod


def parse_version(text: str) -> tuple[int, ...]:
    """``"4.57.1"`` -> ``(4, 57, 1)``; pre-release tags are ignored (``"5.0.0rc1"`` -> 5.0.0)."""
    out = []
    for part in text.split("+")[0].split("."):
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        out.append(int(digits))
        if len(digits) != len(part):
            break
    return tuple(out)


def version_ok(version: str, supported: tuple[str, ...]) -> bool:
    import re

    v = parse_version(version)
    for spec in supported:
        m = re.fullmatch(r"\s*(>=|<=|==|<|>)\s*([\w.]+)\s*", spec)
        if not m:
            raise ValueError(f"bad version spec {spec!r}")
        op, bound = m.group(1), parse_version(m.group(2))
        n = max(len(v), len(bound))
        a, b = v + (0,) * (n - len(v)), bound + (0,) * (n - len(bound))
        ok = {
            ">=": a >= b,
            "<=": a <= b,
            "==": a == b,
            "<": a < b,
            ">": a > b,
        }[op]
        if not ok:
            return False
    return True
