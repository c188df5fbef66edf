"""The local stack: a single-node KRaft Kafka broker and Apicurio Registry as plain
processes on this machine, run from jars fetched from Maven Central.

Jars live in ``Settings.jar_cache/<component>/`` (a marker file records the hash of
the pom they came from, so a second setup does nothing). Layout under
``Settings.state_dir``::

    kafka/data/           broker log dirs (formatted once, kept across restarts)
    run/<service>.pid     pid of each running service
    logs/<service>.log    each service's output
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from confluent_kafka.admin import AdminClient

from reelpulse.errors import StackError
from reelpulse.settings import ENV_PREFIX, PROJECT_ROOT, Settings

log = logging.getLogger("reelpulse.stack")

JVM_DIR = PROJECT_ROOT / "jvm"
REGISTRY_RUNNER_GLOB = "apicurio-registry-app-*-runner.jar"
# The Maven goal that copies each component: the broker needs its runtime classpath,
# the registry is one archive.
MAVEN_GOALS = {
    "kafka": "dependency:copy-dependencies",
    "registry": "dependency:copy",
    "spark": "dependency:copy-dependencies",
    "spark-s3": "dependency:copy-dependencies",
}
# S3A and the AWS SDK bundle (about 700 MB): fetched only for a lake on S3 or MinIO.
S3_COMPONENT = "spark-s3"
KAFKA_LOG4J = """\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRefs = stdout
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
"""


# --------------------------------------------------------------------------- tools


def java(settings: Settings) -> str:
    """Path of the java launcher, or a StackError saying how to get one."""
    if settings.java_home:
        candidate = settings.java_home / "bin" / "java"
        if candidate.exists():
            return str(candidate)
        raise StackError(f"REELPULSE_JAVA_HOME={settings.java_home} has no bin/java")
    found = shutil.which("java")
    if not found:
        raise StackError(
            "java not found: install a JDK 17+ (apt-get install openjdk-17-jdk-headless) "
            "or set REELPULSE_JAVA_HOME"
        )
    return found


def maven() -> str:
    found = shutil.which("mvn")
    if not found:
        raise StackError(
            "mvn not found: install Maven 3.8+ (apt-get install maven); "
            "it fetches Kafka and the registry from Maven Central"
        )
    return found


# --------------------------------------------------------------------------- jars


def component_dir(settings: Settings, component: str) -> Path:
    return settings.jar_cache / component


def fetch_jars(settings: Settings, component: str) -> Path:
    """Copy a component's jars from Maven Central once; a second call does nothing."""
    pom = JVM_DIR / component / "pom.xml"
    target = component_dir(settings, component)
    marker = target / ".complete"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    if marker.exists() and marker.read_text() == digest:
        return target
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    _run_maven(pom, MAVEN_GOALS[component], target)
    for archive in target.glob("*.tar.gz"):
        _unpack(archive, target)
    marker.write_text(digest)
    return target


def _run_maven(pom: Path, goal: str, target: Path) -> None:
    command = [
        maven(),
        "-q",
        "-B",
        "-f",
        str(pom),
        goal,
        "-DincludeScope=runtime",
        f"-DoutputDirectory={target}",
    ]
    log.info("fetching %s from Maven Central", pom.parent.name)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StackError(
            f"Maven could not fetch {pom.parent.name}:\n{result.stdout[-3000:]}{result.stderr[-2000:]}"
        )


def _unpack(archive: Path, target: Path) -> None:
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    archive.unlink()


def lake_on_s3(settings: Settings) -> bool:
    """Whether the lake is an ``s3a://`` URI (S3 or MinIO), which needs the S3A jars."""
    return settings.lake_dir.startswith("s3a://")


def components(settings: Settings, with_s3: bool = False) -> list[str]:
    """The JVM components to fetch: all but S3A, unless asked for or the lake is on S3."""
    wanted = with_s3 or lake_on_s3(settings)
    return [name for name in MAVEN_GOALS if name != S3_COMPONENT or wanted]


def setup(settings: Settings, with_s3: bool = False) -> dict[str, Path]:
    """Fetch the JVM components: the broker, the registry, Spark's connectors and, for a
    lake on S3 (or ``with_s3``), S3A with the AWS SDK."""
    java(settings)
    return {name: fetch_jars(settings, name) for name in components(settings, with_s3)}


PSEUDONYMIZATION_KEY_VARIABLE = f"{ENV_PREFIX}SILVER_PSEUDONYMIZATION_KEY"


def ensure_pseudonymization_key(settings: Settings, env_file: Path) -> bool:
    """Give a local lake its pseudonymization key: unless one is set already, append a
    random 256-bit key to ``env_file`` (created owner-only), which the settings read.
    Returns whether a key was written. Keep the file: another key, other pseudonyms."""
    if settings.silver_pseudonymization_key is not None:
        return False
    if env_file.exists() and PSEUDONYMIZATION_KEY_VARIABLE in env_file.read_text():
        return False
    descriptor = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(descriptor, "a") as out:
        out.write(f"{PSEUDONYMIZATION_KEY_VARIABLE}={secrets.token_hex(32)}\n")
    return True


# --------------------------------------------------------------------------- services


@dataclass(frozen=True)
class Service:
    """A process of the local stack: how to start it and how to know it is ready."""

    name: str
    command: Callable[[Settings], list[str]]
    ready: Callable[[Settings], bool]
    prepare: Callable[[Settings], None] = lambda settings: None

    def pid_file(self, settings: Settings) -> Path:
        return settings.state_dir / "run" / f"{self.name}.pid"

    def log_file(self, settings: Settings) -> Path:
        return settings.state_dir / "logs" / f"{self.name}.log"


def kafka_dir(settings: Settings) -> Path:
    return settings.state_dir / "kafka"


def kafka_properties(settings: Settings) -> str:
    port, controller = settings.local_kafka_port(), settings.kafka_controller_port
    lines = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"127.0.0.1:{controller}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(kafka_dir(settings) / "data"),
        "num.partitions": str(settings.topic_partitions),
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
    }
    return "".join(f"{key}={value}\n" for key, value in lines.items())


def _kafka_classpath(settings: Settings) -> str:
    return str(component_dir(settings, "kafka") / "*")


def _prepare_kafka(settings: Settings) -> None:
    """Write the broker's configuration; format its storage on first start only."""
    home = kafka_dir(settings)
    (home / "data").mkdir(parents=True, exist_ok=True)
    (home / "server.properties").write_text(kafka_properties(settings))
    (home / "log4j2.properties").write_text(KAFKA_LOG4J)
    if (home / "data" / "meta.properties").exists():
        return
    cluster_id = _cluster_id(home)
    command = [
        java(settings),
        "-cp",
        _kafka_classpath(settings),
        "kafka.tools.StorageTool",
        "format",
        "--standalone",
        "-t",
        cluster_id,
        "-c",
        str(home / "server.properties"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StackError(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")


def _cluster_id(home: Path) -> str:
    """A KRaft cluster id, kept for the stack's life."""
    path = home / "cluster.id"
    if not path.exists():
        path.write_text(new_cluster_id())
    return path.read_text().strip()


def new_cluster_id() -> str:
    """22 chars of URL-safe base64 of a random UUID, never starting with '-' (which the
    storage tool would read as an option), as Kafka's own ``Uuid.randomUuid`` does."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _identity(settings: Settings) -> str:
    """A system property naming the state dir: how a pid is recognised as this stack's."""
    return f"-Dreelpulse.state_dir={settings.state_dir.resolve()}"


def _kafka_command(settings: Settings) -> list[str]:
    home = kafka_dir(settings)
    return [
        java(settings),
        _identity(settings),
        f"-Xmx{settings.kafka_heap}",
        f"-Xms{settings.kafka_heap}",
        "-XX:+UseG1GC",
        f"-Dlog4j2.configurationFile={home / 'log4j2.properties'}",
        "-cp",
        _kafka_classpath(settings),
        "kafka.Kafka",
        str(home / "server.properties"),
    ]


def _kafka_ready(settings: Settings) -> bool:
    try:
        # log_level 0: a broker that is still starting refuses connections; not news.
        admin = AdminClient({**settings.kafka_client_config(), "socket.timeout.ms": 2000, "log_level": 0})
        metadata = admin.list_topics(timeout=2)
    except Exception:
        return False
    return bool(metadata.brokers)


def _registry_jar(settings: Settings) -> Path:
    jars = sorted(component_dir(settings, "registry").rglob(REGISTRY_RUNNER_GLOB))
    if not jars:
        raise StackError("registry jar missing: run `reelpulse setup`")
    return jars[-1]


def _registry_command(settings: Settings) -> list[str]:
    props = {
        "quarkus.http.host": "127.0.0.1",
        "quarkus.http.port": settings.local_registry_port(),
        "quarkus.management.host": "127.0.0.1",
        "quarkus.management.port": settings.registry_management_port,
        "apicurio.storage.kind": "kafkasql",
        "apicurio.kafkasql.bootstrap.servers": settings.kafka_bootstrap_servers,
        "apicurio.kafkasql.topic": "reelpulse.registry.journal",
        "apicurio.kafkasql.snapshots.topic": "reelpulse.registry.snapshots",
        "apicurio.ccompat.use-canonical-hash": "true",
    }
    flags = [f"-D{key}={value}" for key, value in props.items()]
    return [
        java(settings),
        _identity(settings),
        f"-Xmx{settings.registry_heap}",
        "-XX:+UseSerialGC",
        *flags,
        "-jar",
        str(_registry_jar(settings)),
    ]


def _registry_ready(settings: Settings) -> bool:
    try:
        response = httpx.get(f"{settings.schema_registry_url}/subjects", timeout=2)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


KAFKA = Service("kafka", _kafka_command, _kafka_ready, _prepare_kafka)
REGISTRY = Service("registry", _registry_command, _registry_ready)
SERVICES = (KAFKA, REGISTRY)


# --------------------------------------------------------------------------- process control


def running_pid(service: Service, settings: Settings) -> int | None:
    """Pid of the service's live process, cleaning up a stale pid file."""
    pid_file = service.pid_file(settings)
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text())
    if _is_our_process(pid, settings):
        return pid
    log.warning("removing stale pid file %s (process %s is gone)", pid_file, pid)
    pid_file.unlink()
    return None


def _is_our_process(pid: int, settings: Settings) -> bool:
    try:
        process = psutil.Process(pid)
        alive = process.status() != psutil.STATUS_ZOMBIE
        return alive and _identity(settings) in process.cmdline()
    except psutil.Error:
        return False


def _check_port_free(port: int, service: Service) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sock.connect_ex(("127.0.0.1", port)) != 0:
            return
    owner = _port_owner(port)
    raise StackError(
        f"port {port} for {service.name} is taken by {owner}; stop it, or choose another port "
        "(REELPULSE_KAFKA_BOOTSTRAP_SERVERS, REELPULSE_KAFKA_CONTROLLER_PORT, "
        "REELPULSE_SCHEMA_REGISTRY_URL, REELPULSE_REGISTRY_MANAGEMENT_PORT)"
    )


def _port_owner(port: int) -> str:
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            with_name = psutil.Process(conn.pid)
            return f"pid {conn.pid} ({with_name.name()}: {' '.join(with_name.cmdline())[:120]})"
    return "another process"


def start(service: Service, settings: Settings) -> int:
    """Start a service unless it already runs; wait until it is ready."""
    pid = running_pid(service, settings)
    if pid is None:
        for port in _ports(service, settings):
            _check_port_free(port, service)
        service.prepare(settings)
        pid = _spawn(service, settings)
    wait_ready(service, settings, pid)
    return pid


def _ports(service: Service, settings: Settings) -> list[int]:
    if service is KAFKA:
        return [settings.local_kafka_port(), settings.kafka_controller_port]
    return [settings.local_registry_port(), settings.registry_management_port]


def _spawn(service: Service, settings: Settings) -> int:
    log_file = service.log_file(settings)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    service.pid_file(settings).parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        process = subprocess.Popen(
            service.command(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=settings.state_dir,
        )
    service.pid_file(settings).write_text(str(process.pid))
    log.info("started %s (pid %s), log: %s", service.name, process.pid, log_file)
    return process.pid


def wait_ready(service: Service, settings: Settings, pid: int, timeout_s: float | None = None) -> None:
    """Wait until ``service.ready``; a StackError naming the log if the process exits first
    (its last lines) or ``timeout_s`` (default: the settings' start-up timeout) passes."""
    timeout_s = settings.startup_timeout_s if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.ready(settings):
            return
        if _exited(pid):
            service.pid_file(settings).unlink(missing_ok=True)
            raise StackError(
                f"{service.name} exited during start-up; last lines of "
                f"{service.log_file(settings)}:\n{tail(service, settings, 25)}"
            )
        time.sleep(0.5)
    raise StackError(
        f"{service.name} (pid {pid}) not ready after {timeout_s:.0f}s; see {service.log_file(settings)}"
    )


def _exited(pid: int) -> bool:
    """Gone, or a zombie (a child that exited and was not reaped yet)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def stop(service: Service, settings: Settings, timeout_s: float = 30.0) -> bool:
    """Stop a service: SIGTERM, then SIGKILL after ``timeout_s``. True if it was running."""
    pid = running_pid(service, settings)
    if pid is None:
        return False
    _signal_group(pid, signal.SIGTERM)
    _, alive = psutil.wait_procs([psutil.Process(pid)], timeout=timeout_s)
    if alive:
        log.warning("%s did not stop in %ss; killing it", service.name, timeout_s)
        _signal_group(pid, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=10)
    service.pid_file(settings).unlink(missing_ok=True)
    return True


def kill(service: Service, settings: Settings) -> None:
    """SIGKILL a service without a chance to clean up (used by durability tests)."""
    pid = running_pid(service, settings)
    if pid is not None:
        _signal_group(pid, signal.SIGKILL)
        psutil.wait_procs([psutil.Process(pid)], timeout=10)
        service.pid_file(settings).unlink(missing_ok=True)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def tail(service: Service, settings: Settings, lines: int = 50) -> str:
    path = service.log_file(settings)
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --------------------------------------------------------------------------- whole stack


def up(settings: Settings) -> dict[str, int]:
    """Start Kafka, then the registry (which stores its schemas in Kafka)."""
    setup(settings)
    return {service.name: start(service, settings) for service in SERVICES}


def down(settings: Settings) -> list[str]:
    """Stop the registry, then Kafka; returns the names of services that were running."""
    return [service.name for service in reversed(SERVICES) if stop(service, settings)]
