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

# Annotations are strings, with no `from __future__ import annotations`: see __init__.py.

import sys

# type(sys) is types.ModuleType, without importing `types` at every auto-loaded start
ModuleType = type(sys)

ENTRY_POINT_GROUP = "pyinstrument_ai.targets"

#: name -> (module path, MODULES, DISTRIBUTION); tests check these match the modules
BUILTIN_DECLARED: "dict[str, tuple[str, tuple[str, ...], str]]" = {
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
BUILTIN: "dict[str, str]" = {name: decl[0] for name, decl in BUILTIN_DECLARED.items()}


class TargetInfo:
    """A selected target: what triggers it, and its module (imported on first need)."""

    __slots__ = ("name", "spec", "modules", "distribution", "_module")

    def __init__(self, name: str, spec: "str | ModuleType") -> None:
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

    def load(self) -> "ModuleType":
        if self._module is None:
            self._module = load(self.spec)
        return self._module


_registered: "dict[str, str | ModuleType]" = {}
_entry_points: "dict[str, str] | None" = None


class UnknownTarget(LookupError):
    def __init__(self, names: "list[str]", known: "list[str]") -> None:
        self.names = names
        self.known = known
        super().__init__(
            f"unknown target(s) {', '.join(names)}; known: {', '.join(sorted(known)) or 'none'}"
        )


def register(name: str, module: "str | ModuleType") -> None:
    """Add (or replace) a target at run time: a module object or an importable module path."""
    _registered[name] = module


def unregister(name: str) -> None:
    _registered.pop(name, None)


def _discover_entry_points() -> "dict[str, str]":
    """Entry points of group ``pyinstrument_ai.targets`` of every installed distribution.

    ``importlib.metadata.entry_points()`` would do, but importing it costs ~30-60 ms and this runs
    at every auto-loaded interpreter start. Reading ``*.dist-info/entry_points.txt`` on
    ``sys.path`` ourselves costs ~1-2 ms for a hundred distributions (an open per distribution);
    with the cache (see _ENTRY_CACHE) a folder that did not change costs one ``stat``. First
    distribution on ``sys.path`` wins, as in importlib.metadata.
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
            cache = _read_entry_cache()
            changed = False
            for folder in sys.path:
                if folder in skip:
                    continue
                entries, fresh = _folder_entries(folder or ".", cache)
                changed = changed or fresh
                for key, value in entries:
                    found.setdefault(key, value)
            if changed:
                _write_entry_cache(cache)
        except Exception as exc:  # a broken distribution must not stop us
            from pyinstrument_ai._guard import report

            report("target entry points", exc)
        _entry_points = found
    return _entry_points


# The scan's result for folders of distributions (site-packages), kept beside our bytecode in
# targets/__pycache__ (where Python caches this module's code; not written when that folder
# is missing or not writable), as lines ``D<TAB>folder<TAB>mtime_ns`` each followed by its
# ``E<TAB>name<TAB>value`` lines. A folder is taken from the cache while its modification
# time is the one recorded: installing, upgrading or removing a distribution adds or removes a
# ``.dist-info`` folder in it, which changes it. A folder modified within the last 2 s is not
# cached (a change in the same clock tick as our scan would not show). Relative entries of
# sys.path (the script's or current folder) are listed each time, never cached. Delete the
# file to force a scan.
_ENTRY_CACHE = "entry_points.cache"
_CACHE_SETTLE_NS = 2_000_000_000


def _entry_cache_path() -> str:
    import os

    return os.path.join(os.path.dirname(__file__), "__pycache__", _ENTRY_CACHE)


def _read_entry_cache() -> "dict[str, tuple[int, list[tuple[str, str]]]]":
    import os

    cache: dict[str, tuple[int, list[tuple[str, str]]]] = {}
    try:
        fd = os.open(_entry_cache_path(), os.O_RDONLY)
    except OSError:
        return cache
    try:
        data = os.read(fd, 1 << 20).decode("utf-8", "replace")
    except OSError:
        return cache
    finally:
        os.close(fd)
    entries: list[tuple[str, str]] | None = None
    for line in data.split("\n"):
        parts = line.split("\t")
        if len(parts) != 3:
            continue  # blank or damaged: that folder is scanned again
        if parts[0] == "D":
            entries = None  # a damaged folder line: its entries are dropped with it
            if parts[2].isdigit():
                entries = []
                cache[parts[1]] = (int(parts[2]), entries)
        elif parts[0] == "E" and entries is not None:
            entries.append((parts[1], parts[2]))
    return cache


def _write_entry_cache(cache: "dict[str, tuple[int, list[tuple[str, str]]]]") -> None:
    import os

    lines = []
    for folder, (mtime, entries) in cache.items():
        if "\t" in folder or "\n" in folder:
            continue
        lines.append(f"D\t{folder}\t{mtime}")
        lines.extend(f"E\t{k}\t{v}" for k, v in entries if "\t" not in k + v)
    path = _entry_cache_path()
    tmp = f"{path}.{os.getpid()}.tmp"
    try:  # written aside, then renamed: a reader sees the old file or the new one
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, path)
    except OSError:  # read-only install, no __pycache__: scan at each start
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _folder_entries(
    folder: str, cache: "dict[str, tuple[int, list[tuple[str, str]]]]"
) -> "tuple[list[tuple[str, str]], bool]":
    """The folder's entries of our group, and whether the cache changed."""
    import os
    import time

    if not os.path.isabs(folder):
        return _scan_folder(folder)[0], False
    try:
        mtime = os.stat(folder).st_mtime_ns
    except OSError:
        return [], False
    hit = cache.get(folder)
    if hit is not None and hit[0] == mtime:
        return hit[1], False
    entries, has_dists = _scan_folder(folder)
    if has_dists and time.time_ns() - mtime > _CACHE_SETTLE_NS:
        cache[folder] = (mtime, entries)
        return entries, True
    if hit is not None:
        del cache[folder]
        return entries, True
    return entries, False


def _norm(dist: str) -> str:
    return dist.lower().replace("-", "_").replace(".", "_")


def installed_versions(dists: "list[str]") -> "dict[str, str]":
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


def _scan_folder(folder: str) -> "tuple[list[tuple[str, str]], bool]":
    """Entries of our group declared by the distributions in ``folder``, and whether it holds
    any distribution."""
    import os

    entries: list[tuple[str, str]] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return entries, False
    header = "[" + ENTRY_POINT_GROUP + "]"
    marker = header.encode()
    prefix = folder + os.sep
    has_dists = False
    for name in names:
        if not name.endswith((".dist-info", ".egg-info")):
            continue
        has_dists = True
        # Bytes through os.open/os.read: a text-mode open() per distribution costs 3-4x more,
        # and this runs over every installed distribution when the cache cannot answer.
        try:
            fd = os.open(prefix + name + "/entry_points.txt", os.O_RDONLY)
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
                entries.append((key.strip(), value.strip()))
    return entries, has_dists


def registry() -> "dict[str, str | ModuleType]":
    """Every known target: built-in, then entry points, then run-time registrations."""
    reg: dict[str, str | ModuleType] = dict(BUILTIN)
    reg.update(_discover_entry_points())
    reg.update(_registered)
    return reg


def select(
    enable: "tuple[str, ...] | None", disable: "tuple[str, ...]"
) -> "list[tuple[str, str | ModuleType]]":
    reg = registry()
    unknown = [n for n in (enable or ()) + disable if n not in reg]
    if unknown:
        raise UnknownTarget(unknown, list(reg))
    names = list(enable) if enable is not None else list(reg)
    return [(n, reg[n]) for n in names if n not in disable]


def load(spec: "str | ModuleType") -> "ModuleType":
    if isinstance(spec, ModuleType):
        return spec
    module_path, _, attr = spec.partition(":")
    module_path = module_path.strip()
    # what importlib.import_module does for an absolute name, without importing importlib
    # (and warnings) at the start of every auto-loaded process with a third-party target
    __import__(module_path)
    mod = sys.modules[module_path]
    return getattr(mod, attr.strip()) if attr else mod


def parse_version(text: str) -> "tuple[int, ...]":
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


def version_ok(version: str, supported: "tuple[str, ...]") -> bool:
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
