"""The README's commands work as written, from a fresh clone (issue 16).

Every command in the README's fenced shell blocks (and every ``$ `` line of its
other fenced blocks) runs with ``bash`` in the root of a fresh ``git clone`` of
this repository, with the current environment's ``varipipe`` first on PATH
(the clone has no ``.venv`` of its own; what is cloned is the last commit, not
uncommitted edits). A command fails the test if it exits non-zero.

A command that cannot run here as written matches one *named* rule of ``RULES``,
which checks it another way: cluster and Kubernetes commands through ``--help``
and the rendered manifest, the full profile as a one-point ``--quick`` subset,
long simulations with a shortened ``--duration``, ``varipipe serve`` in the
background on a free port with the ``curl`` examples sent to it. ``curl``
examples outside the fenced blocks (the pipelines table) go to this test's own
server, which checks the route, the content type and the body. A new README
command that matches no rule simply runs, so one that does not work fails.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path

import httpx
import pytest
import yaml

from varipipe.pipelines.server import free_port

from .waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SHELL_LANGS = {"sh", "bash", "shell", "console"}
# One README command may take this long before the test fails (the longest here: a
# `varipipe run` loading the flagship's three models, or serve's start, a minute or two).
COMMAND_TIMEOUT_S = 600
SERVE_START_TIMEOUT_S = 300
# Long runs are checked on a shortened window: 10 simulated minutes.
SHORT_DURATION_S = 600
# Load generators (real time) are checked on 10 s of their trace window.
SHORT_LOAD_S = 10
# The full profile is checked on one point: the first stage's smallest variant, batch 1, one core.
PROFILE_SUBSET = ("--stages", "detector", "--variants", "yolov10n-256", "--batch", "1", "--cores", "1")
# A PNG signature and nothing else: not an image any decoder accepts.
PNG_SIGNATURE_ONLY = b"\x89PNG\r\n\x1a\n"
README_PORT = "127.0.0.1:8000"  # where the README's curl examples send (varipipe serve's default)


@dataclass(frozen=True)
class Command:
    line: int  # in README.md
    text: str  # as written, comment included
    fenced: bool = True  # False: an inline `curl ...` example outside the fenced blocks

    @property
    def code(self) -> str:
        """The command without its trailing ``# comment``."""
        return strip_comment(self.text)


def strip_comment(line: str) -> str:
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def readme_commands(text: str) -> list[Command]:
    """Fenced shell lines (continuations joined), ``$ `` lines of other fences, inline curl examples."""
    out: list[Command] = []
    lang: str | None = None  # inside a fence: its language ("" when none)
    pending: tuple[int, str] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        fence = re.match(r"^\s*```\s*([\w-]*)\s*$", raw)
        if fence:
            lang = fence.group(1).lower() if lang is None else None
            continue
        if lang is None:
            out += [Command(number, m, fenced=False) for m in re.findall(r"`(curl [^`]+)`", raw)]
            continue
        line = raw.strip()
        if pending is not None:
            line, number = pending[1] + " " + line, pending[0]
            pending = None
        elif lang in SHELL_LANGS:
            if not line or line.startswith("#"):
                continue
        elif raw.startswith("$ "):
            line = raw[2:].strip()
        else:
            continue
        if line.endswith("\\"):
            pending = (number, line[:-1].rstrip())
            continue
        out.append(Command(number, line))
    return out


# ----------------------------------------------------------------------------- running


@dataclass
class Context:
    clone: Path
    env: dict[str, str]
    failures: list[str] = field(default_factory=list)
    serve: subprocess.Popen | None = None
    serve_port: int = 0
    serve_log: Path | None = None
    stub: ExampleServer | None = None

    @property
    def stub_url(self) -> str:
        return self.stub.url if self.stub else ""

    def run(self, cmd: Command, script: str, timeout_s: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess | None:
        """Run ``script`` for README line ``cmd``; a failure is recorded (and None returned)."""
        print(f"README.md:{cmd.line}: {script}", flush=True)  # what ran, in the test's log
        try:
            proc = subprocess.run(["bash", "-c", script], cwd=self.clone, env=self.env, capture_output=True,
                                  text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout or ""
            self.fail(cmd, f"ran past {timeout_s:.0f} s: {script}\n{out[-1500:]}")
            return None
        if proc.returncode != 0:
            self.fail(cmd, f"exit {proc.returncode}: {script}\n{(proc.stdout + proc.stderr)[-2500:]}")
            return None
        return proc

    def fail(self, cmd: Command, message: str) -> None:
        self.failures.append(f"README.md:{cmd.line}: {cmd.text}\n  {message}")


def run_as_written(cmd: Command, ctx: Context) -> None:
    ctx.run(cmd, cmd.code)


def check_help(cmd: Command, ctx: Context) -> None:
    """Not run (needs a cluster): the program and every --option it uses exist (``--help``)."""
    words = shlex.split(cmd.code)
    program = words[:2] if words[0] in ("varipipe", "ray", "kubectl") else words[:1]
    proc = ctx.run(cmd, shlex.join([*program, "--help"]))
    if proc is None:
        return
    for option in (w.split("=", 1)[0] for w in words if w.startswith("--")):
        if option not in proc.stdout:
            ctx.fail(cmd, f"{option} is not an option of {' '.join(program)} (its --help does not list it)")
    for arg in words[2:]:
        if re.search(r"\.ya?ml$", arg) and not (ctx.clone / arg).is_file():
            ctx.fail(cmd, f"{arg} is not in the repository")


def check_manifest(cmd: Command, ctx: Context) -> None:
    """Not run (needs Kubernetes): the manifest it applies, rendered by the command before, is a RayService."""
    words = shlex.split(cmd.code)
    path = ctx.clone / words[words.index("-f") + 1]
    if not path.is_file():
        ctx.fail(cmd, f"{path.name} does not exist: the README makes it with `varipipe deploy render` first")
        return
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    if not any(d.get("kind") == "RayService" for d in docs):
        ctx.fail(cmd, f"{path.name} holds no RayService: kinds {[d.get('kind') for d in docs]}")


def profile_subset(cmd: Command, ctx: Context) -> None:
    """The full profile takes an hour: the same command on one --quick point."""
    extra = [] if "--quick" in cmd.code else ["--quick"]
    ctx.run(cmd, cmd.code + " " + shlex.join([*extra, *PROFILE_SUBSET, "--no-progress"]))


def shortened(cmd: Command, ctx: Context) -> None:
    """A long simulation or experiment: the same command on a shorter window."""
    code = re.sub(r"\s--duration\s+\d+", "", cmd.code)
    ctx.run(cmd, f"{code} --duration {SHORT_DURATION_S}")


def load_to_this_test(cmd: Command, ctx: Context) -> None:
    """A load generator against `varipipe serve`: 10 s of it, sent to this test's server, which
    checks every request (route, content type, an image that decodes)."""
    if README_PORT not in cmd.code:
        ctx.fail(cmd, f"a load command that does not go to {README_PORT} (varipipe serve's default)")
        return
    code = re.sub(r"\s--duration\s+\d+", "", cmd.code).replace(README_PORT, ctx.stub_url)
    before = len(ctx.stub.requests)
    if ctx.run(cmd, f"{code} --duration {SHORT_LOAD_S}") is None:
        return
    got = ctx.stub.requests[before:]
    bad = [p for p in got if p]
    if not got or bad:
        ctx.fail(cmd, f"{len(got)} requests reached the server, {len(bad)} wrong: {bad[:3]}")


def serve_in_background(cmd: Command, ctx: Context) -> None:
    """`varipipe serve` runs until stopped: start it on a free port; the curl examples go to it."""
    stop_serve(ctx)  # one at a time: a later `varipipe serve` in the README replaces the one before
    ctx.serve_port = free_port()
    ctx.serve_log = ctx.clone / "serve.log"
    script = f"exec {cmd.code} --port {ctx.serve_port}"
    print(f"README.md:{cmd.line}: {script} (in the background)", flush=True)
    with open(ctx.serve_log, "w") as log:
        ctx.serve = subprocess.Popen(["bash", "-c", script], cwd=ctx.clone, env=ctx.env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def healthy() -> bool:
        if ctx.serve.poll() is not None:
            return True  # exited: reported below
        try:
            return httpx.get(f"http://127.0.0.1:{ctx.serve_port}/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        eventually(healthy, f"{script} answering /healthz", SERVE_START_TIMEOUT_S)
    except AssertionError as e:
        ctx.fail(cmd, f"{e}\n{ctx.serve_log.read_text()[-2500:]}")
        return
    if ctx.serve.poll() is not None:
        ctx.fail(cmd, f"exited with {ctx.serve.returncode}:\n{ctx.serve_log.read_text()[-2500:]}")


def stop_serve(ctx: Context) -> None:
    serve, ctx.serve = ctx.serve, None
    if serve is None or serve.poll() is not None:
        return
    serve.send_signal(signal.SIGTERM)  # varipipe serve stops its application and its Ray
    try:
        serve.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(serve.pid, signal.SIGKILL)
        serve.wait()


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def on_a_gpu(cmd: Command, ctx: Context) -> None:
    """Needs an NVIDIA GPU: where there is one, checked as its CPU counterpart is (serve in the
    background, profile on one --quick point); where there is none, with --help."""
    if not has_gpu():
        check_help(cmd, ctx)
    elif cmd.code.startswith("varipipe serve "):
        serve_in_background(cmd, ctx)
    else:
        profile_subset(cmd, ctx)


def curl(cmd: Command, ctx: Context) -> None:
    """A fenced curl example: sent to the README's own `varipipe serve`, which must answer 200."""
    if README_PORT not in cmd.code:
        ctx.fail(cmd, f"a curl example that does not go to {README_PORT} (varipipe serve's default)")
        return
    if cmd.fenced:
        if ctx.serve is None or ctx.serve.poll() is not None:
            ctx.fail(cmd, "no `varipipe serve` runs for this curl example (the README starts one before it)")
            return
        url = f"127.0.0.1:{ctx.serve_port}"
    else:
        url = ctx.stub_url
    proc = ctx.run(cmd, cmd.code.replace(README_PORT, url) + " --fail-with-body")
    if proc is not None and cmd.fenced and "stages" not in json.loads(proc.stdout):
        ctx.fail(cmd, f"the reply has no stages: {proc.stdout[:500]}")


@dataclass(frozen=True)
class Rule:
    """A README command that cannot run here as written, and how it is checked instead."""

    name: str
    pattern: str  # re.search on the command without its comment
    check: Callable[[Command, Context], None]


RULES = (
    Rule("make demo / make test: CI runs both", r"^make (demo|test)$", lambda cmd, ctx: None),
    Rule("activating make's .venv: this test runs the current environment's varipipe",
         r"^\. \.venv/bin/activate$", lambda cmd, ctx: None),
    Rule("cluster: `ray up` needs machines; checked with --help and the YAML it names", r"^ray up ", check_help),
    Rule("cluster: `varipipe serve --address` joins a Ray cluster; checked with --help",
         r"^varipipe serve .*--address", check_help),
    Rule("Kubernetes: `kubectl apply` needs a cluster; the manifest `varipipe deploy render` wrote is checked",
         r"^kubectl apply ", check_manifest),
    Rule("GPU commands: run (as their CPU counterparts are checked) on a GPU; on a machine without one, --help",
         r"^varipipe (serve|profile) .*--gpus?\b", on_a_gpu),
    Rule("the full profile (an hour): one --quick point of the same command", r"^varipipe profile --pipeline ",
         profile_subset),
    Rule(f"long simulations and experiments: --duration {SHORT_DURATION_S}", r"^varipipe (simulate|experiment) ",
         shortened),
    Rule(f"load generators run in real time: {SHORT_LOAD_S} s of the window, to this test's server",
         r"^(locust|varipipe load) ", load_to_this_test),
    Rule("`varipipe serve` runs until stopped: in the background, on a free port", r"^varipipe serve ",
         serve_in_background),
    Rule("curl examples: to the README's `varipipe serve`, or (outside the fences) to this test's server",
         r"^curl ", curl),
)


def rule_for(cmd: Command) -> Rule | None:
    return next((r for r in RULES if re.search(r.pattern, cmd.code)), None)


# --------------------------------------------------------------- this test's own server


class _Examples(BaseHTTPRequestHandler):
    """Answers a pipeline request with 200 if its route, content type and body are right, else 400 saying why."""

    server: ExampleServer

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        problem = _request_problem(self.path, self.headers.get("content-type", ""), body)
        self.server.requests.append(problem)
        self.send_response(400 if problem else 200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"error": problem} if problem else {"stages": []}).encode())

    def log_message(self, *args) -> None:
        pass


class ExampleServer(ThreadingHTTPServer):
    """This test's stand-in for `varipipe serve`: ``requests`` holds each request's problem ("" if none)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Examples)
        self.requests: list[str] = []
        self.url = f"127.0.0.1:{self.server_address[1]}"


def _request_problem(path: str, ctype: str, body: bytes) -> str:
    from PIL import Image

    from varipipe.spec import find_spec

    try:
        spec = find_spec(path.strip("/"))
    except Exception as e:  # noqa: BLE001 - the message says what is wrong
        return f"route {path}: {e}"
    if ctype == "application/json":
        doc = json.loads(body)
        return "" if isinstance(doc, dict) and (doc.get("text") or doc.get("image")) else f"JSON without text/image: {doc}"
    if spec.input_kind != "image":
        return f"{spec.name} takes {spec.input_kind}, sent {ctype}"
    try:
        fmt = Image.open(BytesIO(body)).format
    except Exception as e:  # noqa: BLE001
        return f"body is not an image ({e})"
    return "" if ctype == f"image/{fmt.lower()}" else f"content-type {ctype} but the body is {fmt}"


@pytest.fixture
def example_server():
    server = ExampleServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


# ------------------------------------------------------------------------------ tests


def test_every_rule_is_used_and_the_readme_has_commands():
    commands = readme_commands(README.read_text(encoding="utf-8"))
    assert len(commands) >= 10, commands
    unused = [r.name for r in RULES if not any(rule_for(c) is r for c in commands)]
    assert not unused, f"rules that match no README command (remove them): {unused}"


def test_readme_parsing_joins_continuations_and_strips_comments():
    text = "\n".join(["```sh", "# a comment line", "varipipe solve \\", "  --rps 2   # why", "```", "```",
                      "$ varipipe run chelsea", "output", "```", "see `curl -X POST http://127.0.0.1:8000/x`"])
    cmds = readme_commands(text)
    assert [(c.line, c.code, c.fenced) for c in cmds] == [
        (3, "varipipe solve --rps 2", True), (7, "varipipe run chelsea", True),
        (10, "curl -X POST http://127.0.0.1:8000/x", False)]
    assert strip_comment("""echo '#not' "a # b" # c""") == """echo '#not' "a # b\""""


def run_readme(text: str, folder: Path, stub: ExampleServer) -> list[str]:
    """Run (or check by its rule) every command of README ``text`` in ``folder``; the failures."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VARIPIPE_TOKEN")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    ctx = Context(folder, env, stub=stub)
    try:
        for cmd in readme_commands(text):
            rule = rule_for(cmd)
            (rule.check if rule else run_as_written)(cmd, ctx)
    finally:
        stop_serve(ctx)
    return ctx.failures


def test_a_readme_command_that_does_not_work_fails(tmp_path, example_server):
    text = "\n".join(["```sh", "true", "ls no-such-file.txt   # not there", "make demo", "```",
                      "and `curl -X POST --data-binary @x.png -H 'content-type: image/jpeg' http://127.0.0.1:8000/doc-ocr`",
                      "or `curl -X POST -d '{}' -H 'content-type: application/json' http://127.0.0.1:8000/no-such`"])
    (tmp_path / "x.png").write_bytes(PNG_SIGNATURE_ONLY)
    failures = run_readme(text, tmp_path, example_server)
    assert len(failures) == 3, failures
    assert failures[0].startswith("README.md:3: ls no-such-file.txt") and "exit 2" in failures[0]
    assert "README.md:6" in failures[1] and "body is not an image" in failures[1]
    assert "README.md:7" in failures[2] and "route /no-such" in failures[2]


@pytest.mark.integration
@pytest.mark.slow
def test_readme_commands_work_from_a_fresh_clone(tmp_path, example_server):
    clone = tmp_path / "varipipe"
    proc = subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], capture_output=True, text=True)
    assert proc.returncode == 0, f"this test needs the repository as a git checkout: {proc.stderr}"
    failures = run_readme((clone / "README.md").read_text(encoding="utf-8"), clone, example_server)
    assert not failures, f"{len(failures)} README command(s) failed:\n\n" + "\n\n".join(failures)
