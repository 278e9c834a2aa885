"""docker/compose.yaml: it parses, references only files that exist, and every streamrec
service runs a command the real CLI parser accepts with the settings Compose gives it.

No Docker engine runs here: the file is read as Compose would read it (YAML merge keys,
``${VAR:-default}`` interpolation) and checked against the repository and ``streams.cli``.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import re

import pytest
import yaml
from deployfiles import (
    DOCKER,
    commented_block,
    image_env,
    load_compose,
    service_env,
    streamrec_services,
)

from streams.cli import DELEGATED, build_parser

DOC = load_compose()
SERVICES = DOC["services"]
STREAMREC = streamrec_services(DOC)


def parse_command(service: dict, monkeypatch, extra_env: dict[str, str] | None = None,
                  command: list[str] | None = None):
    """Parse a service's command (or ``command``) with the real ``streamrec`` parser, under the
    environment the container would have: the image's ENV, then the service's ``environment``."""
    env = {**image_env(service), **service_env(service), **(extra_env or {})}
    env.pop("PATH", None)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    command = command or service.get("command") or ["worker"]  # the images' CMD
    err = io.StringIO()
    parser, argv = build_parser(), command
    if command[0] in DELEGATED:  # e.g. `train`: parsed by the module the CLI hands it to
        module, _, func = DELEGATED[command[0]][0].partition(":")
        parser, argv = importlib.import_module(module).build_parser(), command[1:]
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(argv), env
    except SystemExit:
        raise AssertionError(f"`streamrec {' '.join(command)}` is not a command of streams.cli: "
                             f"{err.getvalue().strip().splitlines()[-1]}") from None


def svc_command(service: dict) -> list[str]:
    return service.get("command") or ["worker"]


def test_compose_parses_with_the_expected_services():
    assert {"kafka", "topics", "worker", "trainer", "prometheus", "worker-gpu"} <= set(SERVICES)
    assert set(STREAMREC) == {"topics", "worker", "trainer", "worker-gpu"}


def test_every_referenced_file_exists_and_every_volume_is_declared():
    declared = set(DOC.get("volumes") or {})
    for name, svc in SERVICES.items():
        if "build" in svc:
            context = (DOCKER / svc["build"]["context"]).resolve()
            assert context.is_dir(), f"{name}: build context {context} missing"
            assert (context / svc["build"]["dockerfile"]).is_file(), f"{name}: Dockerfile missing"
        for vol in svc.get("volumes") or []:
            source = vol.split(":")[0]
            if source.startswith((".", "/")):
                assert (DOCKER / source).resolve().exists(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in declared, f"{name}: named volume {source} is not declared"
        for dep in svc.get("depends_on") or {}:
            assert dep in SERVICES, f"{name} depends on unknown service {dep}"
        assert "env_file" not in svc


@pytest.mark.parametrize("name", sorted(STREAMREC))
def test_service_command_is_a_real_cli_command(name, monkeypatch):
    """Each streamrec service's command parses with streams.cli's argparse parser, and the
    connection it ends up with is the one Compose configured (env defaults reach the parser).
    Delegated commands (``train``) are parsed by their own module's parser."""
    svc = STREAMREC[name]
    args, env = parse_command(svc, monkeypatch)
    assert callable(getattr(args, "func", None)) or svc_command(svc)[0] in DELEGATED
    assert args.broker == env["STREAMREC_BROKER"] == "kafka:9092"
    assert args.prefix == env["STREAMREC_PREFIX"]
    if svc_command(svc)[0] in ("worker", "topics"):
        assert args.partitions == int(env["STREAMREC_PARTITIONS"])
        assert args.replication_factor == int(env["STREAMREC_REPLICATION_FACTOR"])


def test_workers_and_topics_agree_and_workers_listen_for_prometheus(monkeypatch):
    topics, _ = parse_command(STREAMREC["topics"], monkeypatch)
    with monkeypatch.context() as m:  # `worker` alone: its --registry is checked above
        worker, worker_env = parse_command(STREAMREC["worker"], m, command=["worker"])
    assert (worker.partitions, worker.prefix, worker.replication_factor) == (
        topics.partitions, topics.prefix, topics.replication_factor)
    assert worker.web_host == "0.0.0.0", "Prometheus and the health check reach the worker from outside"
    assert str(worker.model) == worker_env["STREAMREC_MODEL_DIR"]
    # production timing, not the embedded broker's
    assert worker.session_timeout >= 10 and worker.heartbeat * 3 <= worker.session_timeout
    assert worker.fetch_wait_ms >= 100

    prom = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    sd = [c for job in prom["scrape_configs"] for c in job.get("dns_sd_configs", [])]
    worker_services = {n for n, s in STREAMREC.items() if (s.get("command") or ["worker"])[0] == "worker"}
    assert {name for c in sd for name in c["names"]} == worker_services
    assert {c["port"] for c in sd} == {worker.web_port}
    assert str(worker.web_port) in SERVICES["worker"]["expose"]


def test_health_checks_and_start_order():
    for name, svc in STREAMREC.items():
        is_worker = (svc.get("command") or ["worker"])[0] == "worker"
        # the images' HEALTHCHECK asks a worker's /health: other commands must switch it off
        assert svc.get("healthcheck", {}).get("disable", False) is (not is_worker), name
        if name != "topics":
            assert svc["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert SERVICES["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert SERVICES["topics"]["restart"] == "no"  # one-shot
    assert "healthcheck" in SERVICES["kafka"]


def test_trainer_writes_and_workers_read_one_registry_volume():
    assert "registry:/registry" in SERVICES["trainer"]["volumes"]
    for name in ("worker", "worker-gpu"):
        assert "registry:/registry:ro" in SERVICES[name]["volumes"]
        assert SERVICES[name]["command"] == ["worker", "--registry", "/registry"]
    assert SERVICES["trainer"]["command"] == ["train", "--registry", "/registry"]


def test_gpu_profile_runs_workers_on_the_gpu_image():
    gpu, cpu = SERVICES["worker-gpu"], SERVICES["worker"]
    assert gpu["profiles"] == ["gpu"] and "profiles" not in cpu
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert cpu["build"]["dockerfile"] == "docker/Dockerfile"
    assert gpu["image"] != cpu["image"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert gpu["command"] == cpu["command"] and service_env(gpu) == service_env(cpu)


def _kafka_nodes(services: dict) -> dict[str, dict]:
    return {n: s for n, s in services.items() if str(s.get("image", "")).startswith("apache/kafka:")}


def _check_kraft(nodes: dict[str, dict], broker_list: str) -> None:
    """Node ids, controller quorum and advertised listeners fit together and match the
    bootstrap list the streamrec services are given."""
    ids, advertised, external = {}, [], []
    for name, svc in nodes.items():
        env = {k: str(v) for k, v in svc["environment"].items()}
        assert "controller" in env["KAFKA_PROCESS_ROLES"] and "broker" in env["KAFKA_PROCESS_ROLES"]
        assert svc["hostname"] == name
        ids[env["KAFKA_NODE_ID"]] = name
        listeners = dict(re.findall(r"(\w+)://([^,]*)", env["KAFKA_ADVERTISED_LISTENERS"]))
        assert listeners["INTERNAL"].split(":")[0] == name, f"{name} advertises {listeners['INTERNAL']}"
        advertised.append(listeners["INTERNAL"])
        external.append(listeners["EXTERNAL"].split(":")[1])
        assert any(p.startswith(external[-1] + ":") for p in svc["ports"])
        assert env["CLUSTER_ID"] and len(env["CLUSTER_ID"]) == 22
        assert env["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"
        assert any(v.endswith(":/var/lib/kafka/data") for v in svc["volumes"])
    assert len(ids) == len(nodes), "node ids must be unique"
    assert len(set(external)) == len(nodes), "host ports must differ"
    for svc in nodes.values():
        voters = dict(v.split("@") for v in svc["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","))
        assert {k: hp.split(":")[0] for k, hp in voters.items()} == ids
        assert len({str(svc["environment"]["CLUSTER_ID"]) for svc in nodes.values()}) == 1
    assert sorted(broker_list.split(",")) == sorted(advertised)


def test_single_kraft_broker():
    nodes = _kafka_nodes(SERVICES)
    assert list(nodes) == ["kafka"]
    _check_kraft(nodes, SERVICES["worker"]["environment"]["STREAMREC_BROKER"])


def test_commented_three_broker_variant(monkeypatch, tmp_path, model_dir):
    """Uncommented as its comment says, the variant is a valid three-node KRaft quorum, and the
    streamrec services then create every topic, changelogs included, with 3 replicas."""
    text = (DOCKER / "compose.yaml").read_text()
    settings = dict(re.findall(r"#\s+(STREAMREC_\w+)=(\S+)", text))
    assert set(settings) == {"STREAMREC_BROKER", "STREAMREC_REPLICATION_FACTOR"}
    variant = yaml.safe_load(commented_block("three-broker variant (begin)", "three-broker variant (end)"))
    volumes = yaml.safe_load(commented_block("three-broker volumes (begin)", "three-broker volumes (end)"))
    doc = load_compose(settings)
    services = {n: s for n, s in doc["services"].items() if n not in _kafka_nodes(doc["services"])}
    services.update(variant)
    declared = set(doc["volumes"]) | set(volumes)
    nodes = _kafka_nodes(services)
    assert sorted(nodes) == ["kafka", "kafka-2", "kafka-3"]
    _check_kraft(nodes, settings["STREAMREC_BROKER"])
    for svc in nodes.values():
        env = svc["environment"]
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 3 and env["KAFKA_MIN_INSYNC_REPLICAS"] == 2
        assert all(v.split(":")[0] in declared for v in svc["volumes"])
    for svc in services.values():
        assert all(dep in services for dep in svc.get("depends_on") or {})

    topics, _ = parse_command(services["topics"], monkeypatch)
    assert topics.broker == settings["STREAMREC_BROKER"] and topics.replication_factor == 3
    # the worker hands it to Faust, which creates the changelog topics with it
    from streams.app import StreamrecWorker
    from streams.cli import worker_config

    env = {**image_env(services["worker"]), **service_env(services["worker"]),
           "STREAMREC_MODEL_DIR": str(model_dir), "STREAMREC_STATE_DIR": str(tmp_path)}
    env.pop("PATH")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    worker = StreamrecWorker(worker_config(build_parser().parse_args(["worker"])))
    assert worker.app.conf.topic_replication_factor == 3
