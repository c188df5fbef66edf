"""``reelpulse airflow ...``: Airflow 3 running the lake's DAGs as a process of the local stack.

``up`` starts ``airflow standalone`` (scheduler, DAG processor, triggerer and the API
server with the UI, on SQLite and the LocalExecutor) in the background; ``down`` stops it
and every process it started; ``run`` is ``up`` in the foreground (Ctrl-C stops it).
Layout, beside the broker's and the registry's::

    <state dir>/run/airflow.pid     pid of airflow standalone
    <state dir>/logs/airflow.log    its output and its components'
    <state dir>/airflow/            AIRFLOW_HOME (REELPULSE_AIRFLOW_HOME): airflow.cfg, the
                                    SQLite database, task logs, the generated password

Every Airflow process gets the ``REELPULSE_*`` settings (``.env`` included) in its
environment and runs in the current directory, so the DAGs' tasks build the same settings
as this command (relative paths included); and the virtualenv's ``bin`` comes first on
``PATH``, since standalone starts ``airflow`` subprocesses.
Log in as ``admin`` with the password Airflow's SimpleAuthManager generated into
``AIRFLOW_HOME/simple_auth_manager_passwords.json.generated`` on the first start.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Annotated, Any

import httpx
import psutil
import typer
from rich.console import Console
from rich.table import Table

from reelpulse import orchestration, stack
from reelpulse.clitools import run as reported
from reelpulse.errors import StackError
from reelpulse.settings import Settings

airflow_app = typer.Typer(
    help="Airflow 3 for the lake's DAGs (dags/): start, stop, trigger, inspect.", no_args_is_help=True
)
console = Console()

USER = "admin"  # SimpleAuthManager's default user list is "admin:admin" (name:role)
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
JWT_SECRET_FILE = "jwt_secret"
HOST = "127.0.0.1"
# Defaults a person may override in their own environment (AIRFLOW__SECTION__KEY).
TUNING = {
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
    "AIRFLOW__CORE__PARALLELISM": "2",  # two cores: two Spark tasks at most
    "AIRFLOW__API__WORKERS": "1",
    "SPARK_LOCAL_IP": HOST,
}
FINISHED = frozenset({"success", "failed"})
# A run of the key DAG updates assets the value DAG is scheduled on (any one starts it).
DOWNSTREAM = {orchestration.INGEST: orchestration.REFINE}
SCHEDULED_ON = {orchestration.REFINE: frozenset(orchestration.REFINE_ON)}
HEALTH_TIMEOUT_S = 5.0
HTTP_TIMEOUT_S = 30.0  # a busy two-core machine answers slowly
STOP_TIMEOUT_S = 60.0


# --------------------------------------------------------------------------- where things are


def home(settings: Settings) -> Path:
    """AIRFLOW_HOME: ``REELPULSE_AIRFLOW_HOME``, else ``<state dir>/airflow``."""
    return (settings.airflow_home or settings.state_dir / "airflow").resolve()


def url(settings: Settings) -> str:
    return f"http://{HOST}:{settings.airflow_port}"


def venv_bin() -> Path:
    """The ``bin`` of the interpreter running reelpulse, where ``airflow`` is installed."""
    return Path(sys.executable).parent


def executable() -> str:
    found = shutil.which("airflow", path=str(venv_bin())) or shutil.which("airflow")
    if not found:
        raise StackError(
            "airflow not found: install the project (pip install -e '.[dev]') in this virtualenv"
        )
    return found


def prepare(settings: Settings) -> Path:
    """Create AIRFLOW_HOME and its JWT signing secret (64 random bytes, owner-only), once."""
    path = home(settings)
    path.mkdir(parents=True, exist_ok=True)
    secret = path / JWT_SECRET_FILE
    if not secret.exists():
        descriptor = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(secrets.token_urlsafe(64))
    return path


def environment(settings: Settings) -> dict[str, str]:
    """The environment of every Airflow process: this AIRFLOW_HOME, the DAG folder, the API
    server on 127.0.0.1, the REELPULSE_* settings and the virtualenv first on PATH."""
    airflow_home = home(settings)
    secret = airflow_home / JWT_SECRET_FILE
    required = {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(settings.airflow_dags_dir.resolve()),
        "AIRFLOW__API__HOST": HOST,
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        "AIRFLOW__API__BASE_URL": url(settings),
        "PATH": os.pathsep.join([str(venv_bin()), os.environ.get("PATH", "")]),
    }
    if secret.exists():
        required["AIRFLOW__API_AUTH__JWT_SECRET"] = secret.read_text().strip()
    return {**TUNING, **os.environ, **settings.as_env(), **required}


def password(settings: Settings) -> str | None:
    """The generated password of the admin user, once Airflow has generated it."""
    path = home(settings) / PASSWORDS_FILE
    if not path.exists():
        return None
    value = json.loads(path.read_text() or "{}").get(USER)
    return str(value) if value else None


# --------------------------------------------------------------------------- the process


def running_pid(settings: Settings) -> int | None:
    """Pid of this stack's airflow standalone, cleaning up a stale pid file."""
    pid_file = SERVICE.pid_file(settings)
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text())
    if _is_ours(pid, settings):
        return pid
    pid_file.unlink(missing_ok=True)
    return None


def _is_ours(pid: int, settings: Settings) -> bool:
    try:
        process = psutil.Process(pid)
        alive = process.status() != psutil.STATUS_ZOMBIE
        return alive and "standalone" in process.cmdline() and _home_of(process) == str(home(settings))
    except psutil.Error:
        return False


def _home_of(process: psutil.Process) -> str | None:
    return process.environ().get("AIRFLOW_HOME")


def health(settings: Settings) -> dict[str, Any] | None:
    """The API server's health document (no login needed), None while it does not answer."""
    try:
        response = httpx.get(f"{url(settings)}/api/v2/monitor/health", timeout=HEALTH_TIMEOUT_S)
    except httpx.HTTPError:
        return None
    return dict(response.json()) if response.status_code == 200 else None


def healthy(settings: Settings) -> bool:
    """The API server answers and every component it reports is healthy."""
    found = health(settings)
    return found is not None and all(part.get("status") == "healthy" for part in found.values())


def _command(settings: Settings) -> list[str]:
    return [executable(), "standalone"]


# The same pid-file and log-file layout as the broker's and the registry's.
SERVICE = stack.Service("airflow", _command, healthy)


def _check_port_free(settings: Settings) -> None:
    with socket.socket() as sock:
        if sock.connect_ex((HOST, settings.airflow_port)) != 0:
            return
    raise StackError(
        f"port {settings.airflow_port} for the Airflow UI is taken; stop what listens there, or choose "
        "another port with REELPULSE_AIRFLOW_PORT"
    )


def spawn(settings: Settings, *, foreground: bool = False) -> subprocess.Popen[bytes]:
    """Start airflow standalone in a session of its own (so :func:`stop` finds every process
    it starts), its output to the log file, or to this terminal when ``foreground``."""
    _check_port_free(settings)
    prepare(settings)
    log_file, pid_file = SERVICE.log_file(settings), SERVICE.pid_file(settings)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        process = subprocess.Popen(
            SERVICE.command(settings), env=environment(settings), cwd=Path.cwd(),
            stdout=None if foreground else out, stderr=None if foreground else subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    pid_file.write_text(str(process.pid))
    return process


def start(settings: Settings, timeout_s: float) -> int:
    """Start airflow standalone in the background unless it runs; wait until it is healthy."""
    pid = running_pid(settings)
    if pid is None:
        pid = spawn(settings).pid
    stack.wait_ready(SERVICE, settings, pid, timeout_s)
    return pid


def stop(settings: Settings, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Stop airflow standalone and every process under it (components, workers, task
    processes and their Spark JVMs): SIGTERM, then SIGKILL after ``timeout_s``. True if
    it was running."""
    pid = running_pid(settings)
    if pid is None:
        return False
    terminate_tree(pid, timeout_s)
    SERVICE.pid_file(settings).unlink(missing_ok=True)
    return True


def terminate_tree(pid: int, timeout_s: float) -> None:
    """SIGTERM a process, its process group and all its descendants; SIGKILL what is left."""
    _signal_all(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _members(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    for _ in range(3):  # stragglers, and anything started while the rest shut down
        if not _members(pid):
            return
        _signal_all(pid, signal.SIGKILL)
        psutil.wait_procs(_members(pid), timeout=10)


def _members(pid: int) -> list[psutil.Process]:
    """The live process, its descendants and the rest of its process group."""
    found: dict[int, psutil.Process] = {}
    with suppress(psutil.Error):
        root = psutil.Process(pid)
        found = {p.pid: p for p in [root, *root.children(recursive=True)]}
    for process in psutil.process_iter():
        with suppress(psutil.Error, OSError):
            if process.pid not in found and os.getpgid(process.pid) == pid:
                found[process.pid] = process
    return [p for p in found.values() if _running(p)]


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal_all(pid: int, sig: int) -> None:
    members = _members(pid)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    for process in members:
        with suppress(psutil.Error):
            process.send_signal(sig)


# --------------------------------------------------------------------------- the REST API


class Api:
    """Airflow's REST API v2 as the admin user (a token from SimpleAuthManager's login).
    Any failure is a StackError naming what was asked."""

    def __init__(self, settings: Settings) -> None:
        secret = password(settings)
        if secret is None:
            raise StackError(
                f"no generated password in {home(settings) / PASSWORDS_FILE}: start Airflow first"
            )
        self.client = httpx.Client(base_url=url(settings), timeout=HTTP_TIMEOUT_S)
        body = {"username": USER, "password": secret}
        token = self._call("POST", "/auth/token", "log in", json=body)["access_token"]
        self.client.headers["Authorization"] = f"Bearer {token}"

    def _call(self, method: str, path: str, doing: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise StackError(
                f"Airflow API at {self.client.base_url}: could not {doing}: {error!r}"
            ) from error
        if response.status_code >= 400:
            raise StackError(
                f"Airflow API: could not {doing}: HTTP {response.status_code} {response.text[:300]}"
            )
        return dict(response.json())

    def dags(self) -> dict[str, dict[str, Any]]:
        found = self._call("GET", "/api/v2/dags", "list the DAGs", params={"dag_id_pattern": "reelpulse"})
        return {d["dag_id"]: d for d in found["dags"]}

    def unpause(self, dag_id: str) -> None:
        self._call("PATCH", f"/api/v2/dags/{dag_id}", f"unpause {dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str) -> dict[str, Any]:
        return self._call(
            "POST", f"/api/v2/dags/{dag_id}/dagRuns", f"trigger {dag_id}", json={"logical_date": None}
        )

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", f"read run {run_id} of {dag_id}")

    def asset_events(self, limit: int = 200, **filters: str) -> list[dict[str, Any]]:
        """The newest asset events (name, extra, source DAG, run and task), newest first;
        ``filters`` such as ``source_run_id``."""
        params: dict[str, str | int] = {"order_by": "-timestamp", "limit": limit, **filters}
        found = self._call("GET", "/api/v2/assets/events", "list the asset events", params=params)
        return list(found["asset_events"])

    def runs(self, dag_id: str, limit: int = 5, **filters: str) -> list[dict[str, Any]]:
        params: dict[str, str | int] = {"order_by": "-run_after", "limit": limit, **filters}
        found = self._call(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns", f"list the runs of {dag_id}", params=params
        )
        return list(found["dag_runs"])


def wait_for_dags(settings: Settings, timeout_s: float) -> Api:
    """Wait until the DAG processor has registered every reelpulse DAG."""
    api = Api(settings)
    deadline = time.monotonic() + timeout_s
    while set(orchestration.DAG_IDS) - set(api.dags()):
        if time.monotonic() > deadline:
            missing = sorted(set(orchestration.DAG_IDS) - set(api.dags()))
            raise StackError(f"DAGs not registered after {timeout_s:.0f}s: {', '.join(missing)}; see the UI")
        time.sleep(2.0)
    return api


def wait_for_run(api: Api, dag_id: str, run_id: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while (found := api.run(dag_id, run_id))["state"] not in FINISHED:
        if time.monotonic() > deadline:
            raise StackError(f"{dag_id} run {run_id} still {found['state']} after {timeout_s:.0f}s")
        time.sleep(3.0)
    return found


def follow(api: Api, upstream: dict[str, Any], timeout_s: float) -> Iterator[dict[str, Any]]:
    """The runs that a finished run started through its assets, each waited for."""
    dag_id = DOWNSTREAM.get(upstream["dag_id"])
    if dag_id is None or upstream["state"] != "success":
        return
    emitted = api.asset_events(source_dag_id=upstream["dag_id"], source_run_id=upstream["dag_run_id"])
    if not {event["name"] for event in emitted} & SCHEDULED_ON[dag_id]:
        console.print(f"{upstream['dag_id']} found nothing new, so no {dag_id} run follows it")
        return
    deadline = time.monotonic() + timeout_s
    while not (started := api.runs(dag_id, limit=1, run_after_gte=upstream["start_date"])):
        if time.monotonic() > deadline:
            raise StackError(f"no {dag_id} run followed {upstream['dag_id']} within {timeout_s:.0f}s")
        time.sleep(3.0)
    done = wait_for_run(api, dag_id, started[0]["dag_run_id"], max(deadline - time.monotonic(), 1.0))
    yield done
    yield from follow(api, done, timeout_s)


# --------------------------------------------------------------------------- commands


def _settings() -> Settings:
    return Settings()


def _login_lines(settings: Settings) -> str:
    secret = password(settings)
    where = home(settings) / PASSWORDS_FILE
    shown = f"password [bold]{secret}[/bold] (from {where})" if secret else f"the password in {where}"
    return f"Airflow UI: [link]{url(settings)}[/link]\nlog in as [bold]{USER}[/bold] with {shown}"


def _ready(settings: Settings, unpause: bool, timeout_s: float) -> None:
    api = wait_for_dags(settings, timeout_s)
    if unpause:
        for dag_id in orchestration.DAG_IDS:
            api.unpause(dag_id)
    state = "unpaused" if unpause else "registered (paused)"
    console.print(f"DAGs {state}: {', '.join(orchestration.DAG_IDS)}")
    console.print(_login_lines(settings))


TIMEOUT = Annotated[float, typer.Option(help="Seconds to wait for Airflow to be healthy and parse the DAGs")]
UNPAUSE = Annotated[bool, typer.Option(help="Unpause the reelpulse DAGs, so they run on their schedules")]


@airflow_app.command("up")
@reported
def up(unpause: UNPAUSE = True, timeout: TIMEOUT = 300.0) -> None:
    """Start Airflow (standalone: scheduler, DAG processor, triggerer, UI) in the background."""
    settings = _settings()
    started = time.monotonic()
    pid = start(settings, timeout)
    console.print(f"[green]airflow up[/green] in {time.monotonic() - started:.1f}s (pid {pid}), "
                  f"log: {SERVICE.log_file(settings)}")  # fmt: skip
    _ready(settings, unpause, timeout)


@airflow_app.command("run")
@reported
def run_foreground(unpause: UNPAUSE = True, timeout: TIMEOUT = 300.0) -> None:
    """Run Airflow in the foreground with its output here; Ctrl-C stops every component."""
    settings = _settings()
    if (pid := running_pid(settings)) is not None:
        raise StackError(
            f"Airflow already runs in the background (pid {pid}): `reelpulse airflow down` first"
        )
    process = spawn(settings, foreground=True)
    try:
        stack.wait_ready(SERVICE, settings, process.pid, timeout)
        _ready(settings, unpause, timeout)
        process.wait()
    except KeyboardInterrupt:
        console.print("[yellow]stopping Airflow and every process it started[/yellow]")
    finally:
        terminate_tree(process.pid, STOP_TIMEOUT_S)
        SERVICE.pid_file(settings).unlink(missing_ok=True)


@airflow_app.command("down")
@reported
def down() -> None:
    """Stop Airflow and every process it started; its database and logs stay."""
    stopped = stop(_settings())
    console.print("stopped: airflow" if stopped else "Airflow was not running")


@airflow_app.command("status")
@reported
def status() -> None:
    """Whether Airflow runs, its components' health, and the last runs of each DAG."""
    settings = _settings()
    pid, found = running_pid(settings), health(settings)
    table = Table("component", "state", title=f"airflow (pid {pid or '-'}, AIRFLOW_HOME {home(settings)})")
    for name, part in (found or {}).items():
        colour = "green" if part.get("status") == "healthy" else "red"
        table.add_row(name, f"[{colour}]{part.get('status')}[/{colour}]")
    console.print(table)
    if pid is None:
        console.print("[yellow]Airflow is not running[/yellow]: `reelpulse airflow up`")
        raise typer.Exit(1)
    if found is None:
        console.print(
            f"[yellow]Airflow runs, but its API server at {url(settings)} does not answer (yet)[/yellow]"
        )
        raise typer.Exit(1)
    api = Api(settings)
    runs = Table("DAG", "paused", "last runs (newest first)", title="DAGs")
    for dag_id, dag in sorted(api.dags().items()):
        states = " ".join(_coloured(r["state"]) for r in api.runs(dag_id))
        runs.add_row(dag_id, "yes" if dag["is_paused"] else "no", states or "-")
    console.print(runs)
    console.print(_login_lines(settings))


def _coloured(state: str) -> str:
    colour = {"success": "green", "failed": "red"}.get(state, "yellow")
    return f"[{colour}]{state}[/{colour}]"


@airflow_app.command("trigger")
@reported
def trigger(
    dag_ids: Annotated[list[str] | None, typer.Argument(help="DAGs to run now")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for each run, and the runs its assets start")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each run")] = 1800.0,
) -> None:
    """Trigger DAG runs now (default: reelpulse_ingest, whose bronze table assets then start
    reelpulse_refine); with --wait, exit 1 unless every run succeeds."""
    settings = _settings()
    api = Api(settings)
    wanted = dag_ids or [orchestration.INGEST]
    dags = api.dags()
    paused = [
        d for d in [*wanted, *(DOWNSTREAM.get(d) for d in wanted)] if d and dags.get(d, {}).get("is_paused")
    ]
    if paused:
        raise StackError(
            f"{', '.join(paused)} paused: a run would wait for ever; `reelpulse airflow up` unpauses the "
            "DAGs (or switch them on in the UI)"
        )
    failed = False
    for dag_id in wanted:
        created = api.trigger(dag_id)
        console.print(f"triggered {dag_id}: {created['dag_run_id']}")
        if not wait:
            continue
        done = wait_for_run(api, dag_id, created["dag_run_id"], timeout)
        for finished in [done, *follow(api, done, timeout)]:
            console.print(f"{finished['dag_id']} {finished['dag_run_id']}: {_coloured(finished['state'])}")
            failed = failed or finished["state"] != "success"
    console.print(f"see the runs at {url(settings)}/dags")
    if failed:
        raise typer.Exit(1)


PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@airflow_app.command("cli", context_settings=PASS_THROUGH)
def cli(context: typer.Context) -> None:
    """Run an `airflow` command against this AIRFLOW_HOME and DAG folder, with the REELPULSE_*
    settings, e.g. `reelpulse airflow cli dags list` or `... cli backfill create --dag-id ...`."""
    settings = _settings()
    prepare(settings)
    command: Sequence[str] = [executable(), *context.args]
    result = subprocess.run(command, env=environment(settings), check=False)
    raise typer.Exit(result.returncode)
