"""Contacts and groups, kept in `contacts.json` in the data dir.

The file is meant to be read (and, carefully, edited) by people:

    {"version": 1,
     "contacts": {"alice": "+5511999990001"},
     "groups": {"family": ["+5511999990001", "+5511999990002"]}}

It is loaded at start, rewritten atomically after every change, and a file that does not
parse is reported and never overwritten.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from whatsap2p.app.storage import read_if_present, write_atomically
from whatsap2p.errors import (
    CorruptContactsFile,
    InvalidInput,
    NameConflict,
    StoreError,
    UnknownTarget,
)
from whatsap2p.phone import DEFAULT_REGION, looks_like_phone, normalise_phone

__all__ = ["FILE_NAME", "AddressBook", "Contact", "Group", "Recipients"]

FILE_NAME = "contacts.json"
FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Contact:
    name: str
    phone: str


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Recipients:
    """Who a send goes to: the phones, and the group name when it went to a group."""

    phones: tuple[str, ...]
    group: str | None


class AddressBook:
    """The user's contacts and groups; every change is saved before it returns."""

    def __init__(self, path: Path, region: str = DEFAULT_REGION, max_name_chars: int = 128) -> None:
        self.path = path
        self.region = region
        self._max_name = max_name_chars
        self._contacts: dict[str, str] = {}
        self._groups: dict[str, list[str]] = {}
        #: The numbers in the contacts and groups (made when asked, dropped on a change).
        self._known: frozenset[str] | None = None

    @classmethod
    def load(
        cls, path: Path, region: str = DEFAULT_REGION, max_name_chars: int = 128
    ) -> AddressBook:
        book = cls(path, region, max_name_chars)
        raw = read_if_present(path)
        if raw is None:
            return book
        try:
            book._parse(json.loads(raw.decode("utf-8")))
        except RecursionError as exc:  # (json nests as deep as the file says)
            raise CorruptContactsFile(
                f"contacts file {path} is corrupt (nested too deeply); fix or move it, it was"
                " not changed"
            ) from exc
        except (UnicodeDecodeError, json.JSONDecodeError, ValueError, InvalidInput) as exc:
            raise CorruptContactsFile(
                f"contacts file {path} is corrupt ({exc}); fix or move it, it was not changed"
            ) from exc
        return book

    def _parse(self, data: object) -> None:
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            raise ValueError(f'expected an object with "version": {FORMAT_VERSION}')
        contacts, groups = data.get("contacts", {}), data.get("groups", {})
        if not isinstance(contacts, dict) or not isinstance(groups, dict):
            raise ValueError('"contacts" and "groups" must be objects')
        for name, phone in contacts.items():
            if not isinstance(phone, str):
                raise ValueError(f"contact {name!r}: the phone must be a string")
            checked = self._check_name(name)
            if checked in self._contacts:  # e.g. "mom" and " mom", once normalised
                raise ValueError(f"the contact name {checked!r} appears twice")
            self._contacts[checked] = normalise_phone(phone, self.region)
        for name, members in groups.items():
            if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
                raise ValueError(f"group {name!r}: members must be a list of phone numbers")
            checked = self._check_name(name)
            if checked in self._contacts:
                raise ValueError(f"{checked!r} is both a contact and a group")
            if checked in self._groups:
                raise ValueError(f"the group name {checked!r} appears twice")
            phones = [normalise_phone(m, self.region) for m in members]
            self._groups[checked] = list(dict.fromkeys(phones))

    def _save(self) -> None:
        self._known = None  # (every change is saved: what `knows` answers changes with it)
        data = {"version": FORMAT_VERSION, "contacts": self._contacts, "groups": self._groups}
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        try:
            write_atomically(self.path, text.encode("utf-8"))
        except OSError as exc:
            raise StoreError(f"cannot save contacts file {self.path}: {exc.strerror}") from exc

    def _check_name(self, name: str) -> str:
        if not isinstance(name, str):
            raise InvalidInput("a name must be a string")
        name = unicodedata.normalize("NFC", name.strip())
        if not name or len(name) > self._max_name:
            raise InvalidInput(f"a name must be 1 to {self._max_name} characters")
        if any(unicodedata.category(c)[0] == "C" for c in name):
            raise InvalidInput("a name may not contain control or format characters")
        if looks_like_phone(name):
            raise InvalidInput(f"{name!r} looks like a phone number; choose a name")
        return name

    # --- contacts ---------------------------------------------------------------------

    def contacts(self) -> list[Contact]:
        return [Contact(name, phone) for name, phone in sorted(self._contacts.items())]

    def add_contact(self, name: str, phone: str) -> Contact:
        name = self._check_name(name)
        if name in self._groups:
            raise NameConflict(f"{name!r} is already a group")
        if isinstance(phone, str) and phone.strip() in self._contacts:
            known = phone.strip()
            raise InvalidInput(
                f"{known!r} is the name of a contact, not a phone number: give {name!r} a "
                f"number ({known!r} has {self._contacts[known]})"
            )
        phone = normalise_phone(phone, self.region)
        self._contacts[name] = phone
        self._save()
        return Contact(name, phone)

    def remove_contact(self, name: str) -> None:
        if name not in self._contacts:
            raise UnknownTarget(f"no contact named {name!r}")
        del self._contacts[name]
        self._save()

    def knows(self, phone: str) -> bool:
        """Whether `phone` is a contact or in one of the groups (not a stranger)."""
        if self._known is None:
            self._known = frozenset(self._contacts.values()).union(*self._groups.values())
        return phone in self._known

    def name_of(self, phone: str) -> str | None:
        """The contact name for `phone` (the first alphabetically if several)."""
        names = sorted(name for name, p in self._contacts.items() if p == phone)
        return names[0] if names else None

    # --- groups -------------------------------------------------------------------------

    def groups(self) -> list[Group]:
        return [Group(name, tuple(m)) for name, m in sorted(self._groups.items())]

    def create_group(self, name: str, members: list[str]) -> Group:
        name = self._check_name(name)
        if name in self._contacts:
            raise NameConflict(f"{name!r} is already a contact")
        if name in self._groups:
            raise NameConflict(f"group {name!r} already exists")
        phones = [self.member_phone(m) for m in members]
        self._groups[name] = list(dict.fromkeys(phones))
        self._save()
        return self.group(name)

    def add_to_group(self, name: str, member: str) -> Group:
        phones = self._group_members(name)
        phone = self.member_phone(member)
        if phone not in phones:
            phones.append(phone)
            self._save()
        return self.group(name)

    def remove_from_group(self, name: str, member: str) -> Group:
        phones = self._group_members(name)
        phone = self.member_phone(member)
        if phone not in phones:
            raise UnknownTarget(f"{member!r} is not a member of group {name!r}")
        phones.remove(phone)
        self._save()
        return self.group(name)

    def group(self, name: str) -> Group:
        return Group(name, tuple(self._group_members(name)))

    def _group_members(self, name: str) -> list[str]:
        if name not in self._groups:
            raise UnknownTarget(f"no group named {name!r}")
        return self._groups[name]

    # --- resolving what a user typed -----------------------------------------------------

    def member_phone(self, member: str) -> str:
        """A contact name or a phone number, as E.164."""
        if not isinstance(member, str):
            raise InvalidInput("a member must be a contact name or a phone number")
        if member in self._contacts:
            return self._contacts[member]
        if looks_like_phone(member):
            return normalise_phone(member, self.region)
        raise UnknownTarget(f"no contact named {member!r}")

    def resolve(self, target: str) -> Recipients:
        """A contact name, a group name or a phone number -> the phones it means."""
        if not isinstance(target, str):
            raise InvalidInput("the target must be a contact, a group or a phone number")
        if target in self._contacts:
            return Recipients((self._contacts[target],), None)
        if target in self._groups:
            return Recipients(tuple(self._groups[target]), target)
        if looks_like_phone(target):
            return Recipients((normalise_phone(target, self.region),), None)
        raise UnknownTarget(f"no contact or group named {target!r}")
