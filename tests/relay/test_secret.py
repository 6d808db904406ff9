"""The relay secret file: created once, private, shared, and never replaced."""

from __future__ import annotations

import base64
import stat
import threading
from pathlib import Path

import pytest

from whatsap2p.errors import StoreError
from whatsap2p.relay.secret import DEFAULT_SECRET, load_or_create_secret


def test_it_is_created_private_once_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "relay.secret"
    secret = load_or_create_secret(path)
    assert len(secret) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().splitlines()[0] == "whatsap2p-relay-secret 1"
    assert load_or_create_secret(path) == secret
    assert [p.name for p in path.parent.iterdir()] == ["relay.secret"]  # nothing left over


def test_a_copied_file_gives_the_same_secret(tmp_path: Path) -> None:
    """What an operator does for a relay on another machine."""
    original = load_or_create_secret(tmp_path / "a")
    (tmp_path / "b").write_bytes((tmp_path / "a").read_bytes())
    assert load_or_create_secret(tmp_path / "b") == original


def test_processes_starting_together_share_one_secret(tmp_path: Path) -> None:
    """The relay and the server started at once on a fresh machine: one of them creates
    the file, the other reads that one (never a half-written file, never its own)."""
    path = tmp_path / "relay.secret"
    results: list[bytes | Exception] = []
    start = threading.Barrier(8)

    def load() -> None:
        start.wait()
        try:
            results.append(load_or_create_secret(path))
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1, results  # (an exception would differ from the bytes)
    assert results[0] == load_or_create_secret(path)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not a secret\n",
        "whatsap2p-relay-secret 1\n",
        "whatsap2p-relay-secret 1\n!!!notbase64!!!\n",
        f"whatsap2p-relay-secret 1\n{base64.b64encode(bytes(31)).decode()}\n",  # short
        f"whatsap2p-relay-secret 2\n{base64.b64encode(bytes(32)).decode()}\n",
        f"whatsap2p-key 1\n{base64.b64encode(bytes(32)).decode()}\n",  # a module's key file
    ],
)
def test_a_corrupt_or_short_file_is_refused_and_left_alone(tmp_path: Path, text: str) -> None:
    path = tmp_path / "relay.secret"
    path.write_text(text)
    with pytest.raises(StoreError, match="is corrupt") as refused:
        load_or_create_secret(path)
    assert str(path) in str(refused.value)
    assert path.read_text() == text


def test_an_unreadable_place_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match=r"cannot read relay secret file .*Not a directory"):
        load_or_create_secret(blocker / "relay.secret")  # its directory is a file
    with pytest.raises(StoreError, match="cannot read relay secret file"):
        load_or_create_secret(tmp_path)  # a directory


def test_the_default_is_in_the_user_data_dir() -> None:
    assert DEFAULT_SECRET.name == "relay.secret"
    assert DEFAULT_SECRET.parent.name == "whatsap2p"
