"""A new user's first `scripts/run`, in a fresh clone, on a machine with no model server: run by
tests/test_ollama_host_embedded.py as `unshare -n python -m tests.embedded_smoke CLONE FOLDER`.

The network namespace has nothing but loopback: nothing answers at Ollama's default address
(port 11434) whatever else runs on this machine, port 5000 (the README's) is free, and
nothing reaches beyond the machine. Inside it, this:

1. runs `scripts/run` with no arguments, as the README says, and waits for it;
2. runs every command of the README's "Try it" block literally, with `$TOKEN` set;
3. stops it with SIGTERM;
4. runs it again and kills it with SIGKILL;
5. runs it again with its port taken, so that it fails once its model runs;
6. runs it once more with an upstream named (`--ollama` at a port where nothing listens);

and prints one JSON object: each command's output, the log of each run, and the llama-server
processes each run started and whether any is still alive afterwards.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.gateway_proc import free_port

TOKEN = "embedded-smoke-admin-token"
GATEWAY = "http://127.0.0.1:5000"


def try_it(readme: str) -> list[str]:
    """The commands of the README's "Try it" block, each as it is written there."""
    section = readme.split("\n## Try it\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "no bash block under Try it"
    commands = []
    for chunk in block[1].split("\n\n"):
        lines = [line for line in chunk.splitlines() if not line.startswith("#")]
        if lines:
            commands.append("\n".join(lines))
    return commands


def children(pid: int) -> list[int]:
    """The llama-server processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid and b"llama-server" in command:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting to be reaped has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def ended(pids: list[int], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class Run:
    """One `scripts/run` in the clone, its log in a file."""

    def __init__(self, clone: Path, folder: Path, name: str, *args: str) -> None:
        self.log_path = folder / f"{name}.log"
        env = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", str(folder)),
            # A data folder of its own; the model's cache is the machine's (~/.cache).
            "XDG_DATA_HOME": str(folder / name),
            "OLLAMA_GATEWAY_ADMIN_TOKEN": TOKEN,
        }
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [str(clone / "scripts" / "run"), *args],
                cwd=clone,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_up(self, seconds: float = 300.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"scripts/run exited:\n{self.log()}")
            try:
                if httpx.get(GATEWAY + "/health", timeout=2, trust_env=False).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"scripts/run did not come up:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def end(self, signum: int) -> int:
        self.process.send_signal(signum)
        return self.process.wait(60)


def main(clone: Path, folder: Path) -> dict[str, Any]:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    result: dict[str, Any] = {}

    first = Run(clone, folder, "first")
    first.wait_up()
    models = children(first.process.pid)
    outputs = []
    for command in try_it((clone / "README.md").read_text()):
        done = subprocess.run(
            ["bash", "-c", command],
            env={"PATH": os.environ["PATH"], "TOKEN": TOKEN},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        outputs.append({"command": command, "code": done.returncode, "out": done.stdout})
    result["try_it"] = outputs
    result["sigterm"] = {
        "models": models,
        "code": first.end(signal.SIGTERM),
        "ended": ended(models),
        "log": first.log(),
    }

    second = Run(clone, folder, "second")
    second.wait_up()
    models = children(second.process.pid)
    result["sigkill"] = {
        "models": models,
        "code": second.end(signal.SIGKILL),
        "ended": ended(models),
        "log": second.log(),
    }

    # A gateway that fails after its model started (here: its port is taken) takes it along.
    with socket.create_server(("127.0.0.1", 5000)):
        failed = Run(clone, folder, "failed")
        code = failed.process.wait(300)
    models = [int(pid) for pid in re.findall(r"\(pid (\d+), http", failed.log())]
    result["failed"] = {"models": models, "code": code, "ended": ended(models), "log": failed.log()}

    named = Run(clone, folder, "named", "--ollama", f"http://127.0.0.1:{free_port()}")
    named.wait_up()
    result["named"] = {
        "models": children(named.process.pid),
        "code": named.end(signal.SIGTERM),
        "log": named.log(),
    }
    return result


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]))))
