"""The program: one command line for every way the gateway starts.

    python app.py [flags]                    run the gateway
    ollama-host [flags]                      the same, as installed (a console script)
    python -m ollama_host [flags]            the same
    ... settings-table                       print the README's settings table
    ... import-usage --from DATA_DIR --store postgresql://...
                                             copy a TinyDB data folder into PostgreSQL
    ... import-spill FILE... --data DIR      bring records spilled at shutdown back
    ... import-spill FILE... --store URL     the same, into PostgreSQL

The web app itself is composed in app.py, the composition root, which imports every part and
which nothing imports: it hands its `create_app` to `main` here. So every start goes through
app.py (`python -m ollama_host` runs that file, and so does each of `--workers N`), and the
program package never reaches back up for it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from starlette.applications import Starlette

import upstreams
from access.keys import Access
from store import UsageStore

from . import embedded, startup
from .requestlog import configure_logging
from .server import serve, show_new_token
from .settings import Settings, parse_settings, settings_table
from .workers import die_with, run_workers

log = logging.getLogger("ollama_host")

# The composition root, as a file: what `python -m ollama_host`, the workers and the service
# unit run. Beside this package in a checkout and in site-packages alike.
APP = Path(__file__).resolve().parent.parent / "app.py"


class AppFactory(Protocol):
    """app.create_app, as the program calls it: the parts it opened at start go in."""

    def __call__(self, settings: Settings, *, store: UsageStore, access: Access) -> Starlette: ...


def run(
    argv: Sequence[str] | None,
    *,
    create_app: AppFactory,
    worker_fd: int | None = None,
    ready_fd: int | None = None,
) -> int:
    """Run the gateway; with worker_fd, as one of --workers N on that listening socket,
    saying on ready_fd when it serves."""
    args = list(sys.argv[1:] if argv is None else argv)
    settings = parse_settings(args)
    configure_logging(settings)
    try:
        store, access, new_token = startup.open_parts(settings, worker=worker_fd is not None)
    except startup.Refused as exc:
        log.error("%s", exc)
        return 1
    try:
        # A worker never starts one: the process that runs the workers does, for them all.
        model = embedded.start(settings) if worker_fd is None else None
    except KeyboardInterrupt:  # while it was built or loaded; it is stopped already
        startup.close_parts(store, access)
        return 130
    try:
        if model is not None:
            # An upstream like any other, for this process and for each of --workers N.
            args = [*args, "--upstream", model.upstream]
            settings = parse_settings(args)
            log.warning("%s", model.banner(settings))
        return _serve(settings, args, store, access, new_token, create_app, worker_fd, ready_fd)
    finally:
        if model is not None:
            model.stop()


def _serve(
    settings: Settings,
    args: list[str],
    store: UsageStore,
    access: Access,
    new_token: str | None,
    create_app: AppFactory,
    worker_fd: int | None,
    ready_fd: int | None,
) -> int:
    if new_token:
        show_new_token(settings, new_token)
    if settings.workers > 1 and worker_fd is None:
        # Each worker opens the store and the keys itself; this process only watches them.
        startup.close_parts(store, access)
        return run_workers(settings, args, script=APP)
    where = store.health().path
    app = create_app(settings, store=store, access=access)
    # --metrics-port: a worker's numbers are served by the process that runs the workers.
    app.state.serves_metrics_port = worker_fd is None
    if worker_fd is None:
        log.info(
            "Ollama Host on http://%s:%d, asking %s, usage in %s",
            settings.host,
            settings.port,
            upstreams.describe(settings),
            where,
        )
    return serve(app, settings, fd=worker_fd, ready_fd=ready_fd)


def _settings_table(argv: Sequence[str]) -> int:
    sys.stdout.write(settings_table())
    return 0


def _import_spill(argv: Sequence[str]) -> int:
    from store.import_spill import main as import_spill

    return import_spill(argv)


def _import_usage(argv: Sequence[str]) -> int:
    from .importer import import_usage

    return import_usage(argv)


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "settings-table": _settings_table,
    "import-spill": _import_spill,
    "import-usage": _import_usage,
}


def main(argv: Sequence[str] | None = None, *, create_app: AppFactory) -> int:
    """The command line: a command's name first, or the gateway's flags."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        return COMMANDS[args[0]](args[1:])
    if args and args[0] == "worker":
        # Not for people: how --workers N starts each worker
        # (`worker FD PARENT_PID READY_FD ARGS...`).
        fd, parent, ready = int(args[1]), int(args[2]), int(args[3])
        die_with(parent)
        return run(args[4:], create_app=create_app, worker_fd=fd, ready_fd=ready)
    if args and args[0] == "serve":
        args = args[1:]
    return run(args, create_app=create_app)
