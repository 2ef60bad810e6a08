"""`qtools check --engine openai`: bad input refused before any request (the real servers: test_vllm_check.py)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner
from vllm_interop.harness import free_port

from qtools.check.damage import damage_experts
from qtools.cli import app


@pytest.fixture(scope="module")
def pair(toy_model_dir, tmp_path_factory):
    noisy = tmp_path_factory.mktemp("openai") / "noisy"
    damage_experts(toy_model_dir, noisy, layer=0, noise=0.05)
    return toy_model_dir, noisy


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--engine", "openai"], "needs both --ref-url and --quant-url"),
        (["--engine", "openai", "--ref-url", "http://127.0.0.1:1"], "needs both --ref-url and --quant-url"),
        (["--ref-url", "http://127.0.0.1:1", "--quant-url", "http://127.0.0.1:1"], "go with --engine openai"),
    ],
)
def test_urls_go_with_the_openai_engine(pair, extra, message) -> None:
    result = CliRunner().invoke(app, ["check", str(pair[0]), str(pair[1]), *extra])
    assert result.exit_code == 2 and message in " ".join(result.output.split())


def test_a_server_that_does_not_answer_is_exit_2_naming_it(pair) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    args = ["check", str(pair[0]), str(pair[1]), "--engine", "openai", "--ref-url", url, "--quant-url", url]
    result = CliRunner().invoke(app, [*args, "--suite", "tools", "--tool-prompts", "1"])
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and f"{url}/v1/models: cannot reach the server" in output
