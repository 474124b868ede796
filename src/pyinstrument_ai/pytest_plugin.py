"""pytest plugin: latency bounds on real inference, a recording fixture, saved results to compare.

Registered through the ``pytest11`` entry point (``-p no:pyinstrument_ai`` turns it off). Thin on
purpose: options, the ``latency`` marker, the ``instrument`` fixture and the hooks that connect
them to :mod:`pyinstrument_ai.latency` (bounds, windows, saved results) and through it to
:mod:`pyinstrument_ai.analysis` (every number).

pytest loads this module in every project where pyinstrument-ai is installed, so it imports
nothing at import time beyond ``os``, ``sys`` and pytest, and a test with neither the marker nor the
fixture costs one marker lookup. Docs: ``docs/pytest.md``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

MARKER = "latency"
#: key of the per-test results in ``report.user_properties`` (how they reach xdist's controller)
PROPERTY = "pyinstrument_ai.latency"
ENV_WARMUP = "PYINSTRUMENT_AI_LATENCY_WARMUP"
ENV_REPEAT = "PYINSTRUMENT_AI_LATENCY_REPEAT"
ENV_STORAGE = "PYINSTRUMENT_AI_LATENCY_STORAGE"
DEFAULT_OUT = "instrument-out"
_WORKER_KEY = "pyinstrument_ai"


class _State:
    """What this pytest process resolved at configure time, and what it collected since."""

    def __init__(self) -> None:
        self.warmup = 0
        self.repeat = 1
        self.storage: str | None = None
        self.save_path: str | None = None
        self.save_name: str | None = None
        self.compare_name: str | None = None
        self.compare_path: str | None = None
        self.baseline: dict[str, Any] | None = None
        self.fail_specs: list[Any] = []
        self.out_dir: str | None = None  # --instrument
        self.run_id: str | None = None
        self.own_session = False
        # a test's window between its call and its report: the call can end the session
        # instead (pytest.exit(), Ctrl-C), and the window's own session must end with it
        self.open_window: Any = None
        self.results: dict[str, dict[str, Any]] = {}  # test id -> result (controller side)


_STATE = pytest.StashKey[_State]()
_SPEC = pytest.StashKey[Any]()
_WINDOW = pytest.StashKey[Any]()
_WANTS = pytest.StashKey[bool]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pyinstrument-ai", "pyinstrument-ai: latency of inference in tests")
    group.addoption(
        "--instrument",
        nargs="?",
        const=DEFAULT_OUT,
        default=None,
        metavar="DIR",
        dest="pyinstrument_ai_out",
        help="record the whole test session to JSONL in DIR (default ./instrument-out; write "
        "--instrument=DIR) and add a latency section to the terminal summary",
    )
    group.addoption(
        "--latency-warmup",
        default=None,
        metavar="N",
        help=f"unmeasured runs of a latency-marked test body first (env {ENV_WARMUP}, "
        "ini latency_warmup; default 0)",
    )
    group.addoption(
        "--latency-repeat",
        default=None,
        metavar="N",
        help=f"measured runs of a latency-marked test body, pooled (env {ENV_REPEAT}, "
        "ini latency_repeat; default 1)",
    )
    group.addoption(
        "--latency-save",
        default=None,
        metavar="NAME",
        help="save each measured test's results (with machine and versions) as NAME",
    )
    group.addoption(
        "--latency-compare",
        default=None,
        metavar="NAME",
        help="compare each measured test with the results saved as NAME and print the changes",
    )
    group.addoption(
        "--latency-compare-fail",
        action="append",
        default=None,
        metavar="EXPR",
        help="fail a test whose metric got worse than allowed, e.g. ttft_p50:10%% or "
        "itl_p99:2ms (repeatable; ini latency_compare_fail)",
    )
    group.addoption(
        "--latency-storage",
        default=None,
        metavar="DIR",
        help=f"folder of saved results (env {ENV_STORAGE}, ini latency_storage; "
        "default .pyinstrument-ai/latency)",
    )
    parser.addini("latency_warmup", "default warm-up runs of latency-marked tests", default="")
    parser.addini("latency_repeat", "default measured runs of latency-marked tests", default="")
    parser.addini("latency_storage", "folder of saved latency results", default="")
    parser.addini(
        "latency_compare_fail", "regression limits, e.g. ttft_p50:10%", type="args", default=[]
    )


def _first(config: pytest.Config, option: str, env: str | None, ini: str) -> tuple[Any, str]:
    """(value, where it came from) by precedence: command line > environment > ini."""
    v = config.getoption(option)
    if v is not None:
        return v, "--" + option.replace("_", "-")
    if env is not None and os.environ.get(env, "").strip():
        return os.environ[env], env
    v = config.getini(ini)
    if v not in ("", None, []):
        return v, f"{ini} (ini)"
    return None, ""


def _is_controller(config: pytest.Config) -> bool:
    """xdist's controller runs no tests: its workers record, it merges."""
    return not hasattr(config, "workerinput") and config.getoption("dist", "no") != "no"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "latency(ttft_p95='200ms', itl_p99='40ms', tokens_per_s_min=20, warmup=0, repeat=1): "
        "fail the test when the inference it runs is slower than these bounds (pyinstrument-ai)",
    )
    state = _State()
    config.stash[_STATE] = state
    try:
        _configure(config, state)
    except ValueError as exc:  # BoundError and the store's errors name where the value came from
        raise pytest.UsageError(f"pyinstrument-ai: {exc}") from None


def _configure(config: pytest.Config, state: _State) -> None:
    # Everything below is skipped (and nothing imported) unless a setting asks for it.
    warmup, w_where = _first(config, "latency_warmup", ENV_WARMUP, "latency_warmup")
    repeat, r_where = _first(config, "latency_repeat", ENV_REPEAT, "latency_repeat")
    if warmup is not None or repeat is not None:
        from pyinstrument_ai.latency.bounds import parse_int_option

        if warmup is not None:
            state.warmup = parse_int_option(warmup, w_where, 0)
        if repeat is not None:
            state.repeat = parse_int_option(repeat, r_where, 1)

    save = config.getoption("latency_save")
    compare_name = config.getoption("latency_compare")
    specs, s_where = _first(config, "latency_compare_fail", None, "latency_compare_fail")
    if specs and not compare_name:
        if s_where.startswith("--"):
            # asked for on this command line: a failure condition that cannot apply is a
            # mistake worth stopping for (a forgotten or mistyped --latency-compare)
            raise ValueError(f"{s_where}: needs --latency-compare NAME (what to compare with)")
        # the ini key is a standing limit for the runs that compare; it is checked so that a
        # typo shows up now, not on the first comparison, and otherwise unused
        from pyinstrument_ai.latency.compare import parse_fail_spec

        for spec in specs:
            parse_fail_spec(spec, s_where)
    if save or compare_name:
        from pyinstrument_ai.latency import store

        storage, _ = _first(config, "latency_storage", ENV_STORAGE, "latency_storage")
        state.storage = os.path.abspath(storage or store.DEFAULT_STORAGE)
        if save:
            state.save_name = save
            state.save_path = store.path_for(state.storage, save, "--latency-save")
        if compare_name:
            from pyinstrument_ai.latency.compare import parse_fail_spec

            state.compare_name = compare_name
            state.compare_path = store.path_for(state.storage, compare_name, "--latency-compare")
            state.baseline = store.load(state.compare_path, "--latency-compare")
            state.fail_specs = [parse_fail_spec(s, s_where) for s in specs or ()]

    out = config.getoption("pyinstrument_ai_out")
    if out is not None:
        _start_session(config, state, out)
    if out is not None or save or compare_name:
        config.pluginmanager.register(_Reporter(config, state), "pyinstrument_ai_reporter")


def _start_session(config: pytest.Config, state: _State, out: str) -> None:
    """``--instrument``: one JSONL session per process for the whole test session. Under xdist
    each worker records its own file; the controller only reads them at the end.

    When pytest runs under ``python -m instrument`` (or with auto-load on), that session is
    the one recorded into, with its folder and run id: one process, one session. Its start is
    usually still waiting for a target's import here; it is started now, since the tests'
    windows read its file."""
    from pyinstrument_ai import runtime

    workerinput = getattr(config, "workerinput", None)
    given = (workerinput or {}).get(_WORKER_KEY) or {}
    wanted = os.path.abspath(out)
    active = runtime.active()
    lazy = sys.modules.get("pyinstrument_ai._lazy")
    pending = lazy.pending() if active is None and lazy is not None else None
    host = active.config if active is not None else pending
    if host is not None:
        state.out_dir = os.path.abspath(host.out_dir)
        state.run_id = host.run_id
        if workerinput is None and state.out_dir != wanted:
            # the launcher's -o (or PYINSTRUMENT_AI_OUT) wins: say so once, in the main process
            config.issue_config_time_warning(
                pytest.PytestConfigWarning(
                    f"pyinstrument-ai: --instrument={out}: pytest runs under "
                    "`python -m instrument` (or PYINSTRUMENT_AI auto-load), whose session "
                    f"records into {state.out_dir}: the events go there, not to {wanted}"
                ),
                stacklevel=2,
            )
    else:
        state.out_dir = given.get("out_dir") or wanted
        state.run_id = given.get("run_id") or f"pytest-{os.urandom(6).hex()}"
        if not given:  # the controller (or a run without xdist) checks for everyone
            _check_writable(state.out_dir, f"--instrument={out}")
    if _is_controller(config):
        config.pluginmanager.register(_XdistController(state), "pyinstrument_ai_xdist")
        return
    if active is not None:
        return
    if pending is not None:
        runtime.instrument(pending)  # owned by the launcher: it ends the session at exit
        return
    from pyinstrument_ai.config import from_env

    runtime.instrument(from_env().replace(out_dir=state.out_dir, run_id=state.run_id))
    state.own_session = True


def _check_writable(path: str, where: str) -> None:
    """Fail now rather than with every measured test: a session that cannot write its file
    records nothing, and the tests' windows read that file."""
    import tempfile

    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        reason = f"[Errno {exc.errno}] {exc.strerror}" if exc.strerror else str(exc)
        raise ValueError(f"{where}: cannot write event files to {path}: {reason}") from None


class _XdistController:
    """Registered only on xdist's controller: hands each worker the output folder and run id."""

    def __init__(self, state: _State) -> None:
        self.state = state

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[_WORKER_KEY] = {"out_dir": self.state.out_dir, "run_id": self.state.run_id}


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is not None and state.open_window is not None:
        state.open_window.stop()
        state.open_window = None
    if state is not None and state.own_session:
        from pyinstrument_ai import runtime

        runtime.uninstrument()
        state.own_session = False


# -- per test ------------------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker(MARKER)
    if marker is None:
        return
    from pyinstrument_ai.latency.bounds import BoundError, parse_spec

    state = item.config.stash[_STATE]
    where = f"@pytest.mark.{MARKER} on {item.nodeid}"
    try:
        item.stash[_SPEC] = parse_spec(
            marker.kwargs, where, args=marker.args, warmup=state.warmup, repeat=state.repeat
        )
        return
    except BoundError as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)  # outside the except: no chained traceback


def _hide(exc: BaseException) -> None:
    from pyinstrument_ai._tb import hide

    hide(exc, depth=2)


def _window(item: pytest.Item) -> Any:
    w = item.stash.get(_WINDOW, None)
    if w is None:
        from pyinstrument_ai.latency.window import Window

        w = item.stash[_WINDOW] = Window()
    return w


@pytest.fixture
def instrument(request: pytest.FixtureRequest) -> Any:
    """This test's recording: ``.generations`` (``ttft_s``, ``itl_s``, ``tpot_s``, ``e2e_s``,
    ``tokens``), ``.ort_runs``, ``.predictions``, ``.values(m)``, ``.stats(m)``,
    ``.percentile(m, q)``; it covers the test function's call (not fixture set-up)."""
    from pyinstrument_ai.latency.window import LatencyRecording

    request.node.stash[_WANTS] = True
    return LatencyRecording(_window(request.node))


# The window opens and closes in hooks that run before and after the call, never around it: a
# wrapper around the call would stand in the traceback of every failing test (``--tb=native``
# prints pluggy's frames of each hook wrapper). Only warmup/repeat, which must call the test
# several times, takes the call itself; it calls it through pytest's own hook implementation,
# so that the frames under it are pytest's.


def _measured(item: pytest.Item) -> bool:
    return item.stash.get(_SPEC, None) is not None or item.stash.get(_WANTS, False)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    if _measured(item):
        w = item.config.stash[_STATE].open_window = _window(item)
        w.start()


@pytest.hookimpl(tryfirst=True, specname="pytest_pyfunc_call")
def pytest_pyfunc_call_repeated(pyfuncitem: pytest.Function) -> bool | None:
    """``warmup=``/``repeat=``: run the body several times inside the test's window."""
    __tracebackhide__ = True  # pytest's own styles; _hide() below for --tb=native
    spec = pyfuncitem.stash.get(_SPEC, None)
    if spec is None or (spec.warmup == 0 and spec.repeat == 1):
        return None  # pytest (or an async plugin) calls the test once, as usual
    import inspect

    from _pytest.python import pytest_pyfunc_call as call_once

    if inspect.iscoroutinefunction(pyfuncitem.obj):
        pytest.fail(f"{spec.where}: warmup/repeat need a plain (not async) test", pytrace=False)
    window = pyfuncitem.stash[_WINDOW]
    try:
        # pytest's implementation: the same arguments (fixtures are set up once), the same
        # checks of the result, and a traceback that differs from pytest's by nothing
        for _ in range(spec.warmup):
            call_once(pyfuncitem)
            window.mark()  # forget the warm-up's events
        for _ in range(spec.repeat):
            call_once(pyfuncitem)
    except BaseException as e:
        _hide(e)
        raise
    return True


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # Before the report is made: close the window, check the bounds and comparisons, and turn
    # a problem into the call's failure, as if the test had called pytest.fail() (the report,
    # --pdb, -x and xfail all read call.excinfo).
    if call.when == "call" and _measured(item):
        window = _window(item)
        window.stop()
        item.config.stash[_STATE].open_window = None
        if call.excinfo is None:  # a test that raised (or skipped) is not checked
            try:
                message = _check(item, window, item.stash.get(_SPEC, None))
                if message:
                    pytest.fail(message, pytrace=False)
            except (Exception, pytest.fail.Exception):
                # an error of ours fails this test, with its traceback, not the whole session
                call.excinfo = pytest.ExceptionInfo.from_current()
    return (yield)


def _check(item: pytest.Item, window: Any, spec: Any) -> str | None:
    """Bounds and comparisons of one test; the result goes to ``user_properties``. Returns
    what failed, if anything."""
    from pyinstrument_ai.latency.bounds import (
        check_bounds,
        describe_work,
        format_report,
        measured_work,
        summarize_metrics,
    )

    state = item.config.stash[_STATE]
    a = window.analysis()
    work = measured_work(a)
    metrics = summarize_metrics(a)
    result: dict[str, Any] = {"work": work, "metrics": metrics}
    problems = []
    if spec is not None:
        result.update(warmup=spec.warmup, repeat=spec.repeat)
        if not any(work.values()):
            problems.append(
                f"{spec.where}: nothing was measured: the test generated no tokens, ran no "
                "ONNX Runtime session and made no TorchServe prediction (is the inference "
                "library imported, and is it one of the recorded targets?)"
            )
        else:
            checks = check_bounds(a, spec.bounds)
            result["checks"] = [c.to_dict() for c in checks]
            if not all(c.ok for c in checks):
                runs = f"warmup {spec.warmup}, repeat {spec.repeat}"
                counts = describe_work(work)
                problems.append(
                    format_report(checks, f"latency bounds not met ({counts}; {runs}):")
                )
    if state.baseline is not None:
        from pyinstrument_ai.latency.compare import compare, format_table

        saved = state.baseline["tests"].get(item.nodeid)
        changes = compare(metrics, saved and saved.get("metrics"), state.fail_specs)
        result["compare"] = [c.to_dict() for c in changes]
        bad = [(item.nodeid, c) for c in changes if c.regressed]
        if bad:
            problems.append(format_table(bad, f"latency regressed against {state.compare_name!r}:"))
    item.user_properties.append((PROPERTY, result))
    return "\n\n".join(problems) or None


# -- session -------------------------------------------------------------------------------------


class _Reporter:
    """Registered when a session-wide feature is on (``--instrument``, save, compare): collects
    every measured test's result (from the workers too, through ``user_properties``), saves
    them and prints the latency section."""

    def __init__(self, config: pytest.Config, state: _State) -> None:
        self.config = config
        self.state = state

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        for prop in report.user_properties:
            if prop[0] == PROPERTY:  # a tuple here, a list after xdist's serialization
                self.state.results[report.nodeid] = {**prop[1], "outcome": report.outcome}

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        state = self.state
        if state.out_dir is not None:
            from pyinstrument_ai import runtime

            s = runtime.active()
            if s is not None:
                # before xdist's worker reports "finished": the controller reads our file next
                s.flush()
        if state.save_path and not hasattr(self.config, "workerinput"):
            from pyinstrument_ai.latency import store

            tests = {k: v for k, v in state.results.items() if v.get("outcome") == "passed"}
            store.save(state.save_path, state.save_name or "", tests)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if hasattr(self.config, "workerinput"):
            return
        from pyinstrument_ai.latency.report import render_session

        s = self.state
        text = render_session(
            s.results,
            out_dir=s.out_dir,
            run_id=s.run_id,
            compare_name=s.compare_name,
            baseline=s.baseline,
            save_path=s.save_path,
        )
        if text:
            terminalreporter.write_sep("-", "pyinstrument-ai latency")
            terminalreporter.write(text)
