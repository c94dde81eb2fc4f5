"""Run the gateway as a service: start at login or boot, restart after a crash, stop cleanly.

    python launcher.py install [--user | --system] [app.py flags...]
    python launcher.py uninstall [--user | --system]
    python launcher.py status [--user | --system]
    python launcher.py unit [--user | --system] [app.py flags...]

On Linux this is a systemd unit, a user unit unless --system is given. The unit
runs this interpreter (the virtualenv's) on this checkout's app.py with an
absolute --data folder. Other platforms have no service mode yet.
See docs/service.md.
"""

from __future__ import annotations

import argparse
import getpass
import os
import pwd
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from ollama_host.program import APP
from ollama_host.settings import default_data_dir, parse_settings

ROOT = APP.parent

NAME = "ollama-host"
UNIT = f"{NAME}.service"
# systemd waits this long after the grace period before it sends SIGKILL: enough for
# uvicorn's own cut-off (4 s after the grace) and the last writes.
STOP_MARGIN = 10


def systemd_quote(arg: str) -> str:
    """One ExecStart argument as systemd reads it: specifiers and variables escaped."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and re.fullmatch(r"[A-Za-z0-9_@%+=:,./$-]+", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _run_as(system: bool, env: Mapping[str, str]) -> str | None:
    """The account a system unit runs as: whoever called sudo, else the caller; never root."""
    if not system:
        return None
    name = env.get("SUDO_USER") or getpass.getuser()
    return None if name == "root" else name


def _data_folder(
    flags: Sequence[str], data_dir: str, user: str | None, env: Mapping[str, str]
) -> Path:
    """The absolute data folder: the one given, else app.py's default for the unit's account."""
    if any(f == "--data" or f.startswith("--data=") for f in flags):
        return Path(data_dir).expanduser().resolve()
    if user is None or user == getpass.getuser():
        return default_data_dir(env)
    return Path(pwd.getpwnam(user).pw_dir) / ".local" / "share" / NAME


def app_argv(flags: Sequence[str], *, data: Path) -> list[str]:
    """app.py's flags, with --data first and absolute: a unit must not depend on its cwd."""
    out: list[str] = []
    skip = False
    for flag in flags:
        if skip:
            skip = False
            continue
        if flag == "--data":
            skip = True
            continue
        if flag.startswith("--data="):
            continue
        out.append(flag)
    return ["--data", str(data), *out]


def render_unit(
    flags: Sequence[str],
    *,
    system: bool = False,
    env: Mapping[str, str] | None = None,
    python: str = sys.executable,
) -> str:
    """The unit file's text for `app.py FLAGS`. Raises SystemExit on bad flags."""
    env = os.environ if env is None else env
    user = _run_as(system, env)
    # Validate the flags the way app.py will, and learn the data folder and grace period.
    settings = parse_settings(list(flags), env={})
    if settings.admin_token or settings.reset_admin_token:
        # A unit file is world-readable and a token flag would sit in it in clear.
        raise SystemExit(
            "launcher.py: leave --admin-token and --reset-admin-token out of the unit: run "
            "`python app.py --reset-admin-token --data <folder>` once in a terminal instead; "
            "the service reads the token's hash from that data folder"
        )
    data = _data_folder(flags, settings.data_dir, user, env)
    argv = [python, str(APP), *app_argv(flags, data=data)]
    lines = [
        "[Unit]",
        "Description=Ollama Host: a gateway in front of Ollama",
        f"Documentation=file://{ROOT / 'docs' / 'service.md'}",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=exec",
        f"ExecStart={' '.join(systemd_quote(a) for a in argv)}",
        f"WorkingDirectory={systemd_quote(str(ROOT))}",
        "Environment=PYTHONUNBUFFERED=1",
        *([f"User={user}"] if user else []),
        "Restart=on-failure",
        "RestartSec=2",
        # The gateway stops cleanly on SIGTERM: streams get --grace seconds, records are written.
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={int(settings.grace) + STOP_MARGIN}",
        "",
        "[Install]",
        f"WantedBy={'multi-user.target' if system else 'default.target'}",
        "",
    ]
    return "\n".join(lines)


def unit_path(system: bool, env: Mapping[str, str]) -> Path:
    if system:
        return Path("/etc/systemd/system") / UNIT
    config = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "systemd" / "user" / UNIT


def systemctl(system: bool, *args: str) -> int:
    command = ["systemctl", *([] if system else ["--user"]), *args]
    print("+", " ".join(command))
    return subprocess.run(command, check=False).returncode


def systemd_running() -> bool:
    # sd_booted(): systemd is the init system here (it is not in most containers).
    return Path("/run/systemd/system").is_dir()


def _need_systemd() -> None:
    if not sys.platform.startswith("linux") or shutil.which("systemctl") is None:
        sys.exit(
            f"launcher.py: no service mode for {sys.platform} yet (it needs systemd); "
            "run `python app.py` under your own supervisor, see docs/service.md"
        )
    if not systemd_running():
        sys.exit(
            "launcher.py: systemd is not running on this machine; "
            "`python launcher.py unit` prints the unit to install by hand"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python launcher.py",
        description="Install Ollama Host as a systemd service (a user unit unless --system).",
        epilog="Flags after the command that launcher.py does not know go to app.py, "
        "e.g. `python launcher.py install --port 5001 --ollama host:11434`.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    helps = {
        "install": "write the unit, enable it and start it now",
        "uninstall": "stop and disable the unit and remove its file",
        "status": "show systemd's view of the unit",
        "unit": "print the unit that install would write",
    }
    for name, text in helps.items():
        sub = commands.add_parser(name, help=text, description=text)
        sub.set_defaults(system=False)
        scope = sub.add_mutually_exclusive_group()
        scope.add_argument(
            "--user", dest="system", action="store_false", help="a user unit (the default)"
        )
        scope.add_argument(
            "--system", dest="system", action="store_true", help="a system unit (needs root)"
        )
    args, flags = parser.parse_known_args(argv)
    if args.command in ("uninstall", "status") and flags:
        parser.error(f"{args.command} takes no app.py flags: {' '.join(flags)}")
    system: bool = args.system
    env = os.environ

    if args.command == "unit":
        sys.stdout.write(render_unit(flags, system=system, env=env))
        return 0

    _need_systemd()
    path = unit_path(system, env)
    if args.command == "status":
        print(f"unit file: {path}{'' if path.exists() else ' (not installed)'}")
        return systemctl(system, "status", "--no-pager", UNIT)
    if args.command == "uninstall":
        if not path.exists():
            print(f"{path} does not exist: nothing to remove")
            return 0
        systemctl(system, "disable", "--now", UNIT)
        path.unlink()
        systemctl(system, "daemon-reload")
        print(f"removed {path}; the usage data folder is kept")
        return 0

    text = render_unit(flags, system=system, env=env)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")
    code = systemctl(system, "daemon-reload") or systemctl(system, "enable", "--now", UNIT)
    if code == 0:
        journal = "journalctl" + ("" if system else " --user") + f" -u {NAME} -f"
        print(f"started; logs: {journal}")
    return code


if __name__ == "__main__":
    sys.exit(main())
