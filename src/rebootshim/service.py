"""The Task API (containerd.task.v2.Task): one coroutine per RPC.

Each method turns a request into calls on a Container and the result
into a response; errors are ShimError kinds, mapped to a status by the
ttrpc server.  Per-RPC contracts follow protocol doc section 3.3.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from typing import Any, cast

from google.protobuf import empty_pb2
from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from rebootshim.api.events import task_pb2 as ev
from rebootshim.api.runc import options_pb2
from rebootshim.api.task import shim_pb2 as pb
from rebootshim.api.types import task_pb2 as types_pb
from rebootshim.container import reboot
from rebootshim.container import spec as specs
from rebootshim.container.container import (
    DRAIN_AT_DELETE,
    Container,
    finish_io,
    write_json_atomic,
)
from rebootshim.container.process import GO_ZERO_SECONDS, Exec, Exit, Process, Stdio
from rebootshim.container.state import State, to_status
from rebootshim.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unimplemented,
)
from rebootshim.events import Publisher
from rebootshim.log import ctx
from rebootshim.reaper import Reaper
from rebootshim.runtime import mount
from rebootshim.runtime.runc import Runc
from rebootshim.stdio import Upstream

log = logging.getLogger(__name__)

SERVICE = "containerd.task.v2.Task"
EMPTY = empty_pb2.Empty()


def timestamp(at: float | None) -> Timestamp:
    if at is None:
        return Timestamp(seconds=GO_ZERO_SECONDS)
    ts = Timestamp()
    ts.FromNanoseconds(int(at * 1e9))
    return ts


class Events:
    """The Notifier of containers: builds containerd.events messages."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    def started(self, id: str, pid: int) -> None:
        self.publisher.publish("/tasks/start", ev.TaskStart(container_id=id, pid=pid))

    def exec_started(self, id: str, exec_id: str, pid: int) -> None:
        msg = ev.TaskExecStarted(container_id=id, exec_id=exec_id, pid=pid)
        self.publisher.publish("/tasks/exec-started", msg)

    def exited(
        self, id: str, process_id: str, pid: int, status: int, at: float
    ) -> None:
        msg = ev.TaskExit(
            container_id=id,
            id=process_id,
            pid=pid,
            exit_status=status,
            exited_at=timestamp(at),
        )
        self.publisher.publish("/tasks/exit", msg)

    def oom(self, id: str) -> None:
        self.publisher.publish("/tasks/oom", ev.TaskOOM(container_id=id))
        log.info("oom", extra=ctx(id=id))


class TaskService:
    def __init__(
        self, namespace: str, runc: Runc, reaper: Reaper, publisher: Publisher
    ) -> None:
        self.namespace = namespace
        self.runc = runc
        self.reaper = reaper
        self.publisher = publisher
        self.events = Events(publisher)
        self.containers: dict[str, Container] = {}
        self._creating: set[str] = set()
        self.shutdown_requested = asyncio.Event()

    def methods(self) -> dict[str, tuple[type[Message], Any]]:
        return {
            "Create": (pb.CreateTaskRequest, self.create),
            "Start": (pb.StartRequest, self.start),
            "State": (pb.StateRequest, self.state),
            "Wait": (pb.WaitRequest, self.wait),
            "Kill": (pb.KillRequest, self.kill),
            "Delete": (pb.DeleteRequest, self.delete),
            "Exec": (pb.ExecProcessRequest, self.exec),
            "ResizePty": (pb.ResizePtyRequest, self.resize_pty),
            "CloseIO": (pb.CloseIORequest, self.close_io),
            "Pids": (pb.PidsRequest, self.pids),
            "Pause": (pb.PauseRequest, self.pause),
            "Resume": (pb.ResumeRequest, self.resume),
            "Update": (pb.UpdateTaskRequest, self.update),
            "Connect": (pb.ConnectRequest, self.connect),
            "Shutdown": (pb.ShutdownRequest, self.shutdown),
            "Stats": (pb.StatsRequest, self.unimplemented),
            "Checkpoint": (pb.CheckpointTaskRequest, self.unimplemented),
        }

    def _get(self, id: str) -> Container:
        try:
            return self.containers[id]
        except KeyError:
            raise NotFound(f"container {id} not created") from None

    # -- Create ------------------------------------------------------------------

    async def create(self, req: pb.CreateTaskRequest) -> pb.CreateTaskResponse:
        if not req.id:
            raise InvalidArgument("container id must not be empty")
        if req.id in self.containers or req.id in self._creating:
            raise AlreadyExists(f"container {req.id} already exists")
        if req.checkpoint:
            raise Unimplemented("restoring from a checkpoint is not supported")
        self._creating.add(req.id)  # a second Create of it waits for none
        try:
            container = await self._create(req)
        finally:
            self._creating.discard(req.id)
        self.containers[req.id] = container
        self.publisher.publish(
            "/tasks/create",
            ev.TaskCreate(
                container_id=req.id,
                bundle=req.bundle,
                rootfs=req.rootfs,
                io=ev.TaskIO(
                    stdin=req.stdin,
                    stdout=req.stdout,
                    stderr=req.stderr,
                    terminal=req.terminal,
                ),
                pid=container.pid,
            ),
        )
        log.info("created", extra=ctx(id=req.id, pid=container.pid))
        return pb.CreateTaskResponse(pid=container.pid)

    async def _create(self, req: pb.CreateTaskRequest) -> Container:
        config = os.path.join(req.bundle, "config.json")
        original = _read_spec(config)
        specs.validate(original)
        policy = specs.effective_policy(
            original, reboot.parse_policy(original.get("annotations") or {})
        )
        prepared = specs.prepare(original, policy)
        stdio = _stdio(req)
        return await self._setup(req, config, original, prepared, policy, stdio)

    async def _setup(
        self,
        req: pb.CreateTaskRequest,
        config: str,
        original: specs.Spec,
        prepared: specs.Spec,
        policy: reboot.Policy,
        stdio: Stdio,
    ) -> Container:
        """Mount, open stdio, runc create; on failure undo all of it."""
        upstream = await self._open_stdio(req, req.id)
        container = Container(
            req.id,
            self.namespace,
            req.bundle,
            stdio,
            upstream,
            self.runc,
            self.reaper,
            self.events,
            prepared,
            policy,
        )
        try:
            if prepared != original:
                write_json_atomic(config, prepared)
            mounts = [
                mount.Mount(m.type, m.source, tuple(m.options)) for m in req.rootfs
            ]
            if mounts:
                mount.mount_all(mounts, os.path.join(req.bundle, "rootfs"))
                container.rootfs_mounted = True
            await container.create()
        except BaseException:
            await self._undo_create(container, config, original)
            raise
        return container

    async def _undo_create(
        self, container: Container, config: str, original: specs.Spec
    ) -> None:
        with contextlib.suppress(Exception):
            await self.runc.delete(container.id, container.bundle, force=True)
        await container.release()
        write_json_atomic(config, original)

    async def _open_stdio(self, req: StdioRequest, id: str) -> Upstream:
        return await Upstream.open(
            req.stdin,
            req.stdout,
            req.stderr,
            req.terminal,
            namespace=self.namespace,
            id=id,
            spawn=self._spawn,
        )

    def _spawn(
        self, argv: list[str], *, extra_fds: tuple[int, ...], env: dict[str, str]
    ) -> int:
        pid, _ = self.reaper.spawn(argv, extra_fds=extra_fds, env=env)
        return pid

    # -- the process lifecycle -----------------------------------------------

    async def start(self, req: pb.StartRequest) -> pb.StartResponse:
        container = self._get(req.id)
        if not req.exec_id:
            return pb.StartResponse(pid=await container.start())
        proc = container.get_process(req.exec_id)
        assert isinstance(proc, Exec)
        if proc.state is not State.CREATED:
            raise FailedPrecondition(f"exec {proc.id} is {proc.state}, not created")
        return pb.StartResponse(pid=await container.start_exec(proc))

    async def state(self, req: pb.StateRequest) -> pb.StateResponse:
        container = self._get(req.id)
        proc = container.get_process(req.exec_id)
        exit = proc.exit
        return pb.StateResponse(
            id=req.exec_id or req.id,
            bundle=container.bundle,
            pid=proc.pid,
            status=cast(Any, to_status(proc.state)),
            stdin=proc.stdio.stdin,
            stdout=proc.stdio.stdout,
            stderr=proc.stdio.stderr,
            terminal=proc.stdio.terminal,
            exit_status=exit.status if exit else 0,
            exited_at=timestamp(exit.at if exit else None),
            exec_id=req.exec_id,
        )

    async def wait(self, req: pb.WaitRequest) -> pb.WaitResponse:
        proc = self._get(req.id).get_process(req.exec_id)
        exit = await proc.wait()
        return pb.WaitResponse(exit_status=exit.status, exited_at=timestamp(exit.at))

    async def kill(self, req: pb.KillRequest) -> empty_pb2.Empty:
        container = self._get(req.id)
        log.debug("kill", extra=ctx(id=req.id, exec_id=req.exec_id, signal=req.signal))
        if not req.exec_id:
            await container.kill(req.signal, req.all)
            return EMPTY
        proc = container.get_process(req.exec_id)
        proc.check_alive()
        if proc.state is State.CREATED:
            raise FailedPrecondition(f"exec {proc.id} is not started")
        try:
            os.kill(proc.pid, req.signal)
        except ProcessLookupError:
            raise NotFound(f"process {proc.id} already finished") from None
        return EMPTY

    async def delete(self, req: pb.DeleteRequest) -> pb.DeleteResponse:
        container = self._get(req.id)
        if req.exec_id:
            return await self._delete_exec(container, req.exec_id)
        await container.delete()
        del self.containers[req.id]
        exit = container.exit or Exit(0, time.time())
        self.publisher.publish(
            "/tasks/delete",
            ev.TaskDelete(
                container_id=req.id,
                pid=container.pid,
                exit_status=exit.status,
                exited_at=timestamp(exit.at),
            ),
        )
        log.info("deleted", extra=ctx(id=req.id, pid=container.pid))
        return _delete_response(container, exit)

    async def _delete_exec(
        self, container: Container, exec_id: str
    ) -> pb.DeleteResponse:
        proc = container.get_process(exec_id)
        if proc.state is State.RUNNING:
            raise FailedPrecondition(f"cannot delete exec {exec_id}: it is running")
        del container.execs[exec_id]
        await finish_io(proc.upstream, DRAIN_AT_DELETE)
        return _delete_response(proc, proc.exit or Exit(0, time.time()))

    # -- execs and stdio ---------------------------------------------------------

    async def exec(self, req: pb.ExecProcessRequest) -> empty_pb2.Empty:
        container = self._get(req.id)
        if not req.exec_id:
            raise InvalidArgument("exec id must not be empty")
        if req.exec_id in container.execs:
            raise AlreadyExists(f"exec {req.exec_id} already exists")
        container.check_alive()
        process = _json_any(req.spec, "exec process spec")
        upstream = await self._open_stdio(req, req.exec_id)
        stdio = _stdio(req)
        container.execs[req.exec_id] = Exec(req.exec_id, stdio, upstream, process)
        self.publisher.publish(
            "/tasks/exec-added",
            ev.TaskExecAdded(container_id=req.id, exec_id=req.exec_id),
        )
        return EMPTY

    async def resize_pty(self, req: pb.ResizePtyRequest) -> empty_pb2.Empty:
        proc = self._get(req.id).get_process(req.exec_id)
        proc.upstream.resize(req.width, req.height)
        return EMPTY

    async def close_io(self, req: pb.CloseIORequest) -> empty_pb2.Empty:
        proc = self._get(req.id).get_process(req.exec_id)
        if req.stdin:
            proc.upstream.close_stdin()
        return EMPTY

    # -- the container as a whole -------------------------------------------

    async def pids(self, req: pb.PidsRequest) -> pb.PidsResponse:
        container = self._get(req.id)
        by_pid = {e.pid: e.id for e in container.execs.values() if e.pid}
        infos = []
        for pid in await container.pids():
            info = types_pb.ProcessInfo(pid=pid)
            if pid in by_pid:
                details = options_pb2.ProcessDetails(exec_id=by_pid[pid])
                info.info.CopyFrom(
                    AnyPb(
                        type_url=details.DESCRIPTOR.full_name,
                        value=details.SerializeToString(),
                    )
                )
            infos.append(info)
        return pb.PidsResponse(processes=infos)

    async def pause(self, req: pb.PauseRequest) -> empty_pb2.Empty:
        await self._get(req.id).pause()
        self.publisher.publish("/tasks/paused", ev.TaskPaused(container_id=req.id))
        return EMPTY

    async def resume(self, req: pb.ResumeRequest) -> empty_pb2.Empty:
        await self._get(req.id).resume()
        self.publisher.publish("/tasks/resumed", ev.TaskResumed(container_id=req.id))
        return EMPTY

    async def update(self, req: pb.UpdateTaskRequest) -> empty_pb2.Empty:
        container = self._get(req.id)
        await container.update(_json_any(req.resources, "resources"))
        return EMPTY

    async def connect(self, req: pb.ConnectRequest) -> pb.ConnectResponse:
        container = self.containers.get(req.id)
        pid = container.pid if container else 0
        return pb.ConnectResponse(shim_pid=os.getpid(), task_pid=pid)

    async def shutdown(self, req: pb.ShutdownRequest) -> empty_pb2.Empty:
        # The runc shim ignores Shutdown while it still has a container.
        if not self.containers:
            self.shutdown_requested.set()
        return EMPTY

    async def unimplemented(self, req: Message) -> empty_pb2.Empty:
        raise Unimplemented(
            f"{type(req).__name__.removesuffix('Request')} is not supported"
        )


StdioRequest = pb.CreateTaskRequest | pb.ExecProcessRequest


def _stdio(req: StdioRequest) -> Stdio:
    return Stdio(req.stdin, req.stdout, req.stderr, req.terminal)


def _read_spec(path: str) -> specs.Spec:
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
    except FileNotFoundError:
        raise InvalidArgument(f"no OCI spec at {path}") from None
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"failed to read OCI spec {path}: {exc}") from None
    if not isinstance(spec, dict):
        raise InvalidArgument(f"OCI spec {path} is not a JSON object")
    return spec


def _json_any(value: AnyPb, what: str) -> dict[str, Any]:
    """The JSON document inside an Any (typeurl marshals OCI types as JSON)."""
    try:
        doc = json.loads(value.value or b"null")
    except ValueError as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    return doc


def _delete_response(proc: Process, exit: Exit) -> pb.DeleteResponse:
    return pb.DeleteResponse(
        pid=proc.pid, exit_status=exit.status, exited_at=timestamp(exit.at)
    )
