"""README.md and docs/architecture.md stay true to the code: every flag the README's CLI
sections give a command is in that command's ``--help``, every ``workshaper`` subcommand is
documented, the key-layout table names every key ``workshaper/keys.py`` builds, the Layout
block names every module of ``workshaper/``, and every module the architecture page cites exists.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from workshaper import keys
from workshaper.cli import main as cli_main
from workshaper.cli.worker import worker_main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()

FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*|-X)(?![\w*-])")
HAS_TOOLS = importlib.util.find_spec("workshaper_tools") is not None


def help_text(entry: Callable[[list[str]], object], argv: list[str]) -> str:
    """What ``argv + ['--help']`` prints, run in this process."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        entry([*argv, "--help"])
    assert exited.value.code in (0, None), f"{argv} --help failed: is it a real command?"
    return out.getvalue()


def workshaper_help(*argv: str) -> str:
    return help_text(cli_main.main, list(argv))


def subcommands() -> list[str]:
    parser = cli_main.build_parser()
    action = next(a for a in parser._actions if a.choices and a.dest == "command")
    assert action.choices is not None
    return list(action.choices)


def section(text: str, title: str) -> str:
    """The text of the ``## title`` / ``### title`` section, up to the next heading as deep."""
    match = re.search(rf"^(#+) {re.escape(title)}\n", text, re.M)
    assert match, f"README has no section {title!r}"
    depth = len(match.group(1))
    rest = text[match.end() :]
    end = re.search(rf"^#{{1,{depth}}} ", rest, re.M)
    return rest[: end.start() if end else len(rest)]


def cli_text() -> str:
    return section(README, "CLI") + section(README, "Kafka bridge")


def command_lines(text: str) -> list[tuple[str, str]]:
    """(command, its text) of each command in the text's code blocks; a line that does not
    start a command continues the previous one."""
    found: list[tuple[str, str]] = []
    for block in re.findall(r"^```\n(.*?)^```", text, re.M | re.S):
        for line in block.splitlines():
            words = line.split()
            if not words:
                continue
            if words[0] in ("workshaper-worker", "./scripts/chaos", "./scripts/bench"):
                found.append((words[0], line))
            elif words[0] == "workshaper":
                command = " ".join(words[:3] if words[1] == "dead-letters" else words[:2])
                found.append((command, line))
            else:
                assert found, f"a code block starts with a line that is no command: {line!r}"
                found[-1] = (found[-1][0], found[-1][1] + "\n" + line)
    return found


def command_help(command: str) -> str | None:
    """The ``--help`` of a README command, or None where the tooling is not installed."""
    if command == "workshaper-worker":
        return help_text(worker_main, [])
    if command in ("./scripts/chaos", "./scripts/bench", "workshaper bench") and not HAS_TOOLS:
        return None
    if command == "./scripts/chaos":
        # The main that `python -m workshaper_tools.chaos` (its __main__) runs.
        from workshaper_tools.chaos.cli import main as chaos_main

        return help_text(chaos_main, [])
    if command == "./scripts/bench":
        return workshaper_help("bench")
    return workshaper_help(*command.split()[1:])


def all_help() -> str:
    texts = [workshaper_help(), help_text(worker_main, []), workshaper_help("kafka-bridge")]
    texts += [workshaper_help(s) for s in subcommands() if s not in ("bench", "kafka-bridge")]
    texts += [workshaper_help("dead-letters", a) for a in ("list", "show", "replay", "drop")]
    for command in ("workshaper bench", "./scripts/chaos"):
        texts.append(command_help(command) or "")
    return "\n".join(texts)


def test_code_blocks_of_the_cli_sections_use_real_flags() -> None:
    commands = command_lines(cli_text())
    assert {c for c, _ in commands} >= {"workshaper-worker", "workshaper status"}
    wrong = []
    for command, text in commands:
        helped = command_help(command)
        if helped is None:
            continue
        documented = set(FLAG.findall(helped))
        wrong += [f"{command}: {f}" for f in FLAG.findall(text) if f not in documented]
    assert not wrong, f"README gives flags their command does not have: {wrong}"


def test_flags_in_the_readme_prose_exist() -> None:
    if not HAS_TOOLS:
        pytest.skip("workshaper-tools (bench, chaos) not installed")
    known = set(FLAG.findall(all_help()))
    # pip's, not ours (`pip install -e . -e tools`).
    known |= {"--upgrade"}
    unknown = sorted(set(FLAG.findall(README)) - known)
    assert not unknown, f"README names flags no command has: {unknown}"


#: Flags docs/*.md give other programs: redis-server / redis-cli, py-spy, and the benchmark
#: modules run on their own (``python -m workshaper_tools.bench.<module>``).
OTHER_PROGRAMS = {
    "--cluster", "--cluster-enabled", "--tls-port", "--askpass",  # redis-server, redis-cli
    "--gil", "--rate",  # py-spy record
    "--backend", "--records", "--rounds", "--window",  # bench.embedded, kafka, cpu_ab, idle
    "--s2-max-in-queue", "--threads", "--machine",  # bench.embedded
    "--calls",  # bench.enqueue_micro, claim_micro, complete_micro
    "--cycles", "--runs",  # bench.cycle_micro
    "--per-call",  # bench.lua_cost (its --items and --sub-keys are the bench's flags too)
    "--s2", "--lanes",  # bench.lanes, the lane spike
}  # fmt: skip


def test_flags_in_docs_exist() -> None:
    if not HAS_TOOLS:
        pytest.skip("workshaper-tools (bench, chaos) not installed")
    known = set(FLAG.findall(all_help())) | OTHER_PROGRAMS
    unknown = {
        f"{doc.name}: {flag}"
        for doc in sorted((ROOT / "docs").glob("*.md"))
        for flag in FLAG.findall(doc.read_text())
        if flag not in known
    }
    assert not unknown, f"docs name flags no command has: {sorted(unknown)}"


def test_every_subcommand_is_in_the_readme() -> None:
    missing = [s for s in subcommands() if f"workshaper {s}" not in README]
    missing += [
        f"dead-letters {a}"
        for a in ("list", "show", "replay", "drop")
        if f"workshaper dead-letters {a}" not in README
    ]
    assert not missing, f"README does not document: {missing}"


def test_the_checks_catch_a_misspelt_flag() -> None:
    """The regex and the block parser see a flag the command does not have."""
    text = "```\nworkshaper stuck [--older-then 60s]\n```\n"
    ((command, line),) = command_lines(text)
    assert command == "workshaper stuck"
    assert "--older-then" not in FLAG.findall(workshaper_help("stuck"))
    assert "--older-then" in FLAG.findall(line)


def test_key_table_names_every_key() -> None:
    table = section(README, "Redis key layout")
    names = [f"ws:{{ns:p}}:{n}" for n in keys.PARTITION_KEY_NAMES]
    names += ["ws:{ns:p}:q:", "ws:{ns:p}:claim:", "ws:{ns:p}:unblock:", "ws:{ns:wake"]
    spaces = keys.NamespaceKeys("NS")
    for attr in dir(keys.NamespaceKeys):
        if isinstance(getattr(keys.NamespaceKeys, attr), property):
            key = getattr(spaces, attr).decode()
            names.append(key.replace("ws:{NS}:", "ws:{ns}:"))
    missing = [n for n in names if f"`{n}" not in table]
    assert not missing, f"README's key table lacks: {missing}"


def test_layout_names_every_module() -> None:
    block = section(README, "Layout")
    entries = [
        p.name + "/" if p.is_dir() else p.name
        for p in (ROOT / "workshaper").iterdir()
        if p.name != "__init__.py" and not p.name.startswith((".", "__")) and p.suffix != ".typed"
    ]
    missing = [e for e in sorted(entries) if not re.search(rf"(?<![\w/]){re.escape(e)}", block)]
    assert not missing, f"README's Layout lacks: {missing}"


def test_architecture_cites_only_existing_modules() -> None:
    cited = set(re.findall(r"`((?:\w+/)*\w+\.(?:py|lua))`", ARCHITECTURE))
    files = [
        "/" + str(p.relative_to(ROOT))
        for base in (ROOT / "workshaper", ROOT / "tools" / "workshaper_tools", ROOT / "tests")
        for p in base.rglob("*")
        if p.suffix in (".py", ".lua")
    ]
    missing = sorted(c for c in cited if not any(f.endswith("/" + c) for f in files))
    assert len(cited) > 20
    assert not missing, f"docs/architecture.md cites modules that do not exist: {missing}"
