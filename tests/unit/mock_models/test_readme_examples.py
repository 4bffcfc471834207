"""The examples in mock_models/README.md work as written."""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

from fastapi.testclient import TestClient

from kv_canary import CanaryConfig, CanaryMode
from mock_models.config import EngineConfig
from mock_models.engine.engine import Engine
from mock_models.server.app import create_app
from mock_models.server.engine_worker import EngineWorker

README = Path(__file__).resolve().parents[3] / "mock_models" / "README.md"


def _curl_commands() -> list[list[str]]:
    text = README.read_text().replace("\\\n", " ")
    return [shlex.split(line) for line in text.splitlines() if line.startswith("curl ")]


def test_the_curl_example_gets_an_answer_not_a_422():
    (command,) = _curl_commands()
    headers = dict(value.split(": ", 1) for flag, value in itertools.pairwise(command) if flag in ("-H", "--header"))
    body = command[command.index("-d") + 1]
    (url,) = [arg for arg in command if re.match(r"(http://)?localhost:\d+/", arg)]
    path = "/" + url.split("/", 1 if url.startswith("localhost") else 3)[-1]
    engine = Engine(EngineConfig(model_mode="swa"), canary_config=CanaryConfig(mode=CanaryMode.NONE))
    with TestClient(create_app(EngineWorker(engine))) as client:
        answer = client.post(path, content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["output_ids"]) == 8
