"""The README's "On a cloud" opening says only what the code does: every command it shows parses,
every extra it installs exists, every `sky.` name its snippet uses is exported. (No cloud is
called: the commands are parsed with `--help`, which click answers only when the options before
it are valid.)
"""

from __future__ import annotations

import ast
import re
import shlex
import tomllib
from pathlib import Path

from typer.testing import CliRunner

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


def test_every_cloud_command_in_the_opening_parses():
    cloud = section("On a cloud")
    commands = [line.split("#")[0].strip() for block in blocks(cloud, "bash") for line in block.splitlines()]
    runner = CliRunner()
    shown = [shlex.split(c)[1:] for c in commands if c.startswith(".venv/bin/skyward-ray")]
    shown += [[name] for name in re.findall(r"`skyward-ray (\w+)", cloud)]
    assert {"check", "plan", "status", "down", "gc"} <= {args[0] for args in shown}
    for args in shown:
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0, (args, result.output)
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for named in re.findall(r"\[(\w+)\]", " ".join(c for c in commands if "pip install" in c) + cloud):
        assert named in extras, named


def test_the_cloud_snippet_uses_only_exported_names():
    [snippet] = blocks(section("On a cloud"), "python")
    tree = ast.parse(snippet)
    used = {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "sky"}
    assert used and all(name in sky.__all__ for name in used), used - set(sky.__all__)
