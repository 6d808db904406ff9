"""Groups and their rules: who may change one, and what a peer's message may claim.

A shared group has an id and a creator; its name is only a label. The id is bound to
its creator: it is the hash of the creator's number and 16 random bytes (`salt`) that
every message carries, so nobody can make a group of their own under another's id.
Every message to a group carries its id and its members as the sender knows them
(`ev.GroupInfo`), and a receiver shows it in the group with that id, never by the name,
and only when its sender is a member there (docs/protocol.md §6.12):

- only the creator adds and removes members; each change raises the group's `epoch`,
  and a message of the creator with a higher epoch than ours tells us its members (so a
  member who missed a change catches up with the creator's next message). The creator
  is the creator for good: there is no one to prove a hand-over, so a group whose
  creator left keeps its members, and nobody adds or removes any more;
- any member leaves by telling the others, and the creator confirms it to everyone
  (`left`, a new epoch), so that every view converges also for who missed the leave;
  a list of the creator made before it heard that we left does not bring us back, only
  its adding us by name;
- a group we do not know is learned only from its creator: a message from anyone
  else, or from someone who is not a member as we know the group, is refused
  `not-member` (the sender tries again later: a new member may hear from another
  member before it hears from the creator).

A private list (`private`) is ours alone: a send to it is a direct message to each
member, and nobody else learns of it.

Everything here is a pure function of its arguments (no I/O, no clock), like protocol/.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from whatsap2p.errors import InvalidInput, MessageRefused, NotMember
from whatsap2p.protocol import events as ev

__all__ = [
    "Group",
    "add",
    "change_json",
    "confirm_left",
    "created",
    "group_id",
    "judge",
    "leave",
    "remove",
]

#: What a group id hashes, before its creator's number and its salt.
_ID_CONTEXT = b"whatsap2p group id 1\x00"


def change_json(change: ev.GroupChange) -> dict[str, object]:
    """A membership change as the history and the UIs keep it: `{"op", "phones"}`."""
    return {"op": change.op, "phones": list(change.phones)}


def group_id(creator: str, salt: bytes) -> str:
    """The id of `creator`'s group of `salt` (16 random bytes): 128 bits of their
    SHA-256, as 32 lowercase hex digits."""
    return hashlib.sha256(_ID_CONTEXT + creator.encode() + b"\x00" + salt).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Group:
    id: str
    name: str
    creator: str
    #: Everyone in it, its creator and us included (while we are in it).
    members: tuple[str, ...]
    #: The version of its members: the creator raises it with each change.
    epoch: int = 1
    #: A private list: ours alone, sent to as direct messages.
    private: bool = False
    #: What its id is the hash of, with its creator's number (`group_id`).
    salt: bytes = b""
    #: We left it by our own word (a list of the creator's made before it heard of it
    #: does not bring us back; its adding us by name does).
    quit: bool = False

    def others(self, me: str) -> tuple[str, ...]:
        """Its members but us: whom a message to it goes to."""
        return tuple(phone for phone in self.members if phone != me)

    def info(self, change: ev.GroupChange | None = None) -> ev.GroupInfo:
        """What a message to it says of it."""
        return ev.GroupInfo(self.id, self.creator, self.members, self.epoch, change, self.salt)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "creator": self.creator,
            "members": list(self.members),
            "epoch": self.epoch,
        }
        if self.private:
            data["private"] = True
        else:
            data["salt"] = self.salt.hex()
        if self.quit:
            data["quit"] = True
        return data


def created(name: str, me: str, members: list[str], private: bool = False) -> Group:
    """A new group of ours (a private list holds only the others)."""
    others = [phone for phone in dict.fromkeys(members) if phone != me]
    salt = secrets.token_bytes(16)
    listed = tuple(others) if private else (me, *others)
    return Group(group_id(me, salt), name, me, listed, 1, private, salt)


def _check_may_change(group: Group, me: str, verb: str) -> None:
    if group.private:
        return
    if me not in group.members:
        raise InvalidInput(f"you are no longer a member of group {group.name!r}")
    if me != group.creator:
        raise InvalidInput(
            f"only the group's creator ({group.creator}) {verb} members of {group.name!r}"
        )


def add(group: Group, phones: list[str], me: str, most: int) -> Group:
    """`group` with `phones` added by us (its creator); raises InvalidInput otherwise."""
    _check_may_change(group, me, "adds")
    new = [p for p in dict.fromkeys(phones) if p not in group.members and p != me]
    if not new:
        return group
    if len(group.members) + len(new) > most:
        raise InvalidInput(f"a group has at most {most} members")
    return dataclasses.replace(
        group, members=(*group.members, *new), epoch=group.epoch + (not group.private)
    )


def remove(group: Group, phones: list[str], me: str) -> Group:
    """`group` without `phones`, removed by us (its creator)."""
    _check_may_change(group, me, "removes")
    if me in phones and not group.private:
        raise InvalidInput("to leave a group, leave it (you cannot remove yourself)")
    missing = [p for p in phones if p not in group.members]
    if missing:
        raise InvalidInput(f"{missing[0]} is not a member of group {group.name!r}")
    members = tuple(p for p in group.members if p not in phones)
    return dataclasses.replace(group, members=members, epoch=group.epoch + (not group.private))


def leave(group: Group, me: str) -> Group:
    """`group` once we leave it (a creator's leave is a change of its own: a new epoch)."""
    if group.private:
        raise InvalidInput(f"{group.name!r} is your private list: nobody else is told of it")
    if me not in group.members:
        raise InvalidInput(f"you are no longer a member of group {group.name!r}")
    epoch = group.epoch + (me == group.creator)
    return dataclasses.replace(group, members=group.others(me), epoch=epoch, quit=True)


def confirm_left(group: Group, phone: str) -> Group:
    """Our group (we are its creator) once we confirm that `phone` left it."""
    return dataclasses.replace(group, members=group.others(phone), epoch=group.epoch + 1)


def judge(known: Group | None, me: str, sender: str, name: str, info: ev.GroupInfo) -> Group:
    """The group a message from `sender` claiming `info` (named `name`) is shown in, as
    it is once the message is taken (a new group, new members, or `known` unchanged);
    NotMember or MessageRefused when it is not to be shown in any group."""
    change = info.change
    if info.id != group_id(info.creator, info.salt):
        raise MessageRefused("the group id is not its creator's")
    if known is None:
        if sender != info.creator:
            raise NotMember("not a group I have been added to (yet)")
        if me not in info.members:
            raise NotMember("the group does not list me as a member")
        return Group(info.id, name, info.creator, info.members, info.epoch, salt=info.salt)
    if known.private or info.creator != known.creator:  # (a hash collision, or our list's)
        raise MessageRefused("that group id is not one you may use")
    if sender == known.creator and info.epoch > known.epoch and sender in known.members:
        # The creator's word on its members (a change, or one we missed); a creator
        # that left has none any more.
        members, quit = info.members, known.quit
        if quit and me in members:
            if change is not None and change.op == "add" and me in change.phones:
                quit = False  # added again, by name
            else:  # (a list made before it heard that we left)
                members = tuple(p for p in members if p != me)
        return dataclasses.replace(known, name=name, members=members, epoch=info.epoch, quit=quit)
    if sender not in known.members:
        raise NotMember("the sender is not a member of the group as I know it")
    if me not in known.members:
        raise NotMember("I am no longer a member of the group")
    if change is None:
        return known
    if change.op == "leave" and sender != known.creator:
        return dataclasses.replace(known, members=known.others(sender))
    if sender != known.creator:
        raise MessageRefused("only the group's creator adds or removes members")
    return known  # the creator's change we already have (a retry)
