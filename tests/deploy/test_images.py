"""docker/Dockerfile and docker/Dockerfile.gpu: installed by the same script as the test
environment (.ci/install, via .ci/setup and .ci/run), model baked where the worker looks,
non-root, health-checked, and built only from files that exist and enter the build context.
"""
from __future__ import annotations

import fnmatch
import shlex
import subprocess
import tomllib

import pytest
from deployfiles import DOCKERFILES, REPO, copy_sources, dockerfile_stages

from streams.cli import build_parser
from training.export import build_parser as export_parser

INSTALL = ".ci/install"


def _install_calls(text: str) -> list[list[str]]:
    """Every ``.ci/install`` invocation in a shell text: its arguments."""
    calls = []
    for line in text.replace("\\\n", " ").replace("&&", "\n").splitlines():
        words = shlex.split(line, comments=True)
        for i, w in enumerate(words):
            if w.endswith(INSTALL):
                calls.append(words[i + 1:])
    return calls


def test_ci_and_images_share_one_install_script():
    run = (REPO / ".ci/run").read_text()
    assert "bash .ci/setup" in run and "pytest -q tests" in run
    setup = _install_calls((REPO / ".ci/setup").read_text())
    assert setup == [[".venv/bin/python", "--editable", "--extras", "test,baselines"]]
    for kind, path in DOCKERFILES.items():
        build = dockerfile_stages(path)[0]
        calls = [c for a in build.args("RUN") for c in _install_calls(a)]
        assert len(calls) == 1, f"{path.name}: install with {INSTALL} exactly once"
        assert calls[0][0] == "/opt/streamrec/bin/python"
        assert calls[0][1:] == ["--onnxruntime", {"cpu": "cpu", "gpu": "cuda"}[kind]]
        # nothing else installs Python packages behind the script's back
        assert not any("pip install" in a for a in build.args("RUN")), path.name


@pytest.mark.parametrize("args", [["--onnxruntime", "cpu"], ["--onnxruntime", "cuda"],
                                  ["--editable", "--extras", "test,baselines"]])
def test_install_script_accepts_the_options_used(args, tmp_path):
    """The script checks its options before touching anything: with a Python that does not exist
    it stops at the interpreter check, which it only reaches when the options are valid."""
    missing = str(tmp_path / "no-venv" / "bin" / "python")
    r = subprocess.run(["bash", str(REPO / INSTALL), missing, *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "no Python interpreter" in r.stderr, r.stderr
    bad = subprocess.run(["bash", str(REPO / INSTALL), missing, "--onnxruntime", "rocm"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "must be gpu, cpu or cuda" in bad.stderr


def _dockerignore_allows(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent matches too."""
    allowed = True
    parts = path.split("/")
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) and (pattern.count("/") == p.count("/") or "**" in pattern)
               for p in prefixes):
            allowed = negate
    return allowed


def test_build_context_holds_what_the_images_copy():
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    for path in DOCKERFILES.values():
        copied = [src for stage in dockerfile_stages(path) for src in copy_sources(stage)]
        for src in copied:
            assert (REPO / src).exists(), f"{path.name} copies {src}, which does not exist"
            assert _dockerignore_allows(src), f"{path.name} copies {src}, excluded by .dockerignore"
        for pkg in {p.split(".")[0] for p in packages}:
            assert pkg in copied, f"{path.name} does not copy package {pkg}"
        assert "pyproject.toml" in copied and "README.md" in copied  # README is the package's readme
    assert not _dockerignore_allows(".venv/bin/python") and not _dockerignore_allows("tests/conftest.py")
    assert not _dockerignore_allows("streams/__pycache__/cli.cpython-311.pyc")


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_image_bakes_the_model_where_the_worker_reads_it(kind, monkeypatch):
    build, run = dockerfile_stages(DOCKERFILES[kind])[0], dockerfile_stages(DOCKERFILES[kind])[-1]
    exports = [shlex.split(a) for a in build.args("RUN") if "export-onnx" in a]
    assert len(exports) == 1
    words = exports[0]
    argv = words[words.index("export-onnx") + 1:]
    argv = argv[: argv.index("&&")] if "&&" in argv else argv
    args = export_parser().parse_args(argv)
    variants = set(args.variants.split(","))
    assert variants <= {"fp32", "int8", "fp16"}
    assert "int8" in variants  # the CPU variant: the GPU image falls back to it without CUDA
    if kind == "gpu":
        assert "fp16" in variants
    assert any("chmod -R a+rX /models" in a for a in build.args("RUN")), "the non-root user must read it"
    assert any(a.startswith("--from=build /models") for a in run.args("COPY"))

    env = run.env()
    assert env["STREAMREC_MODEL_DIR"] == args.out
    for key, value in env.items():
        if key != "PATH":
            monkeypatch.setenv(key, value)
    worker = build_parser().parse_args(["worker"])  # the image's CMD
    assert str(worker.model) == args.out
    assert worker.web_host == "0.0.0.0"
    assert str(worker.state_dir) == "/var/lib/streamrec/state"


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_image_runs_as_non_root_with_a_health_check(kind):
    run = dockerfile_stages(DOCKERFILES[kind])[-1]
    assert run.args("USER") == ["streamrec"]
    assert any("--uid 10001" in a for a in run.args("RUN"))
    assert any("chown -R streamrec:streamrec /var/lib/streamrec /registry" in a for a in run.args("RUN"))
    assert run.args("ENTRYPOINT") == ['["streamrec"]'] and run.args("CMD") == ['["worker"]']
    (health,) = run.args("HEALTHCHECK")
    assert health.endswith('CMD ["python", "/usr/local/bin/streamrec-healthcheck"]')
    assert any(a.split()[0] == "docker/healthcheck.py" and a.split()[1] == "/usr/local/bin/streamrec-healthcheck"
               for a in run.args("COPY"))
    assert run.args("EXPOSE") == [run.env()["STREAMREC_WEB_PORT"]]
    # build tools stay in the build stage
    assert not any("build-essential" in a for a in run.args("RUN"))
