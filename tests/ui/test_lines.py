from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.servers import World, world_at
from whatsap2p.app.events import (
    DeliveryReport,
    IdentityChanged,
    ServerConnectionChanged,
    TextReceived,
)
from whatsap2p.app.history import State
from whatsap2p.app.session import Session
from whatsap2p.config import IncomingLimits
from whatsap2p.ui.lines import (
    LineMode,
    escape_untrusted,
    format_event,
    format_received,
    format_report,
)
from whatsap2p.ui.stdin import LineReader

ALICE, BOB, CAROL = "+5511999990001", "+5511999990002", "+5511999990003"
T = "2026-11-27T10:00:00.000+00:00"


def test_untrusted_text_cannot_drive_the_terminal() -> None:
    assert escape_untrusted("a\x1b[2Jb\r\n\u202e\u2066\x7f\u200bé😀") == (
        "a\\x1b[2Jb\\x0d\\x0a\\u202e\\u2066\\x7f\\u200bé😀"
    )


def test_group_messages_name_the_group() -> None:
    event = TextReceived("m", "+5511999990001", None, "fam\x1b", "2026-11-27T10:00:00+00:00", "hi")
    line = format_received(event)
    assert line.endswith("] +5511999990001 [fam\\x1b]: hi")


def test_a_key_change_is_announced_with_what_to_do() -> None:
    line = format_event(IdentityChanged("+5511999990002", "ab" * 32))
    assert line.startswith("! the key of +5511999990002 changed (now abab")
    assert line.endswith("/trust +5511999990002")


def test_the_server_connection_state_is_announced() -> None:
    assert "reconnecting" in format_event(ServerConnectionChanged("lost"))
    assert format_event(ServerConnectionChanged("restored")) == "! connected to the server again"


HELP_TEXT = """\
commands:
  /add NAME PHONE           add or update a contact
  /remove NAME              remove a contact
  /group NAME MEMBER...     create a group of contacts or phone numbers (all can write to it)
  /addto GROUP WHO...       add members to a group you created (everyone in it is told)
  GROUP: its name, or (when groups share one) the start of its id (/groups)
  /removefrom GROUP WHO...  remove members from a group you created
  /leave GROUP              leave a group (its members are told)
  /list NAME MEMBER...      a private list: each member gets your message as a direct message
  /msg TARGET TEXT...       send a text to a contact, a group or a phone number
  /photo TARGET PATH        send a photo (JPEG, PNG, GIF or WebP)
  /queue TARGET TEXT...     like /msg, and keep it for whoever it cannot reach now
  /retry ID                 send a message that failed again (its recipients show it once)
  /outbox                   queued messages still waiting for their recipient
  /cancel ID                take a queued message out of the outbox (/outbox lists their IDs)
  /history TARGET [N|more]  the last N (default 20) messages with TARGET
  more: as many again, from before the ones /history showed last
  /who TARGET               who of TARGET is online
  /identity                 your number and key fingerprint
  /trust PHONE              accept the new key of a number whose key changed
  /contacts                 list contacts
  /groups                   list groups, their ids and creators
  /help                     this text
  names with spaces go in quotes: /msg "my mom" hello
  /quit                     unregister and leave"""


class Typist:
    """A person at the line mode: each line typed, and what the module printed for it."""

    def __init__(self, session: Session) -> None:
        self.out = io.StringIO()
        self.mode = LineMode(session, out=self.out)

    async def type(self, line: str) -> str:
        start = len(self.out.getvalue())
        assert await self.mode.command(line)
        return self.out.getvalue()[start:].removesuffix("\n")


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with world_at(tmp_path) as world:
        yield world


async def test_every_command_prints_what_it_always_has(world: World, photo: Path) -> None:
    """What each command prints, its usage and error lines, byte for byte."""
    alice, bob = await world.user(ALICE), await world.user(BOB)  # carol stays offline
    me = Typist(alice)
    assert await me.type("/help") == HELP_TEXT
    assert await me.type("/contacts") == "no contacts"
    assert await me.type("/groups") == "no groups"
    assert await me.type("/outbox") == "nothing is waiting"
    assert await me.type("/identity") == f"{ALICE} key {alice.fingerprint}"
    assert await me.type("") == ""
    assert await me.type("hello") == "error: commands start with /; /help lists them"
    assert await me.type("/bogus x") == "error: unknown command /bogus; /help lists them"
    assert await me.type(LineReader.TOO_LONG) == "error: line too long"

    for line, usage in [
        ("/add", "/add NAME PHONE"),
        ("/add bob", "/add NAME PHONE"),
        ("/remove", "/remove NAME"),
        ("/remove bob carol", "/remove NAME"),
        ("/group pals", "/group NAME MEMBER..."),
        ("/addto pals", "/addto GROUP WHO..."),
        ("/leave", "/leave GROUP"),
        ("/list l", "/list NAME MEMBER..."),
        ("/msg bob", "/msg TARGET TEXT..."),
        ("/queue", "/queue TARGET TEXT..."),
        ("/photo bob", "/photo TARGET PATH"),
        ("/photo bob a b", "/photo TARGET PATH"),
        ("/history", "/history TARGET [N|more]"),
        ("/history bob ten", "/history TARGET [N|more]"),
        ("/history bob more 5", "/history TARGET [N|more]"),
        ("/who", "/who TARGET"),
        ("/who bob carol", "/who TARGET"),
        ("/trust", "/trust PHONE"),
        ("/retry", "/retry ID"),
        ("/cancel", "/cancel ID"),
        ("/cancel a b", "/cancel ID"),
    ]:
        assert await me.type(line) == f"usage: {usage}", line
    assert await me.type("/add 'bob +55 11 99999-0002") == "error: No closing quotation"
    assert await me.type('/msg "bob hi') == "error: no closing quotation"
    assert (await me.type("/add bob 12")).startswith("error: invalid phone number '12'")

    assert await me.type("/add bob +55 11 99999-0002") == f"contact bob: {BOB}"
    assert await me.type('/add "my mom" 11999990003') == f"contact my mom: {CAROL}"
    assert await me.type('/remove "my mom"') == "removed my mom"
    assert await me.type("/remove nobody") == "error: no contact named 'nobody'"
    assert await me.type("/contacts") == f"bob: {BOB} key not seen yet"
    made = await me.type(f"/group pals bob {CAROL}")  # (bob is told of it: his key is seen)
    (pals,) = alice.book.groups()
    assert made == f"group pals (id {pals.id}, by {ALICE}): {ALICE} {BOB} {CAROL}"
    assert await me.type("/groups") == made
    assert await me.type("/addto pals bob") == made  # (already in it)
    assert await me.type("/leave bob") == "error: no group named 'bob'"
    assert await me.type("/who pals") == f"{BOB} online, {CAROL} offline"

    assert await me.type("/msg bob  hello  there ") == f"delivered to {BOB}"
    assert await me.type("/contacts") == f"bob: {BOB} key {bob.fingerprint}"
    assert re.fullmatch(
        rf"\[\d\d:\d\d\] \{ALICE} -> \{BOB}: hello  there \(delivered\)",
        await me.type("/history bob 1"),
    )
    assert await me.type("/history +5511999990009") == "no messages yet"
    assert await me.type("/msg nobody hi") == "error: no contact or group named 'nobody'"
    assert await me.type("/msg pals hi all") == f"delivered to {BOB}; offline: {CAROL}"
    assert await me.type("/queue pals later") == f"delivered to {BOB}; queued for: {CAROL}"
    assert re.fullmatch(  # carol is told of the group when she comes online, then "later"
        rf"[0-9a-f]{{32}} to \{CAROL}: created the group with \{BOB}, \{CAROL}\n"
        rf"[0-9a-f]{{32}} to \{CAROL}: later",
        await me.type("/outbox"),
    )
    assert await me.type(f"/photo bob {photo}") == f"delivered to {BOB}"
    assert await me.type("/photo bob /no/such.png") == ("error: photo /no/such.png does not exist")
    assert (await me.type("/trust 12")).startswith("error: invalid phone number '12'")
    assert await me.type(f"/trust {BOB}") == f"trusting {BOB} with key {bob.fingerprint}"

    new_bob = await world.new_key(bob)
    assert re.fullmatch(
        rf"failed: \{BOB} \(identity changed: \{BOB} now proves key {new_bob.fingerprint}, "
        r"not the pinned [0-9a-f]{64}; nothing was sent \(use trust to accept it\)\)",
        await me.type("/msg bob is it you?"),
    )
    assert not await me.mode.command("/quit")
    assert me.out.getvalue().endswith("\n")


def test_a_send_says_how_a_message_got_there_when_not_the_usual_way() -> None:
    report = DeliveryReport("m1", delivered=[BOB, CAROL], routes={BOB: "direct", CAROL: "reverse"})
    assert format_report(report) == f"delivered to {BOB}, {CAROL} (it connected back)"


def texts(printed: str) -> list[str]:
    """The texts of the history lines printed (`[HH:MM] FROM -> TO: TEXT (STATE)`)."""
    found = [
        re.fullmatch(r"\[..:..\] \S+ -> \S+: (.*) \(\w+\)", line) for line in printed.splitlines()
    ]
    assert all(found), printed
    return [match[1] for match in found if match]


async def test_history_more_shows_the_page_before_the_last_one_shown(world: World) -> None:
    alice = await world.user(ALICE)
    history = alice.history
    assert history is not None
    me = Typist(alice)
    await me.type(f"/add bob {BOB}")
    for i in range(45):
        await history.store_received(f"b{i:02}", BOB, None, T, text=f"bob {i}")
    assert texts(await me.type("/history bob")) == [f"bob {i}" for i in range(25, 45)]
    assert texts(await me.type("/history bob more")) == [f"bob {i}" for i in range(5, 25)]
    assert texts(await me.type("/history bob more")) == [f"bob {i}" for i in range(5)]
    assert await me.type("/history bob more") == "no older messages"
    assert await me.type("/history bob more") == "no older messages"  # still
    assert texts(await me.type("/history bob 2")) == ["bob 43", "bob 44"]  # from the newest again
    assert texts(await me.type("/history bob more")) == ["bob 41", "bob 42"]  # 2 at a time
    assert texts(await me.type(f"/history {BOB} more")) == texts(await me.type("/history bob"))
    assert await me.type("/history +5511999990009 more") == "no messages yet"

    # A group send has a line per recipient: a page shows a message with all of them.
    pals = alice.book.create_group("pals", ["bob", CAROL])
    for i in range(3):
        outcomes: dict[str, tuple[State, str | None]] = {
            BOB: ("delivered", None),
            CAROL: ("offline", None),
        }
        await history.store_sent(f"p{i}", outcomes, "pals", T, text=f"pals {i}", group_id=pals.id)
    assert texts(await me.type("/history pals 3")) == ["pals 2", "pals 2"]
    assert texts(await me.type("/history pals more")) == ["pals 1", "pals 1"]
    assert texts(await me.type("/history pals more")) == ["pals 0", "pals 0"]
    assert await me.type("/history pals more") == "no older messages"


async def test_a_failed_send_names_its_retry_and_a_queued_one_can_be_cancelled(
    world: World,
) -> None:
    alice = await world.user(ALICE)
    # bob takes one text at once from a stranger (then one a second)
    bob = await world.user(BOB, incoming=IncomingLimits(stranger_messages_burst=1))
    me = Typist(alice)
    assert await me.type(f"/msg {BOB} one") == f"delivered to {BOB}"
    refused = await me.type(f"/msg {BOB} two")
    found = re.fullmatch(
        rf"failed: \{BOB} \(refused by the peer: too many messages: .*\); "
        r"/retry ([0-9a-f]{32}) tries again",
        refused,
    )
    assert found, refused
    bob.book.add_contact("alice", ALICE)  # a friend now: no longer held back
    assert await me.type(f"/retry {found[1]}") == f"delivered to {BOB}"
    assert await me.type(f"/retry {found[1]}") == f"delivered to {BOB}"  # (nothing sent)
    shown = [await asyncio.wait_for(bob.events.get(), 10) for _ in range(2)]
    assert [e.text for e in shown if isinstance(e, TextReceived)] == ["one", "two"]
    assert bob.events.empty()

    queued = await me.type(f"/queue {CAROL} later")
    assert queued == f"queued for: {CAROL}"
    (waiting,) = alice.outbox()
    assert await me.type(f"/cancel {waiting.id}") == f"cancelled {waiting.id} for {CAROL}"
    assert await me.type(f"/cancel {waiting.id}") == (
        f"error: no queued message {waiting.id} waits in the outbox"
    )
    assert re.fullmatch(
        rf"\[\d\d:\d\d\] \{ALICE} -> \{CAROL}: later \(cancelled\)",
        await me.type(f"/history {CAROL}"),
    )
