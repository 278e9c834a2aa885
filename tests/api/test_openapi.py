"""docs/openapi.yaml describes exactly the routes a worker serves (no Kafka needed)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load((REPO / "docs" / "openapi.yaml").read_text())


@pytest.fixture(scope="module")
def served(model_dir, tmp_path_factory) -> set[tuple[str, str]]:
    """(METHOD, path) of every route streamrec itself adds to a worker's web server."""
    from streams.app import StreamrecWorker, WorkerConfig

    w = StreamrecWorker(WorkerConfig(model_dir=model_dir, state_dir=tmp_path_factory.mktemp("state"),
                                     store="memory"))
    routes = {(r.method, r.resource.canonical) for r in w.app.web.web_app.router.routes() if r.method != "HEAD"}
    return routes


def test_every_served_route_is_described_and_vice_versa(spec, served):
    described = {(m.upper(), path) for path, ops in spec["paths"].items() for m in ops if m in METHODS}
    assert served == described
    assert ("GET", "/users/{user_id}/recommendations") in served  # the set is not trivially empty


def test_spec_references_resolve_and_errors_are_described(spec):
    def refs(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref":
                    yield v
                else:
                    yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    for ref in refs(spec):
        node = spec
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]  # KeyError: a dangling reference
    assert spec["openapi"].startswith("3.")
    api = {p: ops for p, ops in spec["paths"].items() if p not in ("/health", "/metrics")}
    for path, ops in api.items():
        for op in ops.values():
            assert {"200", "400", "401", "503"} <= set(op["responses"]), path
    assert "413" in spec["paths"]["/recommend"]["post"]["responses"]
    assert "404" in spec["paths"]["/items/{item_id}/similar"]["get"]["responses"]
    assert spec["paths"]["/health"]["get"]["security"] == [] and spec["paths"]["/metrics"]["get"]["security"] == []
