"""Groups and their rules: who may change one, and what a peer's message may claim.

A shared group has an id (128 random bits) and a creator; its name is only a label.
Every message to it carries its id and its members as the sender knows them
(`ev.GroupInfo`), and a receiver shows it in the group with that id, never by the name,
and only when its sender is a member there (docs/protocol.md §6.12):

- the creator adds and removes members; each change raises the group's `epoch`, and a
  message of the creator with a higher epoch than ours tells us its members (so a
  member who missed a change catches up with the creator's next message);
- any member leaves by telling the others; a leaving creator hands the group to the
  first member left. Who left by their own word is kept out of a list made before the
  creator heard of it, until the creator adds them again by name;
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
import secrets
from dataclasses import dataclass
from typing import Any

from whatsap2p.errors import InvalidInput, MessageRefused, NotMember
from whatsap2p.protocol import events as ev

__all__ = ["Group", "add", "change_json", "created", "judge", "leave", "new_id", "remove"]


def change_json(change: ev.GroupChange) -> dict[str, object]:
    """A membership change as the history and the UIs keep it: `{"op", "phones"}`."""
    return {"op": change.op, "phones": list(change.phones)}


def new_id() -> str:
    """A group id: 128 random bits, as 32 lowercase hex digits."""
    return secrets.token_hex(16)


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
    #: Who left by their own word (kept out of lists made before the creator heard).
    left: frozenset[str] = frozenset()

    def others(self, me: str) -> tuple[str, ...]:
        """Its members but us: whom a message to it goes to."""
        return tuple(phone for phone in self.members if phone != me)

    def info(self, change: ev.GroupChange | None = None) -> ev.GroupInfo:
        """What a message to it says of it."""
        return ev.GroupInfo(self.id, self.creator, self.members, self.epoch, change)

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
        if self.left:
            data["left"] = sorted(self.left)
        return data


def created(name: str, me: str, members: list[str], private: bool = False) -> Group:
    """A new group of ours (a private list holds only the others)."""
    others = [phone for phone in dict.fromkeys(members) if phone != me]
    listed = tuple(others) if private else (me, *others)
    return Group(new_id(), name, me, listed, 1, private)


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
        group,
        members=(*group.members, *new),
        epoch=group.epoch + (not group.private),
        left=group.left.difference(new),
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
    """`group` once we leave it: a leaving creator hands it to the first member left."""
    if group.private:
        raise InvalidInput(f"{group.name!r} is your private list: nobody else is told of it")
    if me not in group.members:
        raise InvalidInput(f"you are no longer a member of group {group.name!r}")
    members = group.others(me)
    if me != group.creator:
        return dataclasses.replace(group, members=members, left=group.left | {me})
    return dataclasses.replace(
        group,
        members=members,
        creator=members[0] if members else me,
        epoch=group.epoch + 1,
        left=group.left | {me},
    )


def judge(known: Group | None, me: str, sender: str, name: str, info: ev.GroupInfo) -> Group:
    """The group a message from `sender` claiming `info` (named `name`) is shown in, as
    it is once the message is taken (a new group, new members, or `known` unchanged);
    NotMember or MessageRefused when it is not to be shown in any group."""
    change = info.change
    if known is None or known.private:
        if known is not None:  # (a private list's id is ours alone: a claim of it is forged)
            raise MessageRefused("that group id is not one you may use")
        if sender != info.creator:
            raise NotMember("not a group I have been added to (yet)")
        if me not in info.members:
            raise NotMember("the group does not list me as a member")
        return Group(info.id, name, info.creator, info.members, info.epoch)
    if sender == known.creator and info.epoch > known.epoch:
        # The creator's word on its members (a change, or one we missed).
        left = known.left
        if change is not None and change.op == "add":
            left = left.difference(change.phones)
        members = tuple(p for p in info.members if p not in left)
        return Group(known.id, name, info.creator, members, info.epoch, False, left)
    if me not in known.members and sender == info.creator and info.epoch > known.epoch:
        # We left (or were removed) and the group went on without us: its creator now,
        # whom we may not know (the one we knew handed it over), brings us back.
        if me not in info.members:
            raise NotMember("I am no longer a member of the group")
        return Group(known.id, name, info.creator, info.members, info.epoch)
    if info.creator != known.creator:
        raise NotMember("the group's creator is not the one I know")
    if sender not in known.members:
        raise NotMember("the sender is not a member of the group as I know it")
    if me not in known.members:
        raise NotMember("I am no longer a member of the group")
    if change is None:
        return known
    if change.op == "leave":
        if sender == known.creator:  # (a creator leaves with a higher epoch: taken above)
            raise MessageRefused("a creator's leave must hand the group over")
        return dataclasses.replace(known, members=known.others(sender), left=known.left | {sender})
    if sender != known.creator:
        raise MessageRefused("only the group's creator adds or removes members")
    return known  # the creator's change we already have (a retry)
