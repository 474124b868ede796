"""Build hook: compiles the optional C speedups (src/pyinstrument_ai/_speedups.c) into the wheel.

The package works without them (``pyinstrument_ai._native`` then picks the Python
references), so a machine with no C compiler or no Python headers still installs: the hook
says so in the build log and builds a pure-Python wheel. With them, the wheel is tagged for
this interpreter and platform. An editable install (``pip install -e .``) compiles the module
next to its source, as ``build_ext --inplace`` does. ``PYINSTRUMENT_AI_BUILD_PURE=1`` skips
the compile (to check the pure-Python install).

setuptools drives the compiler (the platform's flags, MSVC on Windows); it is a build
requirement only, never imported at run time.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import tempfile
from typing import Any

try:
    from hatchling.builders.hooks.plugin.interface import BuildHookInterface
except ImportError:  # imported for _compile alone (benchmarks/web_ablations.py), not building
    BuildHookInterface = object  # type: ignore[assignment,misc]

MODULE = "pyinstrument_ai._speedups"
SOURCE = os.path.join("src", "pyinstrument_ai", "_speedups.c")


def _compile(root: str, out_dir: str) -> str:
    """Compile the module into ``out_dir`` and return the built file's path."""
    from setuptools import Distribution, Extension
    from setuptools.command.build_ext import build_ext

    ext = Extension(MODULE, [os.path.join(root, SOURCE)], optional=False)
    dist = Distribution({"name": "pyinstrument-ai", "ext_modules": [ext]})
    cmd = build_ext(dist)
    cmd.build_lib = out_dir
    cmd.build_temp = os.path.join(out_dir, "temp")
    cmd.ensure_finalized()
    cmd.run()
    return cmd.get_ext_fullpath(MODULE)


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        if os.environ.get("PYINSTRUMENT_AI_BUILD_PURE", "").strip().lower() in (
            "1",
            "true",
            "yes",
            "on",
        ):
            self.app.display_info("pyinstrument-ai: PYINSTRUMENT_AI_BUILD_PURE set: no C speedups")
            return
        tmp = tempfile.mkdtemp(prefix="pyinstrument-ai-build-")
        try:
            built = _compile(self.root, tmp)
        except Exception as exc:  # no compiler, no headers: the Python references will do
            self.app.display_warning(
                f"pyinstrument-ai: the C speedups were not built ({type(exc).__name__}: {exc}); "
                "the package works without them, with more overhead per HTTP request and per "
                "event written (docs/overhead.md)"
            )
            shutil.rmtree(tmp, ignore_errors=True)
            return
        name = os.path.basename(built)
        if version == "editable":
            # the editable install imports from src/: the module goes beside its source
            # by rename, not in place: a running process may have the old file mapped
            dest = os.path.join(self.root, "src", "pyinstrument_ai", name)
            shutil.copy2(built, dest + ".tmp")
            os.replace(dest + ".tmp", dest)
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            build_data["force_include"][built] = f"pyinstrument_ai/{name}"
            self._tmp = tmp
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        self.app.display_info(
            f"pyinstrument-ai: built {name} ({sysconfig.get_platform()}, "
            f"Python {sys.version.split()[0]})"
        )

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        tmp = getattr(self, "_tmp", None)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
