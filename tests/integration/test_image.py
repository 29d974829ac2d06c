"""The image (``Dockerfile``) holds what the Nomad jobs run.

These machines have no Docker engine, so the image is never built here. What is checked
instead, without the base images: the Go stage's own RUN steps, run on exactly the files
it copies, build the native data path; the files the Python stage copies make a package
that installs and runs the image's command (a router on that data path) and an asr_large
instance on the model the build assembled, with the image's environment; every entry point
the Nomad jobs start is in it; the extras it installs exist.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from voxmesh.mesh.process import READY_PREFIX

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
GO_STAGE = "dataplane"
SKIPPED_RUN = "apt-get"
"""The Go stage's package install (nodejs, npm) needs root and the base image; this machine
has both tools already."""


@dataclass(frozen=True)
class Step:
    """One instruction of the Dockerfile, with the stage it belongs to."""

    stage: str
    keyword: str
    args: str


def parse(text: str) -> list[Step]:
    """Instructions, continuation lines joined, comments dropped; a stage is named by its
    ``AS`` name, else by its index."""
    steps: list[Step] = []
    stage, stages, pending = "", 0, ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            stage = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(stages)
            stages += 1
        steps.append(Step(stage, keyword, " ".join(args.split())))
    return steps


STEPS = parse(DOCKERFILE.read_text())
FINAL_STAGE = STEPS[-1].stage


def steps(keyword: str, stage: str | None = None) -> list[Step]:
    return [s for s in STEPS if s.keyword == keyword and stage in (None, s.stage)]


def env_of(stage: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for step in steps("ENV", stage):
        for pair in shlex.split(step.args):
            name, _, value = pair.partition("=")
            env[name] = value
    return env


@dataclass(frozen=True)
class Copy:
    sources: list[str]
    dest: str
    from_stage: str | None


def copies(stage: str) -> list[Copy]:
    found = []
    for step in steps("COPY", stage):
        words = shlex.split(step.args)
        flags = {w.split("=", 1)[0]: w.split("=", 1)[-1] for w in words if w.startswith("--")}
        paths = [w for w in words if not w.startswith("--")]
        found.append(Copy(paths[:-1], paths[-1], flags.get("--from")))
    return found


def data_path_copy() -> Copy:
    """The final stage's copy of the data path binary from the Go stage."""
    (copy,) = [c for c in copies(FINAL_STAGE) if c.from_stage == GO_STAGE]
    return copy


def workdir(stage: str) -> str:
    dirs = steps("WORKDIR", stage)
    return dirs[0].args if dirs else "/"


_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")
"""What .dockerignore leaves out inside the copied folders."""


def stage_files(stage: str, into: Path) -> None:
    """Copies what ``stage`` copies from the build context into ``into`` (the stage's
    first WORKDIR, or /, stands for ``into``; absolute paths are re-rooted there)."""
    base = workdir(stage)
    for copy in copies(stage):
        if copy.from_stage is not None:
            continue
        dest = copy.dest if copy.dest.startswith("/") else f"{base}/{copy.dest}"
        target = into / os.path.relpath(dest, base if dest.startswith(base) else "/")
        for source in copy.sources:
            path = ROOT / source
            if path.is_dir():
                shutil.copytree(path, target, dirs_exist_ok=True, ignore=_IGNORED)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / path.name)


def nomad_entry_points() -> set[str]:
    """The modules the Nomad jobs run with ``python -m``."""
    found = set()
    for spec in (ROOT / "nomad").glob("*.nomad.hcl"):
        text = spec.read_text()
        assert 'command = "python"' in text, spec.name
        found.update(re.findall(r'args\s*=\s*\["-m",\s*"([\w.]+)"', text))
    return found


def test_the_dockerfile_has_a_go_stage_and_a_final_stage() -> None:
    """Guards the other tests, which find their steps by stage."""
    assert steps("FROM", GO_STAGE) and FINAL_STAGE != GO_STAGE
    assert copies(FINAL_STAGE) and steps("RUN", GO_STAGE)


def test_base_images_are_pinned_to_a_version() -> None:
    for step in steps("FROM"):
        image = step.args.split()[0]
        _, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.search(r"\d", tag), image


def test_every_copied_path_is_in_the_build_context() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for stage in {s.stage for s in STEPS}:
        for copy in copies(stage):
            if copy.from_stage is not None:
                assert copy.from_stage in {s.stage for s in STEPS}, copy
                continue
            for source in copy.sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                excluded = [p for p in ignored if fnmatch.fnmatch(source, p)]
                assert not excluded, f"COPY {source}: left out by .dockerignore {excluded}"


def test_the_image_carries_every_entry_point_the_nomad_jobs_start() -> None:
    modules = nomad_entry_points()
    assert {"services.router", "services.autoscaler", "services.asr_small"} <= modules
    copied = [Path(s) for c in copies(FINAL_STAGE) for s in c.sources]
    for module in modules:
        package = Path(*module.split("."))
        assert (ROOT / package / "__main__.py").exists(), module
        assert any(package.is_relative_to(c) for c in copied), f"{module}: not copied"


def test_the_extras_it_installs_exist_and_leave_the_dev_tools_out() -> None:
    installs = [s.args for s in steps("RUN", FINAL_STAGE) if "pip install" in s.args]
    assert len(installs) == 1
    match = re.search(r"\[([\w,]+)\]", installs[0])
    assert match is not None, installs[0]
    extras = set(match.group(1).split(","))
    assert extras == {"models", "gpu"}
    assert extras <= set(PYPROJECT["project"]["optional-dependencies"])


def test_the_library_path_is_where_the_gpu_extra_puts_cublas() -> None:
    """CTranslate2 opens libcublas.so.12 by name; the gpu extra's wheel puts it under the
    Python version's site-packages."""
    image = steps("FROM", FINAL_STAGE)[0].args.split()[0]
    version = re.fullmatch(r"python:(\d+\.\d+)[\w.-]*", image)
    assert version is not None, image
    assert tuple(map(int, version.group(1).split("."))) >= (3, 11)  # requires-python
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"
    gpu = PYPROJECT["project"]["optional-dependencies"]["gpu"]
    assert any(req.startswith("nvidia-cublas-cu12==") for req in gpu)
    library_path = env_of(FINAL_STAGE)["LD_LIBRARY_PATH"].split(":")
    assert f"/usr/local/lib/python{version.group(1)}/site-packages/nvidia/cublas/lib" in (
        library_path
    )


def _run(command: str, cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"{command}: exit {done.returncode}\n{done.stderr[-4000:]}"


def build_go_stage(into: Path) -> Path:
    """Runs the Go stage's RUN steps (but the package install) on the files it copies;
    returns the data path binary, found where the final stage copies it from."""
    stage_files(GO_STAGE, into)
    env = {**os.environ, **env_of(GO_STAGE)}
    for step in steps("RUN", GO_STAGE):
        if not step.args.startswith(SKIPPED_RUN):
            _run(step.args, into, env)
    return into / os.path.relpath(data_path_copy().sources[0], workdir(GO_STAGE))


def install_python_stage(context: Path, venv: Path) -> Path:
    """Builds the package from the files the final stage copies and installs it, without
    its dependencies, into a fresh virtual environment that finds them in this one's
    site-packages (a path, not its ``.pth`` files, so the repository's editable install is
    not seen). Returns the environment's python."""
    stage_files(FINAL_STAGE, context)
    (package,) = {Path(c.dest) for c in copies(FINAL_STAGE) if "pyproject.toml" in c.sources}
    source = context / package.relative_to("/")
    wheels = context / "wheels"
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        check=True,
        timeout=300,
    )
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deps = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    (Path(site) / "voxmesh_dependencies.pth").write_text(deps + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "-q", "install", "--no-deps", "--no-index",
         *map(str, wheels.glob("*.whl"))],
        check=True,
        timeout=300,
    )  # fmt: skip
    return python


async def serve_once(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """Starts ``command``, waits for its ready line, checks its health service says
    SERVING, stops it with SIGTERM; returns its exit code and output."""
    proc = await asyncio.create_subprocess_exec(
        *command,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    output: list[str] = []
    try:
        async with asyncio.timeout(60):
            while not (line := (await proc.stdout.readline()).decode()).startswith(READY_PREFIX):
                assert line, f"exited before it was ready:\n{''.join(output)}"
                output.append(line)
        output.append(line)
        port = json.loads(line[len(READY_PREFIX) :])["port"]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            output.append((await proc.stdout.read()).decode())
            return await proc.wait(), "".join(output)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.skipif(shutil.which("go") is None or shutil.which("npm") is None, reason="no Go/npm")
async def test_the_stages_build_and_the_image_command_serves_on_the_native_data_path(
    tmp_path: Path,
) -> None:
    binary = await asyncio.to_thread(build_go_stage, tmp_path / "go")
    assert os.access(binary, os.X_OK)
    python = await asyncio.to_thread(install_python_stage, tmp_path / "ctx", tmp_path / "venv")

    image_env = env_of(FINAL_STAGE)
    # The router finds the data path where the image puts it, and instances find the base
    # model where the build assembled it (a user other than the build's root runs them).
    assert image_env.get("VOXMESH_ROUTER_DATAPLANE_BIN") == data_path_copy().dest
    assert image_env.get("VOXMESH_MODEL_CACHE", "").startswith("/opt/")
    # Those paths, re-rooted here.
    image_env["VOXMESH_MODEL_CACHE"] = str(tmp_path / "models")
    image_env["VOXMESH_ROUTER_DATAPLANE_BIN"] = str(binary)
    image_env.pop("LD_LIBRARY_PATH")
    env = {**os.environ, **image_env}
    env.pop("PYTHONPATH", None)  # pytest's, which would put the repository first
    env["HOME"] = str(tmp_path / "home")  # where models would go without the image's cache
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    models = [s.args for s in steps("RUN", FINAL_STAGE) if "python -m voxmesh.asr.models" in s.args]
    assert models, "the image resolves the models at build time"
    _run(f"{python} -m voxmesh.asr.models", run_dir, env)
    assert (tmp_path / "models" / "base" / ".verified").exists()

    for module in sorted(nomad_entry_points()):  # what the Nomad jobs run is installed
        _run(f"{python} -m {module} --help", run_dir, env)

    (cmd,) = steps("CMD", FINAL_STAGE)
    command = json.loads(cmd.args)
    assert command[0] == "python" and command[1:] == ["-m", "services.router"]
    env.update(
        VOXMESH_ROUTER_PORT="0",
        VOXMESH_ROUTER_METRICS_PORT="-1",
        VOXMESH_ROUTER_REGISTRY_DIR=str(run_dir / "registry"),
    )
    code, output = await serve_once([str(python), *command[1:]], run_dir, env)
    assert code == 0, output
    assert "msg=serving component=voxmesh-dataplane" in output, output

    # An instance of the assembled model starts from the build's cache, writing no other.
    env["VOXMESH_ASR_METRICS_PORT"] = "-1"
    code, output = await serve_once([str(python), "-m", "services.asr_large"], run_dir, env)
    assert code == 0, output
    assert '"model": "base"' in output, output
    assert not (tmp_path / "home" / ".cache" / "voxmesh").exists()
