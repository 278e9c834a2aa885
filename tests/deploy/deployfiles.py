"""Readers for the deployment files (Dockerfiles, compose.yaml), for tests/deploy.

No Docker engine runs where the tests run, so the tests read these files the way Docker would
(instructions, stages, ``${VAR:-default}`` interpolation) and check them against the real CLI,
the real install script and the files in the repository.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile", "gpu": DOCKER / "Dockerfile.gpu"}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def args(self, instruction: str) -> list[str]:
        return [a for i, a in self.instructions if i == instruction]

    def env(self) -> dict[str, str]:
        """The ENV variables this stage sets (``KEY=VALUE`` form, later ones win)."""
        out: dict[str, str] = {}
        for a in self.args("ENV"):
            for pair in shlex.split(a):
                key, sep, value = pair.partition("=")
                assert sep, f"ENV {a!r}: use KEY=VALUE"
                out[key] = value
        return out


def dockerfile_stages(path: Path) -> list[Stage]:
    """Instructions of a Dockerfile by stage; continuation lines joined, comments dropped."""
    logical: list[str] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments may also sit between continuation lines
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    assert not buf, f"{path}: dangling line continuation"
    stages: list[Stage] = []
    for line in logical:
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif stages:
            stages[-1].instructions.append((instr, rest.strip()))
    return stages


def copy_sources(stage: Stage) -> list[str]:
    """Build-context paths a stage copies in (``COPY --from`` excluded)."""
    out = []
    for a in stage.args("COPY"):
        words = shlex.split(a)
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        out.extend(words[:-1])
    return out


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value, env: dict[str, str]):
    """Compose's variable substitution: ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``$$``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, default = m.group(2), m.group(3)
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        return env.get(name, "")

    return _VAR.sub(sub, value)


def load_compose(env: dict[str, str] | None = None, text: str | None = None) -> dict:
    """compose.yaml as Compose sees it with ``env`` as the shell/.env (empty: all defaults)."""
    doc = yaml.safe_load(COMPOSE.read_text() if text is None else text)
    return interpolate(doc, env or {})


def service_env(service: dict) -> dict[str, str]:
    """A service's ``environment`` (map or list form) as strings; None values are dropped."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    return {k: str(v) for k, v in env.items() if v is not None}


def image_env(service: dict) -> dict[str, str]:
    """ENV of the final stage of the image a service builds from this repository."""
    dockerfile = (DOCKER / service["build"]["context"] / service["build"]["dockerfile"]).resolve()
    return dockerfile_stages(dockerfile)[-1].env()


def streamrec_services(doc: dict) -> dict[str, dict]:
    """Services that run an image built from this repository (their command is a streamrec command)."""
    return {n: s for n, s in doc["services"].items() if "build" in s}


def commented_block(begin: str, end: str) -> str:
    """The lines between two marker comments in compose.yaml, uncommented (``# `` removed)."""
    lines = COMPOSE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if begin in line)
    stop = next(i for i, line in enumerate(lines) if end in line)
    out = []
    for line in lines[start + 1:stop]:
        body = line.strip()
        if not body.startswith("#"):
            raise AssertionError(f"uncommented line inside the commented block: {line!r}")
        indent = line[: len(line) - len(line.lstrip())]
        out.append(indent + body[2:] if body.startswith("# ") else "")
    return "\n".join(out)
