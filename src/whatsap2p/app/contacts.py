"""Contacts and groups, kept in `contacts.json` in the data dir.

The file is meant to be read (and, carefully, edited) by people:

    {"version": 2,
     "contacts": {"alice": "+5511999990001"},
     "groups": [{"id": "3f0c...", "name": "family", "creator": "+5511999990009",
                 "members": ["+5511999990009", "+5511999990001"], "epoch": 1}]}

A group is kept by its id (app/groups.py: its rules); its name is a label, which two
groups may share (a send by that name is then refused as ambiguous, with the ids to
choose from). A file of version 1 (groups as name -> numbers) is read, its groups made
groups of ours with new ids (`migrated`), and written back as version 2.

It is loaded at start, rewritten atomically after every change, and a file that does not
parse is reported and never overwritten.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whatsap2p.app import groups as rules
from whatsap2p.app.groups import Group
from whatsap2p.app.storage import read_if_present, write_atomically
from whatsap2p.errors import (
    AmbiguousTarget,
    CorruptContactsFile,
    InvalidInput,
    MessageRefused,
    NameConflict,
    StoreError,
    UnknownTarget,
)
from whatsap2p.phone import DEFAULT_REGION, looks_like_phone, normalise_phone
from whatsap2p.protocol import events as ev

__all__ = ["FILE_NAME", "AddressBook", "Contact", "Group", "Recipients"]

FILE_NAME = "contacts.json"
FORMAT_VERSION = 2
_GROUP_ID = re.compile(r"[0-9a-f]{32}")
_ID_START = re.compile(r"[0-9a-f]{6,31}")


@dataclass(frozen=True, slots=True)
class Contact:
    name: str
    phone: str


@dataclass(frozen=True, slots=True)
class Recipients:
    """Who a send goes to: the phones, and the group when it went to a group."""

    phones: tuple[str, ...]
    group: Group | None


class AddressBook:
    """The user's contacts and groups; every change is saved before it returns. `me`:
    the user's own number (the creator of the groups it makes)."""

    def __init__(
        self,
        path: Path,
        region: str = DEFAULT_REGION,
        max_name_chars: int = 128,
        me: str | None = None,
        max_groups: int = 1000,
        max_members: int = 256,
    ) -> None:
        self.path = path
        self.region = region
        self.me = me
        self._max_name = max_name_chars
        self._max_groups = max_groups
        self._max_members = max_members
        self._contacts: dict[str, str] = {}
        self._groups: dict[str, Group] = {}
        #: Groups of a version 1 file, given ids at this load (their history is theirs).
        self.migrated: list[Group] = []
        #: The numbers in the contacts and groups (made when asked, dropped on a change).
        self._known: frozenset[str] | None = None
        #: How many groups have each name (made when asked, dropped on a change).
        self._names: Counter[str] | None = None

    @classmethod
    def load(cls, path: Path, region: str = DEFAULT_REGION, **options: Any) -> AddressBook:
        """The book in `path` (`options`: the constructor's), or an empty one."""
        book = cls(path, region, **options)
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
        except (
            UnicodeDecodeError,
            json.JSONDecodeError,
            ValueError,
            TypeError,
            InvalidInput,
        ) as exc:
            raise CorruptContactsFile(
                f"contacts file {path} is corrupt ({exc}); fix or move it, it was not changed"
            ) from exc
        return book

    def finish_migration(self) -> None:
        """Write a version 1 file back as version 2, once the groups it gave ids to
        have their history (`migrated`): a start that fails before that migrates again."""
        if self.migrated:
            self._save()
            self.migrated = []

    def _parse(self, data: object) -> None:
        if not isinstance(data, dict) or data.get("version") not in (1, FORMAT_VERSION):
            raise ValueError(f'expected an object with "version": {FORMAT_VERSION}')
        contacts = data.get("contacts", {})
        groups = data.get("groups", {} if data["version"] == 1 else [])
        if not isinstance(contacts, dict):
            raise ValueError('"contacts" must be an object')
        for name, phone in contacts.items():
            if not isinstance(phone, str):
                raise ValueError(f"contact {name!r}: the phone must be a string")
            checked = self._check_name(name)
            if checked in self._contacts:  # e.g. "mom" and " mom", once normalised
                raise ValueError(f"the contact name {checked!r} appears twice")
            self._contacts[checked] = normalise_phone(phone, self.region)
        if data["version"] == 1:
            self._migrate(groups)
            return
        if not isinstance(groups, list):
            raise ValueError('"groups" must be a list')
        for item in groups:
            group = self._parse_group(item)
            if group.id in self._groups:
                raise ValueError(f"the group id {group.id} appears twice")
            self._groups[group.id] = group

    def _migrate(self, groups: object) -> None:
        """A version 1 file's groups (name -> numbers): groups of ours, with new ids."""
        if not isinstance(groups, dict):
            raise ValueError('"groups" must be an object')
        for name, members in groups.items():
            if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
                raise ValueError(f"group {name!r}: members must be a list of phone numbers")
            checked = self._check_name(name)
            if checked in self._contacts:
                raise ValueError(f"{checked!r} is both a contact and a group")
            if any(g.name == checked for g in self._groups.values()):
                raise ValueError(f"the group name {checked!r} appears twice")
            phones = [normalise_phone(m, self.region) for m in members]
            # (no number of ours to make it with: a private list)
            group = rules.created(checked, self.me or "", phones, private=self.me is None)
            self._groups[group.id] = group
            self.migrated.append(group)

    def _parse_group(self, item: object) -> Group:
        if not isinstance(item, dict):
            raise ValueError("each group must be an object")
        group_id, members = item.get("id"), item.get("members")
        if not isinstance(group_id, str) or not _GROUP_ID.fullmatch(group_id):
            raise ValueError(f"group id {group_id!r}: 32 hexadecimal digits expected")
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise ValueError(f"group {group_id}: members must be a list of phone numbers")
        epoch = item.get("epoch", 1)
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"group {group_id}: the epoch must be a whole number")
        private, quit, salt = item.get("private", False), item.get("quit", False), b""
        creator = item.get("creator", self.me or "")
        if not isinstance(creator, str) or not isinstance(private, bool):
            raise ValueError(f"group {group_id}: a creator number, private true or false")
        if not isinstance(quit, bool):
            raise ValueError(f"group {group_id}: quit must be true or false")
        if not private:
            creator = normalise_phone(creator, self.region)
            salt = bytes.fromhex(str(item.get("salt", "")))
            if rules.group_id(creator, salt) != group_id:
                raise ValueError(f"group {group_id}: not the id of its creator and salt")
        return Group(
            group_id,
            self._label(item.get("name")),
            creator,
            tuple(dict.fromkeys(normalise_phone(m, self.region) for m in members)),
            epoch,
            private,
            salt,
            quit,
        )

    def _save(self) -> None:
        # (every change is saved: what `knows` and `named_alike` answer change with it)
        self._known, self._names = None, None
        data = {
            "version": FORMAT_VERSION,
            "contacts": self._contacts,
            "groups": [group.to_json() for group in self._groups.values()],
        }
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

    def _label(self, name: object) -> str:
        """A group name as a peer or the file gives it, made safe to show and to type:
        without control or format characters, never empty, never taken for a number."""
        if not isinstance(name, str):
            raise ValueError("a group name must be a string")
        kept = "".join(c for c in name if unicodedata.category(c)[0] != "C")
        kept = unicodedata.normalize("NFC", kept.strip())[: self._max_name]
        if not kept or looks_like_phone(kept) or _GROUP_ID.fullmatch(kept):
            kept = f"group {kept}"[: self._max_name].strip()
        return kept

    # --- contacts ---------------------------------------------------------------------

    def contacts(self) -> list[Contact]:
        return [Contact(name, phone) for name, phone in sorted(self._contacts.items())]

    def add_contact(self, name: str, phone: str) -> Contact:
        name = self._check_name(name)
        if self._ours_named(name):
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
        """Whether `phone` is a contact or in a group we or a contact made (not a
        stranger: anyone may add us to a group, which vouches for nobody)."""
        if self._known is None:
            contacts = frozenset(self._contacts.values())
            vouched = [g.members for g in self._groups.values() if self._vouches(g, contacts)]
            self._known = contacts.union(*vouched)
        return phone in self._known

    def _vouches(self, group: Group, contacts: frozenset[str]) -> bool:
        """Whether `group` makes its members known: ours, or a contact's, that we are in."""
        mine = group.creator == self.me
        return mine or (group.creator in contacts and self.me in group.members)

    def name_of(self, phone: str) -> str | None:
        """The contact name for `phone` (the first alphabetically if several)."""
        names = sorted(name for name, p in self._contacts.items() if p == phone)
        return names[0] if names else None

    # --- groups -------------------------------------------------------------------------

    def groups(self) -> list[Group]:
        """By name, then creator (ours first), then id."""
        return sorted(
            self._groups.values(), key=lambda g: (g.name, g.creator != self.me, g.creator, g.id)
        )

    def create_group(self, name: str, members: list[str], private: bool = False) -> Group:
        """A new group of ours (`private`: a list, sent to as direct messages); only
        here: Session.create_group tells its members too."""
        name = self._check_name(name)
        if name in self._contacts:
            raise NameConflict(f"{name!r} is already a contact")
        if self._ours_named(name):
            raise NameConflict(f"you already have a group named {name!r}")
        self._check_room()
        phones = [self.member_phone(m) for m in members]
        if len(phones) + 1 > self._max_members:
            raise InvalidInput(f"a group has at most {self._max_members} members")
        group = rules.created(name, self._me(), phones, private)
        while group.id in self._groups:  # (128 random bits: never, but never twice either)
            group = rules.created(name, self._me(), phones, private)
        return self._put(group)

    def add_to_group(self, target: str, member: str) -> Group:
        group = self.group(target)
        return self._put(
            rules.add(group, [self.member_phone(member)], self._me(), self._max_members)
        )

    def remove_from_group(self, target: str, member: str) -> Group:
        group = self.group(target)
        phone = self.member_phone(member)
        if phone not in group.members:
            raise UnknownTarget(f"{member!r} is not a member of group {group.name!r}")
        return self._put(rules.remove(group, [phone], self._me()))

    def leave_group(self, target: str) -> Group:
        return self._put(rules.leave(self.group(target), self._me()))

    def group(self, target: str) -> Group:
        """A group by its id, or by its name when one group has it."""
        if not isinstance(target, str):
            raise InvalidInput("a group is named by its name or its id")
        found = self._find_group(target)
        if found is None:
            raise UnknownTarget(f"no group named {target!r}")
        return found

    def _ours_named(self, name: str) -> bool:
        """Whether a group we made has `name` (ours are told apart by name)."""
        return any(g.name == name and g.creator == self.me for g in self._groups.values())

    def named_alike(self, group: Group) -> bool:
        """Whether another group has `group`'s name (a UI then says whose each is)."""
        if self._names is None:
            self._names = Counter(g.name for g in self._groups.values())
        return self._names[group.name] > 1

    def group_by_id(self, group_id: str) -> Group | None:
        return self._groups.get(group_id)

    def confirm_left(self, group_id: str, phone: str) -> Group:
        """Our group, once we confirm to its members that `phone` left it."""
        group = self._groups[group_id]
        return self._put(rules.confirm_left(group, phone))

    def judge(self, sender: str, name: str, info: ev.GroupInfo) -> tuple[Group, bool]:
        """The group a peer's message claiming `info` is shown in (app/groups.py's
        `judge`), saved when the message changed it; and whether it did."""
        known = self._groups.get(info.id)
        group = rules.judge(known, self._me(), sender, self._label(name), info)
        if group is known:
            return group, False
        if known is None:  # (a group the rules take: its creator's room is taken)
            self._check_room(group.creator)
        return self._put(group), True

    def _put(self, group: Group) -> Group:
        if self._gone(group):  # (last of those we are not in: forgotten last)
            self._groups.pop(group.id, None)
        self._groups[group.id] = group
        gone = [g.id for g in self._groups.values() if self._gone(g)]
        for group_id in gone[: max(0, len(gone) - self._max_groups)]:
            del self._groups[group_id]  # the oldest we left or were removed from
        self._save()
        return group

    def _gone(self, group: Group) -> bool:
        """Whether we are no longer in `group` (left, or removed)."""
        return not group.private and self.me not in group.members

    def _check_room(self, creator: str | None = None) -> None:
        """Room for one more group we are in (ours; or made by `creator`, a peer, who
        may take only a twentieth of the room, and a stranger's all only a tenth: no one
        fills it). Groups we left or were removed from take none."""
        most = self._max_groups
        active = [g for g in self._groups.values() if g.private or self.me in g.members]
        if creator is None:
            if len(active) >= most:
                raise InvalidInput(f"at most {most} groups are kept")
            return
        if len(active) >= most:
            raise MessageRefused(f"I keep at most {most} groups")
        if sum(g.creator == creator for g in active) >= most // 20:
            raise MessageRefused(f"I keep at most {most // 20} groups made by one number")
        if not self.knows(creator):
            strangers = sum(not self.knows(g.creator) for g in active)
            if strangers >= most // 10:
                raise MessageRefused(
                    f"I keep at most {most // 10} groups made by numbers not in my contacts"
                )

    def _me(self) -> str:
        assert self.me is not None, "an address book with groups knows its own number"
        return self.me

    def _find_group(self, target: str) -> Group | None:
        if _GROUP_ID.fullmatch(target) and target in self._groups:
            return self._groups[target]
        if _ID_START.fullmatch(target):  # the start of an id (as the line mode shows it)
            started = [g for g in self._groups.values() if g.id.startswith(target)]
            if len(started) == 1:
                return started[0]
        named = [g for g in self.groups() if g.name == target]
        if len(named) > 1:
            choices = ", ".join(f"{g.id} (created by {self._who(g.creator)})" for g in named)
            raise AmbiguousTarget(
                f"{len(named)} groups are named {target!r}: give the id of one of {choices}"
            )
        return named[0] if named else None

    def _who(self, phone: str) -> str:
        if phone == self.me:
            return "you"
        name = self.name_of(phone)
        return phone if name is None else f"{name}, {phone}"

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
        """A contact name, a group (its id, or its name) or a phone number -> the phones
        it means (a contact's name wins over a group a peer named the same)."""
        if not isinstance(target, str):
            raise InvalidInput("the target must be a contact, a group or a phone number")
        if target in self._contacts:
            return Recipients((self._contacts[target],), None)
        group = self._find_group(target)
        if group is not None:
            return Recipients(group.others(self.me or ""), group)
        if looks_like_phone(target):
            return Recipients((normalise_phone(target, self.region),), None)
        raise UnknownTarget(f"no contact or group named {target!r}")
