"""Shared fixtures: real image files made with Pillow; every async test on uvloop."""

from __future__ import annotations

import asyncio
import gc
import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvloop
from PIL import Image


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (64, 48), marker: bytes = b"") -> bytes:
    """A real image; `marker` is appended after the image data, where decoders ignore it."""
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(out, fmt)
    return out.getvalue() + marker


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "holiday.png"
    path.write_bytes(image_bytes())
    return path


_ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Where `make` compiled the hot path into src/ (setup.py), Python imports the compiled
    modules before the sources beside them: refuse to test sources changed since."""
    src = _ROOT / "src"
    if not any(src.rglob("*.so")):
        return  # the package as written
    built = _ROOT / ".venv" / ".compiled"
    newest = max(path.stat().st_mtime for path in src.rglob("*.py"))
    if not built.exists() or built.stat().st_mtime < newest:
        pytest.exit("src/ changed since its modules were compiled: run `make test`", returncode=2)


def pytest_report_header() -> str:
    """Which build of the package the tests run: compiled modules, or its Python source."""
    import whatsap2p.protocol.framing

    where = Path(whatsap2p.__file__).parent
    compiled = sorted(str(path.relative_to(where)).split(".")[0] for path in where.rglob("*.so"))
    built = f"compiled by mypyc: {', '.join(compiled)}" if compiled else "pure Python"
    pure = not whatsap2p.protocol.framing.__file__.endswith(".so")
    assert pure == (not compiled), "compiled modules exist but are not the ones imported"
    return f"whatsap2p from {where} ({built})"


#: What event loops reported to their exception handler during the current test: a task
#: or future whose exception nobody retrieved, a callback that raised. Each is a bug.
LOOP_ERRORS: list[dict[str, object]] = []


def record_loop_errors(loop: asyncio.AbstractEventLoop) -> asyncio.AbstractEventLoop:
    """`loop`, reporting what it would only log to LOOP_ERRORS (the test then fails)."""

    def record(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        LOOP_ERRORS.append(context)
        loop.default_exception_handler(context)

    loop.set_exception_handler(record)
    return loop


def _new_loop() -> asyncio.AbstractEventLoop:
    return record_loop_errors(uvloop.new_event_loop())


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The loop the product runs on (`whatsap2p` starts uvloop), so tests see what it does;
    one that reports what it would only log (see `_no_loop_errors`)."""
    return {"uvloop": _new_loop}


@pytest.fixture(autouse=True)
def _no_loop_errors() -> Iterator[None]:
    """Fail a test after which an event loop reported an error it would otherwise only
    log: a task exception never retrieved, a callback that raised."""
    LOOP_ERRORS.clear()
    yield
    gc.collect()  # what is unreachable now reports an exception nobody retrieved
    errors, LOOP_ERRORS[:] = list(LOOP_ERRORS), []
    if errors:
        described = "; ".join(
            f"{context.get('message')}: {context.get('exception')!r}" for context in errors
        )
        pytest.fail(f"the event loop reported {len(errors)} error(s): {described}")


@pytest.fixture(scope="session")
def redis_base() -> Iterator[str]:
    from tests.redis_server import redis_server

    with redis_server() as url:
        yield url


@pytest.fixture
def redis_url(redis_base: str) -> str:
    """A Redis with nothing in it, for this test."""
    import redis

    client = redis.Redis.from_url(redis_base)
    client.flushall()
    client.close()
    return redis_base
