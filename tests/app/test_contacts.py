from __future__ import annotations

import json
from pathlib import Path

import pytest

from whatsap2p.app.contacts import AddressBook, Recipients
from whatsap2p.errors import (
    CorruptContactsFile,
    InvalidInput,
    InvalidPhoneNumber,
    NameConflict,
    UnknownTarget,
)

ALICE, BOB, ME = "+5511999990001", "+5511999990002", "+5511999990009"


def test_contacts_and_groups_survive_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "contacts.json"
    book = AddressBook.load(path, me=ME)
    assert book.add_contact("alice", "(11) 99999-0001").phone == ALICE
    book.add_contact("bob", BOB)
    family = book.create_group("family", ["alice", "+55 11 99999-0002", "alice", ME])
    assert (family.members, family.creator, family.epoch) == ((ME, ALICE, BOB), ME, 1)
    again = AddressBook.load(path, me=ME)
    assert [(c.name, c.phone) for c in again.contacts()] == [("alice", ALICE), ("bob", BOB)]
    assert again.group("family") == family == again.group(family.id)
    assert json.loads(path.read_text())["groups"] == [  # human-readable
        {
            "id": family.id,
            "name": "family",
            "creator": ME,
            "members": [ME, ALICE, BOB],
            "epoch": 1,
            "salt": family.salt.hex(),  # (the id is made of the creator's number and it)
        }
    ]
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_version_1_file_is_migrated_with_its_groups_given_ids(tmp_path: Path) -> None:
    path = tmp_path / "contacts.json"
    path.write_text(
        json.dumps({"version": 1, "contacts": {"bob": BOB}, "groups": {"trip": [BOB, ALICE]}})
    )
    book = AddressBook.load(path, me=ME)
    (trip,) = book.groups()
    assert (trip.name, trip.creator, trip.members, trip.private) == (
        "trip",
        ME,
        (ME, BOB, ALICE),
        False,
    )
    assert book.migrated == [trip]
    assert json.loads(path.read_text())["version"] == 1  # (until its history is adopted)
    book.finish_migration()
    assert json.loads(path.read_text())["version"] == 2  # written back, once
    again = AddressBook.load(path, me=ME)
    assert again.groups() == [trip]
    assert again.migrated == []


def test_resolve_contact_group_and_number(tmp_path: Path) -> None:
    book = AddressBook.load(tmp_path / "c.json", me=ME)
    book.add_contact("alice", ALICE)
    pals = book.create_group("pals", ["alice", BOB])
    assert book.resolve("alice") == Recipients((ALICE,), None)
    assert book.resolve("pals") == Recipients((ALICE, BOB), pals) == book.resolve(pals.id)
    assert book.resolve("+1 650 253 0000") == Recipients(("+16502530000",), None)
    with pytest.raises(UnknownTarget):
        book.resolve("nobody")
    with pytest.raises(InvalidPhoneNumber):
        book.resolve("123")


def test_names_are_checked(tmp_path: Path) -> None:
    book = AddressBook.load(tmp_path / "c.json", me=ME)
    book.add_contact("alice", ALICE)
    with pytest.raises(NameConflict):
        book.create_group("alice", [BOB])
    book.create_group("pals", [BOB])
    with pytest.raises(NameConflict):
        book.add_contact("pals", BOB)
    for bad in ["", "x" * 129, "evil\x1b[2J", "a\u202eb", "+5511"]:
        with pytest.raises(InvalidInput):
            book.add_contact(bad, BOB)


def test_group_membership_changes(tmp_path: Path) -> None:
    book = AddressBook.load(tmp_path / "c.json", me=ME)
    book.add_contact("alice", ALICE)
    book.create_group("pals", ["alice"])
    added = book.add_to_group("pals", BOB)
    assert (added.members, added.epoch) == ((ME, ALICE, BOB), 2)  # each change: a version
    removed = book.remove_from_group("pals", "alice")
    assert (removed.members, removed.epoch) == ((ME, BOB), 3)
    with pytest.raises(UnknownTarget):
        book.remove_from_group("pals", "alice")
    with pytest.raises(UnknownTarget):
        book.add_to_group("nope", BOB)
    book.remove_contact("alice")
    with pytest.raises(UnknownTarget):
        book.remove_contact("alice")


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'{"version": 1, "contacts": {"alice": "not a phone"}}',
        b'{"version": 1, "contacts": {"alice": 5}}',
        b'{"version": 1, "groups": {"g": "+5511999990001"}}',
        b'{"version": 3}',
        b'{"version": 2, "groups": {"g": ["+5511999990001"]}}',
        b'{"version": 2, "groups": [{"id": "nothex", "name": "g", "members": []}]}',
        b'{"version": 2, "groups": [{"id": "' + b"a" * 32 + b'", "name": 5, "members": []}]}',
    ],
)
def test_a_corrupt_file_is_reported_and_never_overwritten(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "contacts.json"
    path.write_bytes(content)
    with pytest.raises(CorruptContactsFile, match="was not changed"):
        AddressBook.load(path)
    assert path.read_bytes() == content


def test_a_deeply_nested_file_gets_the_clean_message(tmp_path: Path) -> None:
    path = tmp_path / "contacts.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CorruptContactsFile, match=r"nested too deeply.*was not changed"):
        AddressBook.load(path)
    assert path.read_text().startswith("[[[")  # untouched


def test_a_name_written_twice_in_the_file_is_refused_not_lost(tmp_path: Path) -> None:
    path = tmp_path / "contacts.json"
    path.write_text(json.dumps({"version": 1, "contacts": {"mom": ALICE, " mom": BOB}}))
    with pytest.raises(CorruptContactsFile, match="'mom' appears twice"):
        AddressBook.load(path)


def test_a_contact_name_given_as_a_number_says_so(tmp_path: Path) -> None:
    book = AddressBook.load(tmp_path / "contacts.json")
    book.add_contact("mom", ALICE)
    with pytest.raises(InvalidInput, match=r"'mom' is the name of a contact.*\+5511999990001"):
        book.add_contact("mama", "mom")
