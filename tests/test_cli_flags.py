"""`skyward-ray --version / --verbose / --quiet`, diagnostics through the `skyward_ray` logger, lines
that stay whole when piped (issue 22, item 12), and remote traceback notes as plain text (item 8)."""

from __future__ import annotations

import logging
import os

import pytest
from typer.testing import CliRunner

from skyward_ray import names
from skyward_ray.api.calls import remote_traceback
from skyward_ray.cli import app
from skyward_ray.console import console, log, node_logs_enabled, output_console


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch):
    level, handlers = log.level, list(log.handlers)
    monkeypatch.delenv(names.ENV_NODE_LOGS, raising=False)
    monkeypatch.setenv(names.ENV_QUIET, os.environ.get(names.ENV_QUIET, ""))
    yield
    log.setLevel(level)
    log.handlers[:] = handlers


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("skyward-ray ")


def test_quiet_silences_progress_lines():
    os.environ.pop(names.ENV_QUIET, None)
    result = CliRunner().invoke(app, ["--quiet", "offers", "-a", "H100:8", "-p", "runpod", "--limit", "1"])
    assert result.exit_code == 0, result.output
    assert os.environ.get(names.ENV_QUIET) == "1" and console.quiet


def test_verbose_turns_on_diagnostics_and_node_logs():
    assert not node_logs_enabled()
    result = CliRunner().invoke(app, ["--verbose", "offers", "-a", "H100:8", "-p", "runpod", "--limit", "1"])
    assert result.exit_code == 0, result.output
    assert log.isEnabledFor(logging.DEBUG) and node_logs_enabled()


def test_node_logs_switch(monkeypatch):
    monkeypatch.setenv(names.ENV_NODE_LOGS, "1")
    assert node_logs_enabled()
    monkeypatch.setenv(names.ENV_NODE_LOGS, "0")
    log.setLevel(logging.DEBUG)
    assert not node_logs_enabled()


def test_status_lines_are_log_records(caplog):
    with caplog.at_level(logging.INFO, logger="skyward_ray"):
        console.print("starting 2 node(s) on aws")
    assert any(r.name == "skyward_ray" and "starting 2 node(s)" in r.getMessage() for r in caplog.records)


def test_piped_output_is_not_wrapped_mid_url(capsys):
    url = "http://127.0.0.1:8265/" + "a" * 300
    output_console(80).print(f"dashboard: {url} (cost so far $1.23)")
    out = capsys.readouterr().out
    assert url in out and len(out.strip().splitlines()) == 1


RAY_TRACEBACK = (
    "\x1b[36mray::fails()\x1b[39m (pid=12, ip=10.0.0.2)\n"
    '  File "/venv/lib/python3.11/site-packages/ray/cloudpickle/cloudpickle.py", line 10, in _fn\n'
    "    return f(*args)\n"
    '  File "/venv/lib/python3.11/site-packages/skyward_ray/api/attempts.py", line 44, in call\n'
    "    return fn(*args, **kwargs)\n"
    "           ^^^^^^^^^^^^^^^^^^^\n"
    '  File "/home/me/train.py", line 7, in fails\n'
    '    raise ValueError("bad")\n'
    "ValueError: bad"
)


def test_remote_traceback_is_plain_text_of_the_users_frames():
    text = remote_traceback(RAY_TRACEBACK)
    assert "\x1b[" not in text and "cloudpickle" not in text and "attempts.py" not in text
    assert text.splitlines() == ["ray::fails() (pid=12, ip=10.0.0.2)", '  File "/home/me/train.py", line 7, in fails',
                                 '    raise ValueError("bad")', "ValueError: bad"]
