"""The README's "On a cloud" opening says only what the code does: every command it shows parses,
every extra it installs exists, every `sky.` name its snippet uses is exported. (No cloud is
called: each command is parsed by click, options' values and required arguments checked, and not
run.)
"""

from __future__ import annotations

import ast
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import typer

import skyward_ray as sky
from skyward_ray.cli import app

REPO = Path(__file__).resolve().parent.parent


def section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"## {title}\n")
    return text[start: text.index("\n## ", start + 1)]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def test_the_readme_opens_with_the_two_set_up_commands_then_the_cloud_path():
    text = (REPO / "README.md").read_text()
    first = blocks(text, "bash")[0].splitlines()
    assert len(first) == 2 and first[0].startswith("python3 -m venv .venv") and "pytest" in first[1]
    assert text.index("## On a cloud") < text.index("## A short tour")


def parse(args: list[str]) -> None:
    """Parse `skyward-ray ARGS` as click would before running it, without running it."""
    group = typer.main.get_command(app)
    with group.make_context("skyward-ray", list(args)) as parent:
        command = group.get_command(parent, args[0])
        assert command is not None, f"no command {args[0]!r}"
        if "--help" in args:
            return
        with command.make_context(args[0], args[1:], parent=parent):
            pass


def test_every_cloud_command_in_the_opening_parses():
    cloud = section("On a cloud")
    commands = [line.split("#")[0].strip() for block in blocks(cloud, "bash") for line in block.splitlines()]
    shown = [shlex.split(c)[1:] for c in commands if c.startswith(".venv/bin/skyward-ray")]
    named = re.findall(r"`skyward-ray (\w+)", cloud)  # commands the prose names (no arguments given)
    assert {"check", "plan", "status", "down", "gc"} <= {args[0] for args in shown} | set(named)
    for args in shown:
        parse(list(args))  # raises on an unknown option, a bad value or a missing argument
    for name in named:
        parse([name, "--help"])
    with pytest.raises(typer.BadParameter):  # the check bites: a bad value is refused
        parse(["plan", "--nodes", "notanumber"])
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for named in re.findall(r"\[(\w+)\]", " ".join(c for c in commands if "pip install" in c) + cloud):
        assert named in extras, named


def test_the_cloud_snippet_uses_only_exported_names():
    [snippet] = blocks(section("On a cloud"), "python")
    tree = ast.parse(snippet)
    used = {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "sky"}
    assert used and all(name in sky.__all__ for name in used), used - set(sky.__all__)
