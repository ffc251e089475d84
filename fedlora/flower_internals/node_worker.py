"""A site's warm ClientApp worker: one long-lived worker runs every task of its SuperNode.

Flower's own executor (``flower-superexec``) starts a fresh ``flwr-clientapp`` process for
each message; fedlora's ClientApp then re-imports torch, transformers, peft and opacus and
rebuilds the model, seconds of work per message. This worker takes the executor's place
beside a SuperNode started with ``--isolation process``: it acquires ClientApp tasks from the
node's Runtime API and runs each with Flower's own task protocol (``pull_task_input``,
``push_message``, ``push_task_output`` from ``flwr.supernode.runtime.run_clientapp``) and a
task heartbeat, so the node sees exactly what a ``flwr-clientapp`` process would send.
Imports, the base model and tokenised data stay warm between tasks (``fedlora.clients.runtime``
caches them, as a simulation's Ray actor does).

:mod:`fedlora.flower_internals.node_supernode` runs :func:`serve` as a thread of the node's own
process on :class:`fedlora.flower_internals.node_local_runtime.LocalRuntimeClient` (the node's
Runtime handlers, called directly) and wakes it on every new task
(:mod:`fedlora.flower_internals.node_wake`); where the installed Flower does not allow that,
``python -m fedlora.flower_internals.node_worker`` runs it as the node's child process over the
Runtime API's HTTP (:func:`http_connector`; object pulls retry after 0.01 s rather than 1 s,
:func:`fedlora.flower_internals.tuning.shorten_pull_backoff`).

The worker runs the fedlora installed at the site, not code from the submitted FAB: a run
whose FAB is not this fedlora (another app, another fedlora version, another ClientApp) is
answered with an error reply naming the difference. A hospital's node then executes only
the code its operator installed.
"""

from __future__ import annotations

import argparse
import importlib
import io
import logging
import os
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any, cast

from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.protobuf.client import ProtobufClientInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

from fedlora.errors import ConfigError, FedloraError
from fedlora.flower_internals.entry import LOG_FORMAT
from fedlora.flower_internals.node_wake import TaskSignal
from fedlora.flower_internals.tuning import (
    FIRST_TASK_POLL_S,
    NEARBY_PULL_BACKOFF_CAP_S,
    PollBackoff,
    shorten_pull_backoff,
)
from fedlora.quiet import configure_process_logging

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

logger = logging.getLogger(__name__)

APP_NAME = "fedlora"
CLIENTAPP_REF = "fedlora.clients.app:app"
"""The ClientApp's component reference (``[tool.flwr.app.components] clientapp``).

The worker loads it by name (:func:`load_client_app`), as Flower loads a FAB's components, so
this seam imports no role; a FAB naming another ClientApp is refused (:func:`check_fab`)."""
_PARENT_CHECK_S = 0.5

ClientAppCallable = Callable[[Message, Context], Message]


class ForeignAppError(FedloraError):
    """A task's FAB is not the fedlora installed on this node."""


def check_fab(fab: Fab, installed_version: str | None = None) -> None:
    """Refuse a FAB that is not this node's fedlora (name, version, ClientApp reference).

    Raises
    ------
    ForeignAppError
        Naming what differs.
    """
    installed_version = installed_version or metadata.version(APP_NAME)
    try:
        with zipfile.ZipFile(io.BytesIO(fab.content)) as archive:
            project = tomllib.loads(archive.read("pyproject.toml").decode("utf-8"))
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ForeignAppError(f"the run's FAB has no readable pyproject.toml ({error})") from None
    name = project.get("project", {}).get("name")
    version = project.get("project", {}).get("version")
    clientapp = project.get("tool", {}).get("flwr", {}).get("app", {}).get("components", {})
    clientapp = clientapp.get("clientapp")
    if name != APP_NAME:
        raise ForeignAppError(
            f"this node's warm worker runs fedlora only; the run's app is {name!r} "
            "(start the node with fedlora deploy supernode --cold to run other apps)"
        )
    if version != installed_version:
        raise ForeignAppError(
            f"the run was submitted with fedlora {version} but this node has fedlora "
            f"{installed_version}; install the same version on both sides"
        )
    if clientapp != CLIENTAPP_REF:
        raise ForeignAppError(f"the run's ClientApp is {clientapp!r}, not {CLIENTAPP_REF!r}")


def load_client_app(reference: str = CLIENTAPP_REF) -> ClientAppCallable:
    """Import the ClientApp a component reference names, as Flower loads a FAB's components.

    Parameters
    ----------
    reference : str
        ``module:attribute`` (the attribute may be dotted), e.g. :data:`CLIENTAPP_REF`.

    Returns
    -------
    callable
        The object the reference names, called as ``client_app(message, context)``.

    Raises
    ------
    ConfigError
        When the reference is malformed, its module does not exist, or it names nothing
        callable.
    """
    module_name, _, attributes = reference.partition(":")
    if not module_name or not attributes:
        raise ConfigError(f"ClientApp reference {reference!r} is not 'module:attribute'")
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is None or not f"{module_name}.".startswith(f"{error.name}."):
            raise  # the module exists; something it imports is missing
        raise ConfigError(f"cannot load the ClientApp {reference!r}: {error}") from None
    for attribute in attributes.split("."):
        try:
            target = getattr(target, attribute)
        except AttributeError:
            raise ConfigError(
                f"{module_name} has no {attributes} (ClientApp {reference!r})"
            ) from None
    if not callable(target):
        raise ConfigError(f"the ClientApp {reference!r} is not callable")
    return cast(ClientAppCallable, target)


RuntimeConnector = Callable[[str | None], Any]
"""Opens a Runtime API client: without a token to acquire tasks, with one to run a task.

The client has the methods of Flower's ``RuntimeHttpClient`` that ``flwr-clientapp``'s task
protocol calls (:func:`http_connector`, or
:class:`fedlora.flower_internals.node_local_runtime.LocalRuntimeClient` in the node's own
process)."""


def _runtime_client(address: str, *interceptors: ProtobufClientInterceptor) -> RuntimeHttpClient:
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,  # the Runtime API listens on the node's loopback only
        root_certificates=None,
        interceptors=list(interceptors),
        retry_invoker=make_simple_http_retry_invoker(),
    )


def http_connector(address: str) -> RuntimeConnector:
    """Clients of the SuperNode's Runtime API at ``address`` (``HOST:PORT``), over HTTP."""

    def connect(token: str | None) -> RuntimeHttpClient:
        if token is None:
            version = RuntimeVersionHttpInterceptor(component_name="SuperExec")
            return _runtime_client(address, version)
        return _runtime_client(
            address,
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        )

    return connect


def run_task(client: Any, client_app: ClientAppCallable) -> str:
    """Execute one ClientApp task as ``flwr-clientapp`` would, in this process.

    Parameters
    ----------
    client : Any
        A Runtime API client holding the task's token (:data:`RuntimeConnector`).
    client_app : callable
        What runs the task's message.

    Returns
    -------
    str
        Flower's sub-status of the task (``completed`` or ``failed``).
    """
    heartbeat_fn = getattr(client, "task_heartbeat", None) or make_task_heartbeat_fn_http(client)
    heartbeat = HeartbeatSender(heartbeat_fn)
    heartbeat.start()
    message: Message | None = None
    context: Context | None = None
    reply: Message | None = None
    status, details = SubStatus.FAILED, "ClientApp task failed"
    started = pulled = ran = time.perf_counter()
    try:
        message, context, _run, fab = pull_task_input(client)
        pulled = ran = time.perf_counter()
        check_fab(fab)
        reply = client_app(message, context)
        ran = time.perf_counter()
        status, details = SubStatus.COMPLETED, ""
    except ForeignAppError as error:
        logger.error("refusing the task: %s", error)
        details = str(error)
        if message is not None:
            code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION
            reply = Message(Error(code=code, reason=details), reply_to=message)
    except Exception as error:  # as flwr-clientapp: report it, never crash the node
        logger.exception("the ClientApp raised an exception")
        details = f"{type(error)}:<'{error}'>"
        if message is not None:
            code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            reply = Message(Error(code=code, reason=details), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        finally:
            push_task_output(client=client, context=context, sub_status=status, details=details)
            heartbeat.stop()
            client.close()
    if message is not None:
        logger.info(
            "%s message: pulled in %.2f s, ran in %.2f s, replied in %.2f s",
            message.metadata.message_type,
            pulled - started,
            ran - pulled,
            time.perf_counter() - ran,
        )
    return str(status)


def _exit_with_parent(parent_pid: int) -> None:
    def watch() -> None:
        while True:
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                logger.info("the SuperNode (PID %d) is gone; the worker stops", parent_pid)
                os._exit(0)
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(_PARENT_CHECK_S)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def serve(
    connect: RuntimeConnector,
    *,
    poll_interval: float,
    client_app: ClientAppCallable | None = None,
    stop: threading.Event | None = None,
    wake: TaskSignal | None = None,
    replied: threading.Event | None = None,
    where: str = "",
) -> None:
    """Acquire and run ClientApp tasks from a SuperNode's Runtime API until ``stop``.

    Parameters
    ----------
    connect : RuntimeConnector
        Opens the Runtime API clients (:func:`http_connector`, or the node's own state).
    poll_interval : float
        Longest wait between asks when no task is pending: right after a task the worker
        asks again after ``FIRST_TASK_POLL_S`` (the round's next message is due), doubling
        the wait up to ``poll_interval``; with ``wake``, it asks when the node signals a
        task and otherwise every ``poll_interval``.
    client_app : callable, optional
        What runs a message; by default the ClientApp :data:`CLIENTAPP_REF` names, loaded
        once, here (:func:`load_client_app`).
    stop : threading.Event, optional
        Set it to end the loop (tests); the worker otherwise runs until its node exits
        (seen within ``poll_interval`` when waiting on ``wake``).
    wake : TaskSignal, optional
        Notified by the node's state when it creates a task
        (:mod:`fedlora.flower_internals.node_wake`).
    replied : threading.Event, optional
        Set after each task, once its reply is stored in the node.
    where : str
        Which node this worker serves, for the log.
    """
    if client_app is None:
        client_app = load_client_app()
    # The node offers a task once it holds the message, maybe before its objects.
    shorten_pull_backoff(cap=NEARBY_PULL_BACKOFF_CAP_S)
    stop = stop or threading.Event()
    backoff = PollBackoff(first=FIRST_TASK_POLL_S, cap=poll_interval)
    client = connect(None)
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value])
    logger.info("warm worker ready: %s%s", where, "" if wake is None else ", woken by its node")
    woken = False
    try:
        while not stop.is_set():
            response = client.AcquireTask(request)
            if response.HasField("task") and response.token:
                started = time.perf_counter()
                status = run_task(connect(response.token), client_app)
                if replied is not None:
                    replied.set()
                took = time.perf_counter() - started
                logger.info(
                    "task %d: %s in %.2f s%s",
                    response.task.task_id,
                    status,
                    took,
                    ", woken by the node" if woken else "",
                )
                backoff.reset()
                woken = False
                continue
            if wake is None:
                stop.wait(backoff.next_wait())
            else:
                woken = wake.wait(poll_interval)
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m fedlora.flower_internals.node_worker --runtime-api-address HOST:PORT [...]``."""
    parser = argparse.ArgumentParser(prog="python -m fedlora.flower_internals.node_worker")
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--poll-interval", type=float, default=0.2)
    parser.add_argument("--parent-pid", type=int)
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    configure_process_logging(LOG_FORMAT, verbose=args.verbose)
    if args.parent_pid is not None:
        _exit_with_parent(args.parent_pid)
    serve(
        http_connector(args.runtime_api_address),
        poll_interval=args.poll_interval,
        where=f"the SuperNode's Runtime API at {args.runtime_api_address}",
    )


if __name__ == "__main__":
    main()
