"""``python -m instrument``: run a program unchanged, with instrumentation installed first.

Three forms::

    python -m instrument [OPTIONS] script.py [ARGS]      # in this process, like `python script.py`
    python -m instrument [OPTIONS] -m package.mod [ARGS] # in this process, like `python -m`
    python -m instrument [OPTIONS] -- COMMAND [ARGS]     # exec COMMAND; every Python process
                                                         # beneath auto-loads the instrumentation

The in-process forms mimic the interpreter closely: a fresh ``__main__`` module (so pickling
and multiprocessing "spawn" find the user's objects), ``sys.argv``/``sys.path[0]`` as Python sets
them, the same messages and exit codes for a missing script or module, and an uncaught
exception printed through ``sys.excepthook`` with our own frames cut off.
"""

# Annotations are strings, with no `from __future__ import annotations`: see __init__.py.

import builtins
import os
import sys
import types

from pyinstrument_ai import __version__
from pyinstrument_ai import config as cfg

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, NoReturn

USAGE = """\
usage: python -m instrument [OPTIONS] script.py [ARGS...]
       python -m instrument [OPTIONS] -m module [ARGS...]
       python -m instrument [OPTIONS] -- COMMAND [ARGS...]

Runs a Python program unchanged with read-only instrumentation installed, recording raw
timestamped events (JSONL, one file per process) into the output folder.

options:
  -o, --out DIR           output folder (default ./instrument-out; env PYINSTRUMENT_AI_OUT)
  --targets A,B           only these targets (default: all; env PYINSTRUMENT_AI_TARGETS)
  --disable C             every target but these (env PYINSTRUMENT_AI_DISABLE)
  --capture-content       also record prompt and output token ids, never text (off by
                          default; env PYINSTRUMENT_AI_CAPTURE_CONTENT=1)
  --flush-interval S      seconds between background flushes (default 1.0;
                          env PYINSTRUMENT_AI_FLUSH_INTERVAL)
  --sample INTERVAL       record system.sample events (CPU, context switches, cgroup
                          throttling, GPU) every INTERVAL, e.g. 100ms (default off;
                          env PYINSTRUMENT_AI_SAMPLE)
  --no-summary            no summary on stderr at exit (env PYINSTRUMENT_AI_SUMMARY=0)
  --sink S                jsonl (default), otlp or jsonl,otlp: OTLP exports spans and metrics
                          to an OpenTelemetry receiver (extra [otel]; env PYINSTRUMENT_AI_SINK)
  --otel-token-events     OTLP: also one span event per token (env
                          PYINSTRUMENT_AI_OTEL_TOKEN_EVENTS=1)
  --otel-run-spans        OTLP: a span per ONNX Runtime run even outside a trace (env
                          PYINSTRUMENT_AI_OTEL_RUN_SPANS=1)
  --list-targets          list the known targets and exit
  --version               print the version and exit
  -h, --help              show this help and exit
"""

_VALUE_OPTS = {
    "-o": "out",
    "--out": "out",
    "--targets": "targets",
    "--disable": "disable",
    "--flush-interval": "flush_interval",
    "--sample": "sample",
    "--sink": "sink",
}
_FLAG_OPTS = {
    "--capture-content": "capture_content",
    "--no-summary": "no_summary",
    "--otel-token-events": "otel_token_events",
    "--otel-run-spans": "otel_run_spans",
}


class UsageError(Exception):
    pass


class Invocation:
    """What the command line asks for (a plain class: dataclasses costs ~10 ms to import)."""

    def __init__(self) -> None:
        self.mode = ""  # "script" | "module" | "command" | "help" | "version" | "list"
        self.target = ""
        self.args: list[str] = []
        self.options: dict[str, tuple[str, str]] = {}  # key -> (flag as given, value)
        self.flags: set[str] = set()


def parse_args(argv: "list[str]") -> "Invocation":
    inv = Invocation()
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            if i + 1 >= len(argv):
                raise UsageError("-- must be followed by a command")
            inv.mode, inv.target, inv.args = "command", argv[i + 1], argv[i + 2 :]
            return inv
        if a == "-m" or (a.startswith("-m") and not a.startswith("--")):
            mod = a[2:] or (argv[i + 1] if i + 1 < len(argv) else "")
            if not mod:
                raise UsageError("argument -m: expected a module name")
            rest = argv[i + 1 :] if a[2:] else argv[i + 2 :]
            inv.mode, inv.target, inv.args = "module", mod, rest
            return inv
        if a in ("-h", "--help"):
            inv.mode = "help"
            return inv
        if a == "--version":
            inv.mode = "version"
            return inv
        if a == "--list-targets":
            inv.mode = "list"
            return inv
        name, eq, value = a.partition("=")
        if name in _VALUE_OPTS:
            if not eq:
                if i + 1 >= len(argv):
                    raise UsageError(f"argument {name}: expected a value")
                i += 1
                value = argv[i]
            inv.options[_VALUE_OPTS[name]] = (name, value)
        elif a in _FLAG_OPTS:
            inv.flags.add(_FLAG_OPTS[a])
        elif a.startswith("-"):
            raise UsageError(f"unrecognized option {a}")
        else:
            inv.mode, inv.target, inv.args = "script", a, argv[i + 1 :]
            return inv
        i += 1
    raise UsageError("expected a script, -m module, or -- COMMAND")


#: launcher option / flag -> the variable it overrides
_FLAG_VARIABLES = {
    "out": cfg.ENV_OUT,
    "targets": cfg.ENV_TARGETS,
    "disable": cfg.ENV_DISABLE,
    "flush_interval": cfg.ENV_FLUSH,
    "sample": cfg.ENV_SAMPLE,
    "capture_content": cfg.ENV_CAPTURE,
    "no_summary": cfg.ENV_SUMMARY,
    "sink": cfg.ENV_SINK,
    "otel_token_events": cfg.ENV_OTEL_TOKEN_EVENTS,
    "otel_run_spans": cfg.ENV_OTEL_RUN_SPANS,
}


def resolve_config(inv: "Invocation", environ: "Any" = None) -> "cfg.Config":
    """Environment, then flags; raises ConfigError naming the flag or variable."""
    o = inv.options
    # A variable that a flag overrides is not read at all: a bad value there (left in the
    # shell from another run) must not stop a command whose flag says what to do.
    given = {*o, *inv.flags}
    env = dict(os.environ if environ is None else environ)
    for key, var in _FLAG_VARIABLES.items():
        if key in given:
            env.pop(var, None)
    config = cfg.from_env(env)
    changes: dict[str, Any] = {}
    if "out" in o:
        changes["out_dir"] = cfg.parse_out(*o["out"])
    if "targets" in o:
        changes["targets"] = cfg.parse_names(*o["targets"]) or None
    if "disable" in o:
        changes["disable"] = cfg.parse_names(*o["disable"])
    if "flush_interval" in o:
        changes["flush_interval"] = cfg.parse_interval(*o["flush_interval"])
    if "sample" in o:
        changes["sample_interval"] = cfg.parse_sample(*o["sample"])
    if "capture_content" in inv.flags:
        changes["capture_content"] = True
    if "no_summary" in inv.flags:
        changes["summary"] = False
    if "sink" in o:
        changes["sink"] = cfg.parse_sink(*o["sink"])
    if "otel_token_events" in inv.flags:
        changes["otel_token_events"] = True
    if "otel_run_spans" in inv.flags:
        changes["otel_run_spans"] = True
    config = config.replace(**changes)
    from pyinstrument_ai import targets

    try:
        targets.select(config.targets, config.disable)
    except targets.UnknownTarget as exc:
        bad = exc.names[0]
        in_enable = bad in (config.targets or ())
        if in_enable:
            source = o["targets"][0] if "targets" in o else cfg.ENV_TARGETS
        else:
            source = o["disable"][0] if "disable" in o else cfg.ENV_DISABLE
        raise cfg.ConfigError(
            source, ",".join(exc.names), f"unknown target; known: {', '.join(sorted(exc.known))}"
        ) from None
    both = cfg.overlap(config)
    if both:
        # --disable wins over --targets; naming a target in both is a contradiction to report
        t_src = _setting(o, "targets", cfg.ENV_TARGETS, env)
        d_src = _setting(o, "disable", cfg.ENV_DISABLE, env)
        left = tuple(n for n in config.targets or () if n not in both)
        if not left:
            raise cfg.ConfigError(
                t_src,
                ",".join(both),
                "",
                message=f"{t_src} and {d_src}: every target asked for is disabled, so nothing "
                "would be recorded (the disabled list wins over the targets list)",
            )
        sys.stderr.write(
            f"python -m instrument: warning: {t_src} and {d_src}: {', '.join(both)} "
            "disabled (the disabled list wins over the targets list)\n"
        )
        # children get the resolved list, and do not repeat the warning
        config = config.replace(targets=left)
    return config.replace(out_dir=os.path.abspath(config.out_dir))


def _setting(flags: "dict[str, Any]", key: str, var: str, env: "Mapping[str, str]") -> str:
    """How the user gave setting ``key``: its flag and value, else its variable's."""
    if key in flags:
        return f"{flags[key][0]} {flags[key][1]}"
    return f"{var}={env.get(var, '')}"


def _prog() -> str:
    orig = getattr(sys, "orig_argv", None)
    return orig[0] if orig else (sys.executable or "python")


def _fail(message: str, code: int = 2) -> "NoReturn":
    sys.stderr.write(f"python -m instrument: error: {message}\n")
    sys.exit(code)


def bootstrap_dir() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "bootstrap")


#: the run id a launcher made and passed on: a launcher beneath that inherits
#: PYINSTRUMENT_AI_RUN_ID with this same value got it from an outer launcher, not from the
#: user, and starts a run of its own
ENV_RUN_ID_FROM_LAUNCHER = "PYINSTRUMENT_AI_RUN_ID_FROM_LAUNCHER"


def _run_id(inherited: "str | None", environ: "Mapping[str, str]") -> "tuple[str, bool]":
    """This launcher's run id, and whether it made it: the user's ``PYINSTRUMENT_AI_RUN_ID``
    if they set it (kept for every launcher beneath too), else a new one (also when the
    variable was made by an outer launcher: a nested launcher's summary must count its own
    processes' files, not its siblings')."""
    if inherited and inherited != environ.get(ENV_RUN_ID_FROM_LAUNCHER):
        return inherited, False
    return os.urandom(6).hex(), True


def child_environment(config: "cfg.Config", environ: "Mapping[str, str]") -> "dict[str, str]":
    """The variables every Python process beneath needs to auto-load with this config."""
    env = cfg.to_env(config)
    boot = bootstrap_dir()
    pp = environ.get("PYTHONPATH", "")
    # Prepend only: the user's value stays as it was, empty entries included (an empty entry
    # puts the working directory on a child's sys.path).
    if boot not in pp.split(os.pathsep):
        env["PYTHONPATH"] = boot + os.pathsep + pp if pp else boot
    return env


def main(argv: "list[str] | None" = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        inv = parse_args(argv)
    except UsageError as exc:
        sys.stderr.write(USAGE)
        _fail(str(exc))
    if inv.mode == "help":
        sys.stdout.write(USAGE)
        sys.exit(0)
    if inv.mode == "version":
        sys.stdout.write(f"pyinstrument-ai {__version__}\n")
        sys.exit(0)
    if inv.mode == "list":
        from pyinstrument_ai import targets

        for name, spec in sorted(targets.registry().items()):
            sys.stdout.write(f"{name}\t{getattr(spec, '__name__', spec)}\n")
        sys.exit(0)
    try:
        config = resolve_config(inv)
    except cfg.ConfigError as exc:
        _fail(str(exc))
    if "otlp" in config.sink:
        from pyinstrument_ai.sinks import missing_otel

        missing = missing_otel()
        if missing:
            _fail(
                f"--sink otlp needs OpenTelemetry ({missing} is not installed): "
                'pip install "pyinstrument-ai[otel]"'
            )
    run_id, made = _run_id(config.run_id, os.environ)
    config = config.replace(run_id=run_id)
    # os.environ itself, not a dict copy of it: copying decodes every variable
    os.environ.update(child_environment(config, os.environ))
    if made:
        os.environ[ENV_RUN_ID_FROM_LAUNCHER] = run_id
    else:
        os.environ.pop(ENV_RUN_ID_FROM_LAUNCHER, None)
    if inv.mode == "command":
        _warn_dropped_variables(inv.target, inv.args)
        _exec_command(inv.target, inv.args)
    _run_in_process(inv, config)


def _warn_dropped_variables(command: str, args: "list[str]") -> None:
    """TorchServe's frontend drops the variables its config's ``blacklist_env_vars`` matches;
    a worker without ours runs uninstrumented. Say so before starting, naming them."""
    if os.path.basename(command) != "torchserve":
        return
    try:
        from pyinstrument_ai.targets.torchserve import dropped_env_vars

        dropped = dropped_env_vars([command, *args])
    except Exception:
        return
    if dropped:
        sys.stderr.write(
            "python -m instrument: warning: TorchServe's blacklist_env_vars drops "
            f"{', '.join(dropped)}: its workers will run without instrumentation "
            "(see docs/targets/torchserve.md)\n"
        )


def _exec_command(command: str, args: "list[str]") -> "NoReturn":
    # No instrumentation in this process: it is replaced by COMMAND, whose Python processes
    # auto-load through the environment we just set (the .pth hook and the bootstrap
    # sitecustomize on PYTHONPATH).
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(command, [command, *args])
    except FileNotFoundError:
        _fail(f"command not found: {command}", 127)
    except PermissionError:
        _fail(f"permission denied: {command}", 126)
    except OSError as exc:
        _fail(f"cannot run {command}: {exc.strerror or exc}", 126)


def _run_in_process(inv: "Invocation", config: "cfg.Config") -> "NoReturn":
    runtime = sys.modules.get("pyinstrument_ai.runtime")
    if runtime is not None and runtime.active() is not None:
        # a session started before us (a target imported at interpreter start under
        # PYINSTRUMENT_AI=1): the launcher's own flags win
        runtime.uninstrument()
    from pyinstrument_ai import _lazy, hooks

    try:
        if _records_from_start(config):
            from pyinstrument_ai import runtime

            runtime.instrument(config).start()
        else:
            # Recording starts when the program imports a target library (and replaces an
            # auto-load waiting with the environment's settings): a program that loads no
            # model does not pay for the runtime at start.
            _lazy.defer(config)
    except Exception as exc:  # instrumentation must never stop the program
        from pyinstrument_ai import _log

        _log.warn(f"instrumentation is off: {exc}")
    if config.summary:
        import atexit

        summary = _ExitSummary(config)
        atexit.register(summary.at_exit)
        # SIGTERM's handler belongs to the runtime, which exists once something records
        hooks.when_imported("pyinstrument_ai.runtime", lambda rt: rt.at_sigterm(summary.at_exit))
    if inv.mode == "script":
        _run_script(inv.target, inv.args)
    else:
        _run_module(inv.target, inv.args)
    sys.exit(0)


def _records_from_start(config: "cfg.Config") -> bool:
    """Whether a setting records before any target library is imported (system sampling,
    where the build has it: its samples before the first inference are the baseline); then
    the runtime starts at once instead of at the first target's import."""
    return bool(getattr(config, "sample_interval", None))


def _run_script(path: str, args: "list[str]") -> None:
    abspath = os.path.abspath(path)
    if os.path.isdir(path) or _is_zip(path):
        _run_directory_or_zip(path, abspath, args)
        return
    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError as exc:
        sys.stderr.write(
            f"{_prog()}: can't open file {abspath!r}: [Errno {exc.errno}] {exc.strerror}\n"
        )
        sys.exit(2)
    sys.argv[:] = [path, *args]
    _set_path0(os.path.dirname(os.path.realpath(path)))
    main_module = types.ModuleType("__main__")
    from importlib.machinery import SourceFileLoader, SourcelessFileLoader
    from importlib.util import MAGIC_NUMBER

    compiled = source[:4] == MAGIC_NUMBER  # `python file.pyc` runs bytecode
    loader = (SourcelessFileLoader if compiled else SourceFileLoader)("__main__", abspath)
    main_module.__dict__.update(
        __file__=abspath,
        __builtins__=builtins,
        __loader__=loader,
        __cached__=None,
        __spec__=None,
        __package__=None,
    )
    sys.modules["__main__"] = main_module
    try:
        if compiled:
            import marshal

            code = marshal.loads(source[16:])  # after the 16-byte pyc header
        else:
            code = compile(source, abspath, "exec", dont_inherit=True)
    except SyntaxError as exc:
        _uncaught(exc)
    _exec(code, main_module.__dict__)


def _set_path0(folder: str) -> None:
    # Python puts the script's folder first on sys.path, except in safe-path mode (-P, -I,
    # PYTHONSAFEPATH), where sys.path[0] is a real entry (e.g. the stdlib zip) to keep.
    if not getattr(sys.flags, "safe_path", False):
        sys.path[0] = folder


def _is_zip(path: str) -> bool:
    if path.endswith((".py", ".pyw")) or not os.path.isfile(path):
        return False  # skip importing zipfile for the common case
    import zipfile

    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def _run_directory_or_zip(path: str, abspath: str, args: "list[str]") -> None:
    sys.argv[:] = [path, *args]
    if getattr(sys.flags, "safe_path", False):
        sys.path.insert(0, abspath)  # Python adds the folder/zip even in safe-path mode
    else:
        sys.path[0] = abspath
    # `python DIR` runs runpy._run_module_as_main("__main__", alter_argv=False), which finds
    # DIR's __main__ with the current __main__ moved out of the way: ours, replaced first
    _run_as_main("__main__", False)


def _run_module(mod_name: str, args: "list[str]") -> None:
    sys.argv[:] = ["-m", *args]  # as `python -m` has it until runpy sets the module's path
    # `python -m` puts the working directory first on sys.path (not in safe-path mode). Under
    # `python -m instrument` it is there already; the `pyinstrument-ai run` console script
    # starts with its own folder there instead, where the module would not be found.
    _set_path0(os.getcwd())
    _run_as_main(mod_name, True)


def _run_as_main(mod_name: str, alter_argv: bool) -> None:
    """What `python -m MOD` / `python DIR` run, through the same runpy function: the same
    error messages, and a traceback with the same two runpy frames above the program's."""
    import runpy

    main_module = types.ModuleType("__main__")
    main_module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main_module
    try:
        runpy._run_module_as_main(mod_name, alter_argv)  # type: ignore[attr-defined]
    except SystemExit:
        raise
    except BaseException as exc:
        _uncaught(exc)


def _exec(code: "types.CodeType", globals_: "dict[str, Any]") -> None:
    try:
        exec(code, globals_)
    except SystemExit:
        raise
    except BaseException as exc:
        _uncaught(exc)


_OUR_FILES = (os.path.abspath(__file__),)


def _is_ours(filename: str) -> bool:
    # (runpy's frames below ours are the program's: `python -m` shows them too)
    return filename in _OUR_FILES


def _uncaught(exc: "BaseException") -> "NoReturn":
    """Report an uncaught exception exactly as the interpreter would, minus our frames: the
    launcher's own (leading) ones, and our wrappers' anywhere in the chain. Wrappers take
    their frame out themselves on Python >= 3.11 (``_tb.hide``); ``strip`` is what does it on
    3.10, and catches any entry left behind."""
    tb = exc.__traceback__
    while tb is not None and _is_ours(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    exc.__traceback__ = tb
    try:
        from pyinstrument_ai._tb import strip

        strip(exc)
        tb = exc.__traceback__
    except Exception:  # never let our tidying stand between the program and its traceback
        pass
    sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, tb
    sys.excepthook(type(exc), exc, tb)
    if isinstance(exc, KeyboardInterrupt):
        # Python ends an uncaught KeyboardInterrupt by running atexit and then dying of SIGINT,
        # so the parent sees "killed by SIGINT" (exit status 130 in a shell).
        import atexit

        # the interpreter's order at exit: wait for non-daemon threads, then atexit
        threading = sys.modules.get("threading")
        if threading is not None:
            threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        import signal

        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        except Exception:
            pass
    sys.exit(1)


class _ExitSummary:
    """The short summary on stderr when the program ends: at exit, or on SIGTERM (the runtime's
    handler calls it after the final flush, before the process dies of the signal).

    When it runs: only if this run recorded something to summarize, which is decided without
    reading a file or importing the reader, orjson or the summary (a program that generated
    nothing must not pay for them at exit):

    - this process flushed ``generate`` records (the session counts them as it flushes), or
    - a process of this run started after us wrote an event file into the output folder: file
      names are ``HOST-PID-STARTMS-RANDOM.jsonl``, so one listing of the folder finds files
      started since this launcher did (a child may generate while this process does not).

    Only then are the files read, those of this run (same ``run_id``) kept, and a summary
    printed if they hold a generation. Printed once, by the launcher's own process (not by a
    forked child that inherited the hooks).
    """

    def __init__(self, config: "cfg.Config") -> None:
        import time

        self.config = config
        self.pid = os.getpid()
        self.started_ms = time.time_ns() // 1_000_000
        self.done = False

    def at_exit(self) -> None:
        if self.done or os.getpid() != self.pid:
            return
        self.done = True
        try:
            # never imports the runtime: when it is not loaded, this process recorded nothing
            runtime = sys.modules.get("pyinstrument_ai.runtime")
            session = runtime.active() if runtime is not None else None
            if session is not None:
                session.flush(timeout=5)
            if self.due(session):
                _print_summary(self.config)
        except Exception as exc:
            from pyinstrument_ai._guard import report

            report("summary at exit", exc)

    def due(self, session: "Any") -> bool:
        """Whether this run may have generated: the cheap test described above."""
        if session is not None and getattr(session, "generations", 0):
            return True
        try:
            names = os.listdir(self.config.out_dir)
        except OSError:
            return False  # no folder: nobody of this run wrote an event
        own = getattr(getattr(session, "sink", None), "path", None)
        own = os.path.basename(own) if own else None
        # the clock may have stepped back a little between two processes' readings
        since = self.started_ms - 1000
        for name in names:
            if not name.endswith(".jsonl") or name == own:
                continue
            parts = name[: -len(".jsonl")].rsplit("-", 3)  # the host may contain "-"
            if len(parts) == 4 and parts[2].isdigit() and int(parts[2]) >= since:
                return True
        return False


def _print_summary(config: "cfg.Config") -> None:
    try:
        if not os.path.isdir(config.out_dir) or not any(
            n.endswith(".jsonl") for n in os.listdir(config.out_dir)
        ):
            return
        try:
            from pyinstrument_ai.analysis import Filters
            from pyinstrument_ai.reader import analyze_paths
            from pyinstrument_ai.summary import render_analysis, run_files
        except ImportError:
            return
        files = run_files(config.out_dir, config.run_id)  # this run's only (see run_files)
        if not files:
            return
        # streamed through the analysis (token columns, not event dicts): a long-running
        # server's millions of tokens summarize in seconds and bounded memory
        a = analyze_paths(*files, filters=Filters(run_ids={config.run_id}), strict=False)
        if not a.generations:
            return  # the summary is about generations; say nothing (stderr unchanged) otherwise
        text = render_analysis(a, config.out_dir, n_files=len(files))
        if text:
            sys.stderr.write(text if text.endswith("\n") else text + "\n")
            sys.stderr.flush()
    except Exception as exc:
        from pyinstrument_ai._guard import report

        report("summary at exit", exc)
