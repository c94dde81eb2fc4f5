"""The embedded model: a first `scripts/run` on a machine without a model server still answers.

With `--embedded-model` (scripts/run turns it on), no upstream configured (no `--ollama`,
`--upstream`, `--upstreams` nor `OLLAMA_HOST`: the settings resolve the switch off when one
is) and nothing answering at Ollama's default address, the gateway runs llama.cpp's
`llama-server` with SmolLM2-135M, a tiny model for trying it out, as its one upstream, named
`smollm2:135m` (Ollama's own name for that model, so the README's examples work as written
against either). scripts/llama-server builds the server once per machine into a cache (about
7 minutes, its progress on the terminal) and prints the binary's and the model's paths.

The server is the gateway's child, and never outlives it:

- a clean stop (SIGTERM, Ctrl-C) stops it after the calls in flight have had their grace;
  it runs in a process group of its own, so a terminal's Ctrl-C reaches the gateway only;
- an exception that ends the gateway stops it the same way, on the way out;
- `kill -9` or a crash of the interpreter: the kernel kills it (PR_SET_PDEATHSIG, set in the
  child before it runs the server; Linux only).

It is a program matter, not the composition root's: the program starts it, and hands it to
the gateway (and to each of `--workers N`) as an ordinary `--upstream`, so nothing else knows
it exists.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from .settings import Settings

log = logging.getLogger("ollama_host")

NAME = "smollm2:135m"
UPSTREAM = "embedded"
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "llama-server"
# Where Ollama listens unless told otherwise: something there is taken for Ollama.
OLLAMA_DEFAULT = ("127.0.0.1", 11434)
READY_SECONDS = 120.0
MAX_TOKENS = 256
STOP_SECONDS = 10.0
PR_SET_PDEATHSIG = 1


class EmbeddedModel:
    """The running llama-server: its address, its process, and its log."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
        self.process = process
        self.url = url
        self.log_path = log_path
        self._stopping = threading.Event()

    def watch(self) -> None:
        """From now on, say loudly if the server ends while the gateway still serves."""
        threading.Thread(target=self._watch, name="embedded-model", daemon=True).start()

    @property
    def upstream(self) -> str:
        """The model as `--upstream` names it."""
        return f"{UPSTREAM}={self.url},kind=openai"

    def _watch(self) -> None:
        code = self.process.wait()
        if not self._stopping.is_set():
            log.error(
                "the embedded model (llama-server, pid %d) exited with status %d; asks fail "
                "until the gateway is restarted. Its log: %s",
                self.process.pid,
                code,
                self.log_path,
            )

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after STOP_SECONDS) and wait for it."""
        self._stopping.set()
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        log.info("stopped the embedded model (llama-server, pid %d)", self.process.pid)

    def banner(self, settings: Settings) -> str:
        """What the start says, loudly: what runs, and how to use a real server instead."""
        rule = "*" * 78
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
        return (
            f"\n{rule}\n"
            f"  EMBEDDED MODEL: no model server is configured and nothing answers at Ollama's\n"
            f"  default address (http://{OLLAMA_DEFAULT[0]}:{OLLAMA_DEFAULT[1]}), so the "
            f"gateway runs a tiny model for\n"
            f"  trying it out: SmolLM2-135M as {NAME!r}, under llama.cpp's llama-server\n"
            f"  (pid {self.process.pid}, {self.url}), started and stopped with the gateway;\n"
            f"  its answers stop at {MAX_TOKENS} tokens unless a call asks for more.\n"
            f"  Its log: {self.log_path}\n"
            f"  Try: curl http://{host}:{settings.port}/api/v1/ai/ask_sync "
            f'-d \'{{"agent": "{NAME}", "content": "Say hi."}}\'\n'
            f"  For a real model server, start Ollama and restart the gateway, or name one:\n"
            f"    scripts/run --ollama HOST:PORT\n"
            f"    scripts/run --upstream NAME=http://HOST:PORT,kind=openai   (llama-server, vLLM)\n"
            f"  OLLAMA_GATEWAY_EMBEDDED_MODEL=0 scripts/run never starts this model.\n"
            f"{rule}"
        )


def answers(address: tuple[str, int], seconds: float = 1.0) -> bool:
    """Whether anything accepts a connection at `address`."""
    try:
        with socket.create_connection(address, timeout=seconds):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _dies_with_this_process() -> Callable[[], None] | None:
    """A function for the child to run before it becomes the server: the kernel sends it
    SIGKILL when this process dies, however it dies. Everything it calls is looked up here,
    before the fork, so the child only makes one system call (or exits, if this process died
    before the call could take effect)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)

    return in_child


def _binaries() -> tuple[Path, Path] | None:
    """llama-server and the model, built or fetched once by scripts/llama-server, whose
    progress goes to this terminal; None (logged) if it cannot provide them."""
    if not SCRIPT.is_file():
        log.error(
            "the embedded model needs scripts/llama-server, which only a checkout has; "
            "point the gateway at a model server with --ollama or --upstream"
        )
        return None
    log.info(
        "no upstream is named and nothing answers at Ollama's default address: providing "
        "the embedded model with scripts/llama-server (built once into a cache, about 7 "
        "minutes the first time)"
    )
    try:
        done = subprocess.run(
            [str(SCRIPT)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHON": sys.executable},
            check=True,
        )
        server, model = done.stdout.split()
    except (subprocess.CalledProcessError, OSError, ValueError) as exc:
        log.error(
            "could not provide the embedded model (%s): scripts/llama-server needs cmake, a C++ "
            "compiler and PyPI once; or point the gateway at a model server with --ollama or "
            "--upstream",
            exc,
        )
        return None
    return Path(server), Path(model)


def start(settings: Settings, *, ollama: tuple[str, int] = OLLAMA_DEFAULT) -> EmbeddedModel | None:
    """Run the embedded model if the settings ask for it and nothing answers at `ollama`;
    None otherwise, or if it cannot run (logged: the gateway then asks Ollama's default
    address, as without the switch)."""
    if not settings.embedded_model:
        return None
    if answers(ollama):
        log.info(
            "something answers at http://%s:%d, Ollama's default address: asking it, "
            "not the embedded model",
            *ollama,
        )
        return None
    found = _binaries()
    if found is None:
        return None
    server, model = found
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    settings.data_path.mkdir(parents=True, exist_ok=True)
    log_path = settings.data_path / "embedded-model.log"
    argv = [str(server), "-m", str(model), "--host", "127.0.0.1", "--port", str(port)]
    # Two slots of 2,048 tokens, and embeddings (mean pooling) besides chat and completions.
    argv += ["--alias", NAME, "-c", "4096", "--parallel", "2", "--embeddings", "--pooling", "mean"]
    # 256 tokens an answer unless a call asks for more (its num_predict or max_tokens wins): a
    # model this small often never ends on its own ("Count to five." ran on for 2,014
    # tokens, two minutes, until its context was full).
    argv += ["-n", str(MAX_TOKENS)]
    # Half the cores, at most 4: a 135M model gains little from more, the gateway and the
    # rest of the machine keep theirs, and llama.cpp's threads, which spin while they wait
    # for each other, slow to a crawl when they outnumber the free cores (measured on a
    # loaded 2-core machine: 14-36 ms a token with 1 thread, 82-2,500 ms with 2).
    argv += ["-t", str(max(1, min(4, (os.cpu_count() or 2) // 2)))]
    with open(log_path, "wb") as output:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            process_group=0,
            # Run between fork and exec while other threads exist (the log writer, the
            # store's): safe here, since it takes no lock, only makes one prepared call.
            preexec_fn=_dies_with_this_process(),
        )
    embedded = EmbeddedModel(process, url, log_path)
    try:
        failure = _wait_ready(embedded)
    except BaseException:  # Ctrl-C while it loads: it must not outlive the gateway
        embedded.stop()
        raise
    if failure is not None:
        embedded.stop()
        log.error("the embedded model could not start: %s", failure)
        return None
    embedded.watch()
    return embedded


def _wait_ready(embedded: EmbeddedModel) -> str | None:
    """Wait until llama-server answers /health with 200 (503 while it loads); why not, if
    it exits or takes longer than READY_SECONDS."""
    deadline = time.monotonic() + READY_SECONDS
    with httpx.Client(trust_env=False, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if embedded.process.poll() is not None:
                tail = embedded.log_path.read_text(errors="replace")[-2000:]
                return f"llama-server exited with status {embedded.process.returncode}:\n{tail}"
            with contextlib.suppress(httpx.HTTPError):
                if client.get(embedded.url + "/health").status_code == 200:
                    return None
            time.sleep(0.1)
    return f"llama-server did not answer within {READY_SECONDS:g} s; its log: {embedded.log_path}"
