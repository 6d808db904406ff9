"""The `--json` mode: JSON-RPC 2.0, one object per line on stdin and stdout.

Requests are handled concurrently (a client may pipeline), each response carries its
request's id, and nothing but JSON-RPC ever reaches stdout (logs go to stderr).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from whatsap2p.app.events import (
    DeliveryReport,
    GroupChanged,
    IdentityChanged,
    PhotoReceived,
    PresenceChanged,
    QueuedDelivered,
    Received,
    ServerConnectionChanged,
    TextReceived,
)
from whatsap2p.app.groups import Group
from whatsap2p.app.history import HistoryEntry
from whatsap2p.app.session import Session
from whatsap2p.errors import DirectoryError, InvalidInput, StoreError, WhatsAp2pError
from whatsap2p.ui.stdin import LineReader

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "SERVER_ERROR",
    "JsonRpc",
]

log = logging.getLogger(__name__)

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
#: The server cannot be reached, or a local file cannot be written.
SERVER_ERROR = -32000
#: The largest `limit` of `history`: the entries of a page (rarely more: docs/jsonrpc.md).
MAX_HISTORY = 1000
#: What a message id may be (docs/protocol.md §6.1; this module makes 32 hex digits).
_MESSAGE_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
#: Requests handled at once: a client pipelining more waits (its lines stay unread)
#: until one is answered, so a flood of sends to a frozen peer cannot use up memory.
MAX_IN_FLIGHT = 4096

Params = dict[str, Any]


class _RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _text_param(params: Params, name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str):
        raise _RpcError(INVALID_PARAMS, f"param {name!r} must be a string")
    return value


def _flag_param(params: Params, name: str) -> bool:
    """An optional true/false param (false when absent)."""
    value = params.get(name, False)
    if not isinstance(value, bool):
        raise _RpcError(INVALID_PARAMS, f"param {name!r} must be true or false")
    return value


def _group_param(params: Params) -> str:
    """A group, by its name or its id: param `group` (or `name`, as the contract's
    addToGroup and removeFromGroup call it)."""
    return _text_param(params, "group" if "group" in params else "name")


def report_json(report: DeliveryReport) -> dict[str, object]:
    return {
        "id": report.id,
        "delivered": report.delivered,
        "offline": report.offline,
        "failed": [
            {"phone": failed.phone, "error": failed.error, "code": failed.code}
            for failed in report.failed
        ],
        "queued": report.queued,
        "routes": report.routes,
    }


def group_json(group: Group, me: str) -> dict[str, object]:
    """A group for programs: `members` are the others in it (whom a send to it goes to),
    `left` says that we are no longer in it, `private` that it is a list of ours alone."""
    item: dict[str, object] = {
        "id": group.id,
        "name": group.name,
        "members": list(group.others(me)),
        "creator": group.creator,
    }
    if group.private:
        item["private"] = True
    elif me not in group.members:
        item["left"] = True
    return item


def history_json(entry: HistoryEntry) -> dict[str, object]:
    item: dict[str, object] = {
        "id": entry.id,
        "from": entry.sender,
        "to": entry.recipient,
        "group": entry.group,
        "groupId": entry.group_id,
        "timestamp": entry.timestamp,
    }
    if entry.photo is not None:
        item["photo"] = entry.photo
    else:
        item["text"] = entry.text
    if entry.change is not None:
        item["change"] = entry.change
    item["state"] = entry.state
    if entry.error is not None:
        item["error"] = entry.error
    if entry.code is not None:
        item["code"] = entry.code
    return item


def received_json(event: Received) -> dict[str, object]:
    params: dict[str, object] = {
        "id": event.id,
        "from": event.sender,
        "name": event.name,
        "group": event.group,
        "groupId": event.group_id,
        "timestamp": event.timestamp,
    }
    if isinstance(event, PhotoReceived):
        params["photo"] = event.photo.describe()
    else:
        params["text"] = event.text
        if event.change is not None:
            params["change"] = event.change
    return params


class JsonRpc:
    def __init__(
        self, session: Session, out: TextIO | None = None, max_in_flight: int = MAX_IN_FLIGHT
    ) -> None:
        self._session = session
        self._out = out or sys.stdout
        self._tasks: set[asyncio.Task[None]] = set()
        self._room = asyncio.Semaphore(max_in_flight)
        self.quit = asyncio.Event()
        self._flush_soon = False
        self._shown: list[Received] = []
        self._methods: dict[str, Callable[[Params], Awaitable[object]]] = {
            "send": self._send,
            "addContact": self._add_contact,
            "removeContact": self._remove_contact,
            "listContacts": self._list_contacts,
            "createGroup": self._create_group,
            "addToGroup": self._add_to_group,
            "removeFromGroup": self._remove_from_group,
            "listGroups": self._list_groups,
            "leaveGroup": self._leave_group,
            "status": self._status,
            "identity": self._identity,
            "history": self._history,
            "outbox": self._outbox,
            "cancel": self._cancel,
            "trust": self._trust,
            "quit": self._quit,
        }

    def write(self, message: dict[str, object]) -> None:
        """Buffered, and flushed once per turn of the event loop: a burst of answers and
        notifications costs a few writes to stdout, not one each."""
        # ensure_ascii: U+2028 and friends stay escaped, so every reader sees one line.
        self._out.write(json.dumps(message, ensure_ascii=True, separators=(",", ":")) + "\n")
        if not self._flush_soon:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Out to the reader, then (only then) remember what was shown."""
        self._flush_soon = False
        self._out.flush()
        shown, self._shown = self._shown, []
        for event in shown:
            self._session.shown(event)

    def notify(self, method: str, params: dict[str, object]) -> None:
        self.write({"jsonrpc": "2.0", "method": method, "params": params})

    async def run(self, stop: asyncio.Event, requests: LineReader | None = None) -> None:
        """Serve until `quit`, end of input, or `stop`; answers every request read (from
        standard input, or `requests`)."""
        assert self._session.listen_address is not None
        listen = f"{self._session.listen_address[0]}:{self._session.listen_address[1]}"
        session = self._session
        self.notify("ready", {"phone": session.phone, "listen": listen, "server": session.server})
        pump = asyncio.create_task(self._forward_received())
        reading = asyncio.create_task(self._read_requests(requests or LineReader()))
        stop_task = asyncio.ensure_future(stop.wait())
        quit_task = asyncio.ensure_future(self.quit.wait())
        try:
            await asyncio.wait({reading, stop_task, quit_task}, return_when=asyncio.FIRST_COMPLETED)
            reading.cancel()
            quit_task.cancel()
            if self._tasks and not stop.is_set():
                # the end of input or `quit`: the requests under way finish (each is
                # bounded by its own deadlines), unless a signal comes meanwhile
                await asyncio.wait({*self._tasks, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            stop_task.cancel()
            for task in list(self._tasks):  # a signal: what is left is answered as cancelled
                task.cancel()
            if self._tasks:
                await asyncio.wait(self._tasks)
        finally:
            pump.cancel()
            self._flush()

    async def _read_requests(self, reader: LineReader) -> None:
        """Start answering each request line, until end of input."""
        while (line := await reader.readline()) is not None:
            if line.strip():
                await self._room.acquire()  # given back when the request ends
                task = asyncio.ensure_future(self._handle_line(line))
                self._tasks.add(task)
                task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._room.release()

    async def _forward_received(self) -> None:
        while True:
            event = await self._session.events.get()
            if isinstance(event, IdentityChanged):
                self.notify(
                    "identityChanged", {"phone": event.phone, "fingerprint": event.fingerprint}
                )
            elif isinstance(event, ServerConnectionChanged):
                self.notify(
                    "serverConnection", {"state": event.state, "server": self._session.server}
                )
            elif isinstance(event, QueuedDelivered):
                if not event.news:  # (the news of a group's members: not a message sent)
                    self.notify("delivered", {"id": event.id, "phone": event.phone})
            elif isinstance(event, PresenceChanged):
                continue  # only the terminal UI asks to watch presence
            elif isinstance(event, GroupChanged):
                changed = group_json(event.group, self._session.phone)
                changed.update(by=event.by, change=event.change)
                self.notify("groupChanged", changed)
            elif isinstance(event, TextReceived) and event.change is not None:
                # (news of a group's members: `groupChanged` says what came of it)
                self._session.shown(event)
            else:
                self.notify("receive", received_json(event))
                self._shown.append(event)  # marked shown once flushed

    async def _handle_line(self, line: str) -> None:
        if line == LineReader.TOO_LONG:
            self._error(None, INVALID_REQUEST, "request line too long")
            return
        try:
            message = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            self._error(None, PARSE_ERROR, f"parse error: {exc}")
            return
        if isinstance(message, list):
            if not message:
                self._error(None, INVALID_REQUEST, "empty batch")
                return
            results = await asyncio.gather(*(self._call(m) for m in message))
            answers = [r for r in results if r is not None]
            if answers:
                self._out.write(json.dumps(answers, separators=(",", ":")) + "\n")
                self._out.flush()
            return
        answer = await self._call(message)
        if answer is not None:
            self.write(answer)

    async def _call(self, message: object) -> dict[str, object] | None:
        """Run one request; the response, or None for a notification."""
        request_id: object = None
        try:
            if not isinstance(message, dict):
                raise _RpcError(INVALID_REQUEST, "a request must be a JSON object")
            request_id = message.get("id")
            if not (request_id is None or isinstance(request_id, str | int | float)) or (
                isinstance(request_id, bool)
            ):
                request_id = None
                raise _RpcError(INVALID_REQUEST, "id must be a string, a number or null")
            if message.get("jsonrpc") != "2.0":
                raise _RpcError(INVALID_REQUEST, '"jsonrpc" must be "2.0"')
            method = message.get("method")
            if not isinstance(method, str):
                raise _RpcError(INVALID_REQUEST, '"method" must be a string')
            params = message.get("params", {})
            if params is None:
                params = {}
            if not isinstance(params, dict):
                raise _RpcError(INVALID_PARAMS, "params must be an object")
            handler = self._methods.get(method)
            if handler is None:
                raise _RpcError(METHOD_NOT_FOUND, f"unknown method {method!r}")
            result = await self._run(handler, params)
        except _RpcError as exc:
            if isinstance(message, dict) and "id" not in message and exc.code != INVALID_REQUEST:
                return None
            return _error_object(request_id, exc.code, exc.message)
        if "id" not in message:
            return None  # a notification gets no answer
        return {"jsonrpc": "2.0", "id": request_id, "result": result}

    async def _run(self, handler: Callable[[Params], Awaitable[object]], params: Params) -> object:
        try:
            return await handler(params)
        except _RpcError:
            raise
        except InvalidInput as exc:
            raise _RpcError(INVALID_PARAMS, str(exc)) from exc
        except (DirectoryError, StoreError) as exc:
            raise _RpcError(SERVER_ERROR, str(exc)) from exc
        except WhatsAp2pError as exc:
            raise _RpcError(INTERNAL_ERROR, str(exc)) from exc
        except asyncio.CancelledError as exc:
            raise _RpcError(INTERNAL_ERROR, "cancelled: the module is stopping") from exc
        except Exception as exc:  # a bug: this request fails, said and logged; not the module
            log.exception("request failed unexpectedly")
            raise _RpcError(INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {exc}") from exc

    def _error(self, request_id: object, code: int, message: str) -> None:
        self.write(_error_object(request_id, code, message))

    # --- methods ----------------------------------------------------------------------------

    async def _send(self, params: Params) -> object:
        target = _text_param(params, "to")
        has_text, has_photo = "text" in params, "photo" in params
        if has_text == has_photo:
            raise _RpcError(INVALID_PARAMS, "give exactly one of 'text' and 'photo'")
        queue = _flag_param(params, "queue")
        message_id = params.get("id")
        if message_id is not None and not isinstance(message_id, str):
            raise _RpcError(INVALID_PARAMS, "param 'id' must be a string of 32 hex digits")
        session = self._session
        if has_text:
            text = _text_param(params, "text")
            report = await session.send_text(target, text, queue, message_id)
        else:
            path = _text_param(params, "photo")
            report = await session.send_photo(target, path, queue, message_id=message_id)
        return report_json(report)

    async def _cancel(self, params: Params) -> object:
        return {"cancelled": self._session.cancel(_text_param(params, "id"))}

    async def _add_contact(self, params: Params) -> object:
        contact = self._session.book.add_contact(
            _text_param(params, "name"), _text_param(params, "phone")
        )
        return {"name": contact.name, "phone": contact.phone}

    async def _remove_contact(self, params: Params) -> object:
        self._session.book.remove_contact(_text_param(params, "name"))
        return {}

    async def _list_contacts(self, params: Params) -> object:
        trust = self._session.trust
        return [
            {"name": c.name, "phone": c.phone, "fingerprint": trust.fingerprint_of(c.phone)}
            for c in self._session.book.contacts()
        ]

    async def _create_group(self, params: Params) -> object:
        members = params.get("members")
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise _RpcError(INVALID_PARAMS, "param 'members' must be a list of strings")
        private = _flag_param(params, "private")
        session = self._session
        group = await session.create_group(_text_param(params, "name"), members, private)
        return group_json(group, session.phone)

    async def _add_to_group(self, params: Params) -> object:
        session = self._session
        group = await session.add_to_group(_group_param(params), _text_param(params, "member"))
        return group_json(group, session.phone)

    async def _remove_from_group(self, params: Params) -> object:
        session = self._session
        group = await session.remove_from_group(_group_param(params), _text_param(params, "member"))
        return group_json(group, session.phone)

    async def _leave_group(self, params: Params) -> object:
        session = self._session
        group = await session.leave_group(_group_param(params))
        return group_json(group, session.phone)

    async def _list_groups(self, params: Params) -> object:
        me = self._session.phone
        return [group_json(g, me) for g in self._session.book.groups()]

    async def _status(self, params: Params) -> object:
        online = await self._session.status(_text_param(params, "target"))
        return {phone: {"online": is_online} for phone, is_online in online.items()}

    async def _history(self, params: Params) -> object:
        limit = params.get("limit", 50)
        if type(limit) is not int or not 1 <= limit <= MAX_HISTORY:
            raise _RpcError(INVALID_PARAMS, f"param 'limit' must be an integer 1..{MAX_HISTORY}")
        before = params.get("before")
        if before is not None and not (isinstance(before, str) and _MESSAGE_ID.fullmatch(before)):
            raise _RpcError(INVALID_PARAMS, "param 'before' must be a message id")
        changes = _flag_param(params, "changes")
        target = _text_param(params, "with")
        while True:  # (the news of a group's members only when asked for: a page of
            # nothing else is passed over, so that only the end of the history is empty)
            entries = self._session.conversation(target, limit, before)
            shown = [history_json(e) for e in entries if changes or e.change is None]
            if shown or not entries:
                return shown
            before = entries[-1].id

    async def _outbox(self, params: Params) -> object:
        changes = _flag_param(params, "changes")
        pending = []
        for entry in self._session.outbox():
            if entry.change is not None and not changes:
                continue  # (the news of a group's members, only when asked for)
            item = history_json(entry)
            del item["from"], item["state"]
            pending.append(item)
        return pending

    async def _identity(self, params: Params) -> object:
        return {"phone": self._session.phone, "fingerprint": self._session.fingerprint}

    async def _trust(self, params: Params) -> object:
        phone, fingerprint = await self._session.trust_key(_text_param(params, "phone"))
        return {"phone": phone, "fingerprint": fingerprint}

    async def _quit(self, params: Params) -> object:
        self.quit.set()
        return {}


def _error_object(request_id: object, code: int, message: str) -> dict[str, object]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
