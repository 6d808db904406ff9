"""The command table that the line mode and the terminal UI share: how a typed line is
read (quoting, usage, errors), what /help says, and what the handlers return."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.servers import World, world_at
from whatsap2p.app.contacts import Contact
from whatsap2p.app.events import DeliveryReport
from whatsap2p.ui import commands
from whatsap2p.ui.commands import (
    COMMANDS,
    AddContact,
    CommandError,
    ContactList,
    CreateGroup,
    GroupList,
    Identity,
    KeyTrusted,
    Leaving,
    ListContacts,
    ListGroups,
    MessageHistory,
    Presence,
    Quit,
    RemoveContact,
    Request,
    SendPhoto,
    SendText,
    ShowHelp,
    ShowHistory,
    ShowIdentity,
    ShowOutbox,
    TrustKey,
    UnknownCommand,
    UsageError,
    Who,
    help_text,
    parse,
    split_target,
)

ALICE, BOB, CAROL = "+5511999990001", "+5511999990002", "+5511999990003"


@pytest.mark.parametrize(
    ("line", "request_"),
    [
        ("/add bob +55 11 99999-0002", AddContact("bob", "+55 11 99999-0002")),
        ('/add "it\'s me" 11999990002', AddContact("it's me", "11999990002")),
        ("/remove 'my mom'", RemoveContact("my mom")),
        (
            '/group "the gang" bob "my mom" +5511999990003',
            CreateGroup("the gang", ("bob", "my mom", "+5511999990003")),
        ),
        ("/msg bob  hello  there", SendText("bob", "hello  there")),
        ('/msg "my mom" she said "hi"', SendText("my mom", 'she said "hi"')),
        ("/queue 'the gang' see you", SendText("the gang", "see you", queue=True)),
        ("/photo bob '~/My Pictures/cat.jpg'", SendPhoto("bob", "~/My Pictures/cat.jpg")),
        ("/history bob", ShowHistory("bob", 20)),
        ('/history "my mom" 5', ShowHistory("my mom", 5)),
        ("/history pals more", ShowHistory("pals", more=True)),
        ("/who   pals  ", Who("pals")),
        ("/trust +55 11 99999-0002", TrustKey("+55 11 99999-0002")),
        ("/contacts", ListContacts()),
        ("/groups", ListGroups()),
        ("/outbox", ShowOutbox()),
        ("/identity", ShowIdentity()),
        ("/help", ShowHelp()),
        ("  /quit  ", Quit()),
        ("/contacts please", ListContacts()),  # a command without words ignores any
    ],
)
def test_a_line_is_read_once_into_a_request(line: str, request_: Request) -> None:
    call = parse(line)
    assert call.request == request_
    assert call.command.name == line.split()[0]


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.args], ids=lambda c: c.name)
def test_a_command_without_its_words_answers_with_its_usage(
    command: commands.Command[object],
) -> None:
    with pytest.raises(UsageError) as raised:
        parse(command.name)
    assert raised.value.command is command
    assert str(raised.value) == command.usage
    assert command.usage.startswith(f"{command.name} ")


@pytest.mark.parametrize(
    ("line", "usage"),
    [
        ("/add bob", "/add NAME PHONE"),
        ("/remove bob carol", "/remove NAME"),
        ("/group pals", "/group NAME MEMBER..."),
        ("/msg bob", "/msg TARGET TEXT..."),
        ("/queue 'the gang'", "/queue TARGET TEXT..."),
        ("/photo bob a.png b.png", "/photo TARGET PATH"),
        ("/history bob ten", "/history TARGET [N|more]"),
        ("/who bob carol", "/who TARGET"),
    ],
)
def test_words_that_do_not_fit_answer_with_the_usage(line: str, usage: str) -> None:
    with pytest.raises(UsageError) as raised:
        parse(line)
    assert str(raised.value) == usage


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("hello", "commands start with /; /help lists them"),
        ("/add 'my mom +5511999990003", "No closing quotation"),  # shlex's words
        ('/msg "my mom hello', "no closing quotation"),
        ('/who "my mom', "no closing quotation"),
    ],
)
def test_a_line_that_cannot_be_read_says_why(line: str, error: str) -> None:
    with pytest.raises(CommandError) as raised:
        parse(line)
    assert str(raised.value) == error
    assert not isinstance(raised.value, UsageError)


def test_an_unknown_command_is_named() -> None:
    with pytest.raises(UnknownCommand, match=r"^unknown command /frob; /help lists them$"):
        parse("/frob x y")
    with pytest.raises(UnknownCommand):
        parse("/Help")  # names are exact


@pytest.mark.parametrize(
    ("rest", "expected"),
    [
        ("bob hello  there", ("bob", "hello  there")),
        ('"my mom" she said "hi"', ("my mom", 'she said "hi"')),
        ("'the gang' ok", ("the gang", "ok")),
        ("+55 11 hello", ("+55", "11 hello")),
        ("bob", ("bob", "")),
    ],
)
def test_split_target_keeps_the_text_as_typed(rest: str, expected: tuple[str, str]) -> None:
    assert split_target(rest) == expected


def test_unclosed_quote_is_an_error() -> None:
    with pytest.raises(ValueError, match="no closing quotation"):
        split_target('"my mom hello')


def test_help_is_the_table() -> None:
    lines = help_text().splitlines()
    assert lines[0] == "commands:"
    listed = [line.split()[0] for line in lines[1:] if line.startswith("  /")]
    assert listed == [command.name for command in COMMANDS]
    assert len(set(listed)) == len(listed)
    for command in COMMANDS:
        assert f"  {command.usage} " in help_text()
        assert command.help in help_text()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with world_at(tmp_path) as world:
        yield world


async def test_handlers_return_what_came_of_the_command(world: World) -> None:
    alice, bob = await world.user(ALICE), await world.user(BOB)

    async def typed(line: str) -> commands.Result:
        return await parse(line).run(alice)

    # a form's values reach the same handler as a typed line, with no quoting to get right
    made = await commands.add_contact(alice, AddContact('Ana "Bia" O\'Neil', "11 99999-0003"))
    assert made == Contact('Ana "Bia" O\'Neil', CAROL)
    assert await typed("/add bob +55 11 99999-0002") == Contact("bob", BOB)
    group = await commands.create_group(alice, CreateGroup("pals", ("bob", CAROL)))
    assert (group.name, group.creator, group.members) == ("pals", ALICE, (ALICE, BOB, CAROL))
    assert await typed("/groups") == GroupList((group,))
    assert await typed("/who pals") == Presence({BOB: True, CAROL: False})

    report = await typed("/msg pals hi both")
    assert isinstance(report, DeliveryReport)
    assert (report.delivered, report.offline, report.failed) == ([BOB], [CAROL], [])
    queued = await commands.send_text(alice, SendText(CAROL, "later", queue=True))
    assert queued.queued == [CAROL]
    history = await typed("/history pals")
    assert isinstance(history, MessageHistory)
    assert sorted((e.recipient, e.state, e.text) for e in history.entries) == [
        (BOB, "delivered", "created the group with +5511999990002, +5511999990003"),
        (BOB, "delivered", "hi both"),
        (CAROL, "offline", "hi both"),
        (CAROL, "queued", "created the group with +5511999990002, +5511999990003"),
    ]
    await typed("/msg bob one")
    await typed("/msg bob two")
    history = await typed("/history bob")
    assert isinstance(history, MessageHistory)
    assert [e.text for e in history.entries] == ["one", "two"]  # oldest first
    assert await typed("/contacts") == ContactList(
        ((Contact('Ana "Bia" O\'Neil', CAROL), None), (Contact("bob", BOB), bob.fingerprint))
    )
    assert await typed("/identity") == Identity(ALICE, alice.fingerprint)
    assert await typed(f"/trust {BOB}") == KeyTrusted(BOB, bob.fingerprint)
    assert await typed("/quit") == Leaving()
    assert alice.book.contacts()  # /quit only says so: the UI ends the session
