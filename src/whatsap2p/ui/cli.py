"""The `whatsap2p` command: the one place where errors become messages and exit codes."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import NoReturn

import platformdirs
import uvloop

from whatsap2p import __version__
from whatsap2p.app.session import Session, SessionConfig
from whatsap2p.config import Limits, MiB, RateLimits, Timeouts
from whatsap2p.errors import CannotListen, InvalidInput, StoreError, WhatsAp2pError
from whatsap2p.keyfile import load_or_create_key
from whatsap2p.metrics import Exported
from whatsap2p.net.network import host_port
from whatsap2p.phone import DEFAULT_REGION, normalise_phone
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.directory import MAX_RELAYS
from whatsap2p.protocol.keys import StaticKey, normalise_fingerprint
from whatsap2p.protocol.relay import mint
from whatsap2p.relay.limits import RelayLimits
from whatsap2p.relay.secret import DEFAULT_SECRET, load_or_create_secret
from whatsap2p.relay.service import RelayConfig, RelayServer
from whatsap2p.server.bindings import Bindings
from whatsap2p.server.service import DirectoryServer, ServerConfig
from whatsap2p.ui.loadgen import main_loadgen

__all__ = ["main", "parse_address"]

log = logging.getLogger("whatsap2p")

DEFAULT_DB = platformdirs.user_data_path("whatsap2p") / "server" / "directory.sqlite3"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, as for every other start-up error (argparse would add the usage).
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def parse_address(text: str, default_host: str | None = None) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT` -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError(f"write an IPv6 address in brackets: [{host}]:{port_text}")
    if not host:
        if default_host is None:
            raise argparse.ArgumentTypeError(f"{text!r} has no host")
        host = default_host
    if not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: the port must be a number 0..65535")
    return host, int(port_text)


def _relay_address(text: str) -> ev.RelayAddress:
    """`HOST:PORT` of a relay, its host name resolved (modules are given IP addresses)."""
    host, port = parse_address(text)
    if port == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a relay's port is 1..65535")
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot resolve {host!r}: {exc}") from None
    return ev.RelayAddress(str(found[0][4][0]), port)


def _fingerprint(text: str) -> str:
    fp = normalise_fingerprint(text)
    if fp is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a key fingerprint (64 hex digits)")
    return fp


def _address_list(text: str) -> list[tuple[str, int]]:
    return [parse_address(part.strip()) for part in text.split(",") if part.strip()]


def _server_list(text: str) -> list[tuple[str, int]]:
    servers = _address_list(text)
    if not servers:
        raise argparse.ArgumentTypeError(f"{text!r} names no server")
    return servers


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="whatsap2p", description="Peer-to-peer messenger for text and photos.")
    parser.add_argument("--version", action="version", version=f"whatsap2p {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more (to stderr)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    server = commands.add_parser("server", help="run the central directory server")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on")
    server.add_argument("--port", type=int, default=5555, help="port (0 picks a free one)")
    server.add_argument(
        "--idle-timeout",
        type=_positive,
        default=Timeouts().server_idle,
        metavar="SECONDS",
        help="drop a user whose heartbeats stop for this long (default %(default)s)",
    )
    server.add_argument(
        "--register-timeout",
        type=_positive,
        default=Timeouts().register_deadline,
        metavar="SECONDS",
        help="drop a connection that does not register within this time",
    )
    server.add_argument(
        "--db",
        type=Path,
        default=DEFAULT_DB,
        metavar="PATH",
        help="SQLite file of number-to-key bindings (default %(default)s)",
    )
    server.add_argument(
        "--key", type=Path, metavar="PATH", help="the server's key file (default: DB path + .key)"
    )
    server.add_argument(
        "--new-key",
        action="store_true",
        help="with --redis: make the key file if it is missing (the directory's first "
        "server); without it a server of a shared directory refuses to start with a key of "
        "its own, which every pinned user would refuse",
    )
    server.add_argument(
        "--redis",
        metavar="URL",
        help="keep the directory in Redis/Valkey (redis://[USER:PASSWORD@]HOST:PORT/DB, "
        "rediss:// over TLS, sentinel://[USER:PASSWORD@]HOST:PORT,.../SERVICE/DB), shared "
        "by every server given the same URL and key file; without it, in this process and --db",
    )
    server.add_argument(
        "--redis-password-file",
        type=Path,
        metavar="FILE",
        help=f"with --redis: the password, from this file (or ${REDIS_PASSWORD_ENV}), for a "
        "URL without one: out of the process list",
    )
    server.add_argument(
        "--relay",
        type=_relay_address,
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a relay (whatsap2p relay) where users that no direct way connects meet; may "
        f"repeat, up to {MAX_RELAYS} (a host name is resolved now)",
    )
    server.add_argument(
        "--relay-secret",
        type=Path,
        metavar="FILE",
        help="with --relay: the secret shared with the relays (default: the one `whatsap2p "
        "relay` uses on this machine)",
    )
    server.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on http://METRICS_HOST:PORT/metrics (0: a free port)",
    )
    server.add_argument(
        "--metrics-host", default="127.0.0.1", help="address of the metrics endpoint"
    )
    server.add_argument(
        "--presence-ttl",
        type=_positive,
        default=Timeouts().presence_ttl,
        metavar="SECONDS",
        help="with --redis: a user whose server stops renewing it (crashed) shows offline "
        "everywhere after this long (default %(default)g)",
    )
    rates = RateLimits()
    for flag, name, help_text in (
        ("--lookup-rate", "lookup_rate", "numbers one connection may look up per second"),
        ("--lookup-burst", "lookup_burst", "lookups one connection may save up"),
        ("--ip-lookup-rate", "ip_lookup_rate", "numbers one source IP may look up per second"),
        ("--ip-lookup-burst", "ip_lookup_burst", "lookups one source IP may save up"),
        ("--ip-register-rate", "ip_register_rate", "registrations per second from one IP"),
        ("--ip-register-burst", "ip_register_burst", "registrations one IP may save up"),
        (
            "--max-unauthenticated",
            "max_unauthenticated_per_ip",
            "connections per IP still in the secure handshake",
        ),
        ("--reverse-rate", "reverse_rate", "requests to connect back per second, a connection"),
        ("--reverse-burst", "reverse_burst", "requests to connect back one connection may save"),
        ("--ip-reverse-rate", "ip_reverse_rate", "requests to connect back per second, an IP"),
        ("--ip-reverse-burst", "ip_reverse_burst", "requests to connect back one IP may save"),
        ("--reverse-to-rate", "reverse_to_rate", "requests to connect back per second, a number"),
        ("--reverse-to-burst", "reverse_to_burst", "requests to connect back, a number's burst"),
        ("--report-rate", "report_rate", "reports of connections per second, per connection"),
        ("--report-burst", "report_burst", "reports of connections, a connection's burst"),
    ):
        server.add_argument(
            flag,
            type=_positive,
            default=getattr(rates, name),
            dest=name,
            help=f"{help_text} (default %(default)g)",
        )
    server_commands = server.add_subparsers(dest="server_command", parser_class=_Parser)
    release = server_commands.add_parser("release", help="free a number bound to a key")
    release.add_argument("phone", metavar="PHONE")
    release.add_argument("--db", type=Path, default=DEFAULT_DB, metavar="PATH", dest="release_db")
    release.add_argument("--region", default=DEFAULT_REGION)
    release.add_argument("--redis", metavar="URL", dest="release_redis")
    release.add_argument("--redis-password-file", type=Path, metavar="FILE")

    _relay_parser(commands)

    load = commands.add_parser(
        "loadgen", help="load a directory server with simulated users (operators' benchmark)"
    )
    load.add_argument(
        "servers",
        type=_address_list,
        metavar="SERVER_HOST:PORT[,HOST:PORT...]",
        help="the server (a comma-separated list spreads the users over several)",
    )
    load.add_argument("--users", type=_count, required=True, help="users to register and hold")
    load.add_argument("--lookups", type=_count, default=0, help="lookups to run once all are on")
    load.add_argument("--concurrency", type=_count, default=50, help="clients running lookups")
    load.add_argument("--workers", type=_count, help="processes to spread over (default: cores)")
    load.add_argument("--server-key", type=_fingerprint, metavar="FINGERPRINT")
    load.add_argument(
        "--seed",
        default="loadgen",
        help="the simulated users' keys derive from it (default %(default)s)",
    )
    load.add_argument(
        "--hold",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="stay online after the report (Ctrl-C or SIGTERM ends it early)",
    )
    load.add_argument("--json", action="store_true", help="print the result as one JSON object")
    load.add_argument(
        "--first", type=_count, default=0, help="number of the first simulated user (default 0)"
    )
    load.add_argument(
        "--population",
        type=_count,
        help="look up numbers among the first N simulated users, held by this loadgen or "
        "another (default: up to this loadgen's last)",
    )

    user = commands.add_parser("user", help="run a user module")
    user.add_argument(
        "server",
        type=_server_list,
        metavar="SERVER_HOST:SERVER_PORT[,HOST:PORT...]",
        help="the directory server; a comma-separated list of servers of one deployment "
        "(one directory, one key) is tried in turn, and the module moves to another when "
        "it loses the one it uses",
    )
    user.add_argument("--phone", required=True, help="your phone number")
    user.add_argument(
        "--region", default=DEFAULT_REGION, help="region for national numbers (default BR)"
    )
    user.add_argument("--data-dir", type=Path, help="where contacts and photos are kept")
    user.add_argument(
        "--listen",
        type=lambda t: parse_address(t, default_host="0.0.0.0"),
        default=("0.0.0.0", 0),
        metavar="HOST:PORT",
        help="where to accept peers (default 0.0.0.0:0, a free port)",
    )
    user.add_argument("--advertise", metavar="HOST", help="publish this host instead of our IP")
    user.add_argument(
        "--server-key",
        type=_fingerprint,
        metavar="FP",
        help="refuse any server whose key has another fingerprint",
    )
    modes = user.add_mutually_exclusive_group()
    modes.add_argument("--json", action="store_true", help="JSON-RPC 2.0 on stdin/stdout")
    modes.add_argument("--plain", action="store_true", help="plain line mode")
    user.add_argument(
        "--max-photo-mb",
        type=_positive,
        default=Limits().max_photo_bytes / MiB,
        metavar="MiB",
        help="largest photo sent or accepted (default %(default)g)",
    )
    user.add_argument(
        "--peer-timeout",
        type=_positive,
        metavar="SECONDS",
        help="a peer that stops reading, answering or sending this long is given up "
        f"(default {Timeouts().peer_ack:g} s for receivers, "
        f"{Timeouts().peer_idle:g} s for senders)",
    )
    user.add_argument(
        "--heartbeat",
        type=_positive,
        default=Timeouts().heartbeat_interval,
        metavar="SECONDS",
        help="interval between heartbeats to the server",
    )
    return parser


#: The relay's limits that have an option: flag, RelayLimits field, the field's value for
#: 1 given (MiB for bytes), what it limits.
_RELAY_LIMITS = (
    ("--max-sessions", "max_sessions", 1, "joined pairs at once"),
    ("--max-sessions-per-ip", "max_sessions_per_ip", 1, "joined connections from one IP"),
    ("--max-waiting", "max_waiting", 1, "halves waiting for their other half at once"),
    ("--max-waiting-per-ip", "max_waiting_per_ip", 1, "halves waiting, from one IP"),
    ("--session-rate", "session_rate", MiB, "MiB/s through one pair, both ways"),
    ("--session-burst", "session_burst", MiB, "MiB one pair may save up"),
    ("--ip-rate", "ip_rate", MiB, "MiB/s sent by one IP"),
    ("--ip-burst", "ip_burst", MiB, "MiB one IP may save up"),
    ("--wait-timeout", "wait_timeout", 1, "seconds a half waits for its other half"),
    ("--idle-timeout", "idle_timeout", 1, "seconds a pair may move no byte"),
)


def _relay_parser(commands: argparse._SubParsersAction[_Parser]) -> None:
    relay = commands.add_parser(
        "relay", help="run a relay, for modules that cannot reach each other directly"
    )
    relay.add_argument("--host", default="127.0.0.1", help="address to listen on")
    relay.add_argument(
        "--port", type=int, default=5560, help="port (0 picks a free one; default %(default)s)"
    )
    relay.add_argument(
        "--secret",
        type=Path,
        default=DEFAULT_SECRET,
        metavar="FILE",
        help="the secret shared with the directory server, created if missing "
        "(default %(default)s, the server's default too)",
    )
    relay.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on http://METRICS_HOST:PORT/metrics (0: a free port)",
    )
    relay.add_argument("--metrics-host", default="127.0.0.1", help="address of the metrics")
    limits = RelayLimits()
    for flag, name, unit, help_text in _RELAY_LIMITS:
        default = getattr(limits, name)
        relay.add_argument(
            flag,
            type=_count if isinstance(default, int) else _positive,
            default=default / unit if unit != 1 else default,
            dest=f"relay_{name}",
            metavar="MiB" if unit == MiB else "SECONDS" if "timeout" in name else "N",
            help=f"{help_text} (default %(default)g)",
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "server":
            if args.server_command == "release":
                if args.release_redis:
                    return uvloop.run(_release_redis(args))
                return _release(args)
            return uvloop.run(_run_server(args))
        if args.command == "relay":
            return uvloop.run(_run_relay(args))
        if args.command == "loadgen":
            return main_loadgen(
                args.servers,
                args.users,
                args.lookups,
                args.concurrency,
                as_json=args.json,
                workers=args.workers,
                server_fingerprint=args.server_key,
                seed=args.seed,
                hold=args.hold,
                first=args.first,
                population=args.population,
            )
        return uvloop.run(_run_user(args))
    except WhatsAp2pError as exc:
        print(f"whatsap2p: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"whatsap2p: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_OK


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


def _release(args: argparse.Namespace) -> int:
    phone = normalise_phone(args.phone, args.region)
    if not args.release_db.exists():
        raise StoreError(f"no bindings database at {args.release_db}")
    bindings = Bindings(args.release_db)
    try:
        released = bindings.release(phone)
    finally:
        bindings.close()
    print(f"released {phone}" if released else f"{phone} was not bound to any key")
    return EXIT_OK


async def _release_redis(args: argparse.Namespace) -> int:
    from whatsap2p.server.redis_store import RedisDirectory
    from whatsap2p.server.redis_urls import shown

    phone = normalise_phone(args.phone, args.region)
    directory = RedisDirectory(args.release_redis, password=_redis_password(args))
    try:
        released = await directory.release(phone)
    except Exception as exc:  # redis-py's errors: one line, not a traceback
        raise StoreError(f"cannot use Redis at {shown(args.release_redis)}: {exc}") from exc
    finally:
        await directory.close()
    print(f"released {phone}" if released else f"{phone} was not bound to any key")
    return EXIT_OK


#: Where a Redis password may come from instead of the URL (or --redis-password-file).
REDIS_PASSWORD_ENV = "WHATSAP2P_REDIS_PASSWORD"  # noqa: S105 (a variable's name)


def _redis_password(args: argparse.Namespace) -> str | None:
    """The Redis password from --redis-password-file (its first line) or the
    environment; None when neither gives one."""
    path: Path | None = args.redis_password_file
    if path is None:
        return os.environ.get(REDIS_PASSWORD_ENV) or None
    try:
        lines = path.expanduser().read_text().splitlines()
    except OSError as exc:
        raise StoreError(f"cannot read the Redis password file {path}: {exc.strerror}") from exc
    return lines[0] if lines and lines[0] else None


def _server_key(args: argparse.Namespace, db_path: Path) -> StaticKey:
    """The server's key: made when missing, but never for a server of a shared directory
    unless asked (`--new-key`): another key there is another fingerprint, which every
    user who pinned the directory's refuses."""
    key_path: Path = (args.key or db_path.with_name(db_path.name + ".key")).expanduser()
    if args.redis and not args.new_key and not key_path.exists():
        raise InvalidInput(
            f"no server key file at {key_path}: every server of a shared directory (--redis)"
            " needs the same key; copy it from another server, or give --new-key to make the"
            " directory's first one"
        )
    return load_or_create_key(key_path)


async def _run_server(args: argparse.Namespace) -> int:
    timeouts = replace(
        Timeouts(), server_idle=args.idle_timeout, register_deadline=args.register_timeout
    )
    rates = RateLimits(
        **{f.name: getattr(args, f.name) for f in fields(RateLimits)},
    )
    rates = replace(rates, max_unauthenticated_per_ip=int(rates.max_unauthenticated_per_ip))
    db_path: Path = args.db.expanduser()
    key = _server_key(args, db_path)
    relays = tuple(args.relay)
    if len(relays) > MAX_RELAYS:
        raise InvalidInput(f"at most {MAX_RELAYS} relays (--relay), not {len(relays)}")
    tickets = None
    if relays:
        secret = load_or_create_secret(args.relay_secret or DEFAULT_SECRET)

        def tickets(phone_a: str, phone_b: str) -> bytes:
            return mint(secret, phone_a, phone_b, time.time())

    config = ServerConfig(
        key, args.host, args.port, timeouts=timeouts, rates=rates, relays=relays, tickets=tickets
    )
    bindings: Bindings | None = None
    if args.redis:
        from whatsap2p.server.redis_store import RedisDirectory

        store = RedisDirectory(args.redis, args.presence_ttl, password=_redis_password(args))
        server = DirectoryServer(config, None, store)
        store.on_event = server.store_event
    else:
        bindings = Bindings(db_path)
        server = DirectoryServer(config, bindings)
    stop = _stop_on_signals()
    try:  # whatever happens, the server (and its store) is closed
        try:
            host, port = await server.start()
        except OSError as exc:
            print(
                f"whatsap2p: cannot listen on {host_port(args.host, args.port)}: "
                f"{exc.strerror or exc}",
                file=sys.stderr,
            )
            return EXIT_ERROR
        if args.metrics_port is not None:
            _serve_metrics(server.metrics, args.metrics_host, args.metrics_port)
        print(f"fingerprint {key.fingerprint}", flush=True)
        print(f"listening on {host_port(host, port)}", flush=True)
        log.warning(  # (the operator's log: which key, so which fingerprint, it serves with)
            "listening on %s with key fingerprint %s", host_port(host, port), key.fingerprint
        )
        await stop.wait()
    finally:
        await server.close()
        if bindings is not None:
            bindings.close()
    return EXIT_OK


def _serve_metrics(metrics: Exported, host: str, port: int) -> None:
    """Export `metrics` on http://host:port/metrics and say where (on stderr)."""
    try:
        bound = metrics.serve(host, port)
    except OSError as exc:
        where = host_port(host, port)
        raise CannotListen(f"cannot serve metrics on {where}: {exc.strerror}") from exc
    print(f"metrics on http://{host_port(host, bound)}/metrics", file=sys.stderr, flush=True)


def _relay_limits(args: argparse.Namespace) -> RelayLimits:
    limits = RelayLimits()
    given = {name: getattr(args, f"relay_{name}") * unit for _, name, unit, _ in _RELAY_LIMITS}
    return replace(limits, **{name: type(getattr(limits, name))(v) for name, v in given.items()})


async def _run_relay(args: argparse.Namespace) -> int:
    secret = load_or_create_secret(args.secret.expanduser())
    relay = RelayServer(RelayConfig(secret, args.host, args.port, _relay_limits(args)))
    stop = _stop_on_signals()
    try:
        try:
            host, port = await relay.start()
        except OSError as exc:
            where = host_port(args.host, args.port)
            raise CannotListen(f"cannot listen on {where}: {exc.strerror or exc}") from exc
        if args.metrics_port is not None:
            _serve_metrics(relay.metrics, args.metrics_host, args.metrics_port)
        print(f"listening on {host_port(host, port)}", flush=True)
        await stop.wait()
    finally:
        await relay.close()
    return EXIT_OK


def _user_config(args: argparse.Namespace) -> SessionConfig:
    phone = normalise_phone(args.phone, args.region)
    data_dir: Path = args.data_dir or platformdirs.user_data_path("whatsap2p") / phone
    limits = replace(Limits(), max_photo_bytes=int(args.max_photo_mb * MiB))
    return SessionConfig(
        phone=phone,
        server_host=args.server[0][0],
        server_port=args.server[0][1],
        more_servers=tuple(args.server[1:]),
        data_dir=data_dir.expanduser().absolute(),
        listen_host=args.listen[0],
        listen_port=args.listen[1],
        advertise=args.advertise,
        region=args.region,
        server_fingerprint=args.server_key,
        limits=limits,
        timeouts=_timeouts(args),
    )


def _timeouts(args: argparse.Namespace) -> Timeouts:
    timeouts = replace(Timeouts(), heartbeat_interval=args.heartbeat)
    if args.peer_timeout is not None:
        peer = args.peer_timeout
        timeouts = replace(timeouts, write_drain=peer, peer_ack=peer, peer_idle=peer)
    return timeouts


async def _run_tui(session: Session, stop: asyncio.Event) -> None:
    """The Textual UI until the person quits or a signal comes. Log lines would tear the
    screen: while it runs they go to `tui.log` in the data dir."""
    from whatsap2p.ui.tui import ChatApp
    from whatsap2p.ui.tui.graphics import terminal_graphics

    root = logging.getLogger()
    handlers = root.handlers[:]
    log_file = logging.FileHandler(session.config.data_dir / "tui.log", encoding="utf-8")
    log_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers[:] = [log_file]
    app = ChatApp(session, graphics=terminal_graphics())
    try:
        running = asyncio.ensure_future(app.run_async())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not running.done():
            app.exit()
        await running
    finally:
        root.handlers[:] = handlers
        log_file.close()


async def _run_user(args: argparse.Namespace) -> int:
    config = _user_config(args)
    stop = _stop_on_signals()
    session = Session(config)
    await session.start()
    try:
        if args.json:
            from whatsap2p.ui.jsonrpc import JsonRpc

            await JsonRpc(session).run(stop)
        elif args.plain or not (sys.stdin.isatty() and sys.stdout.isatty()):
            from whatsap2p.ui.lines import LineMode

            await LineMode(session).run(stop)
        else:
            await _run_tui(session, stop)
    finally:
        await session.close()
    return EXIT_OK
