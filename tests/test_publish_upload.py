"""`qtools publish` uploads with the real huggingface_hub client to a local stand-in Hub
(`qtools.testing.hub_server`, LFS protocol, xet disabled in conftest.py): the stored repository is the checkpoint
(without `.qtools/`) plus the card and its plots; an upload refused part way resumes on rerun sending only what
is missing; every refusal sends nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qtools.checkpoint.identity import checkpoint_identity
from qtools.cli import app
from qtools.errors import QtoolsError
from qtools.publish import PublishRequest, publish_checkpoint
from qtools.testing.hub_server import HubServer
from qtools.testing.publish import FIXTURES

REPO_ID = "qtools-test/toy-FP8"


@pytest.fixture
def hub(tmp_path: Path):
    with HubServer(tmp_path / "hub") as server:
        yield server


@pytest.fixture
def fp8(toy_conversions, tmp_path: Path) -> Path:
    """A private copy of the toy's FP8 conversion (its `.qtools/` state included)."""
    copy = tmp_path / "fp8"
    shutil.copytree(toy_conversions["toy-fp8"], copy, symlinks=True)
    return copy


def _request(checkpoint: Path, hub: HubServer, **options) -> PublishRequest:
    options.setdefault("report", FIXTURES / "toy-fp8")
    options.setdefault("base_model", "qtools-examples/toy-qwen3-coder")
    return PublishRequest(checkpoint, REPO_ID, endpoint=hub.endpoint, token="hf_stand_in", **options)


def _expected_repo(checkpoint: Path, stage: Path) -> dict[str, bytes]:
    """The checkpoint's files (not `.qtools/`), the staged card and plots, and the Hub's own .gitattributes."""
    files = {name: (checkpoint / name).read_bytes() for name in checkpoint_identity(checkpoint)["files"]}
    for path in stage.rglob("*"):
        if path.is_file() and not path.is_symlink():
            files[path.relative_to(stage).as_posix()] = path.read_bytes()
    return files


def test_xet_is_off_for_these_tests() -> None:
    from huggingface_hub import constants

    assert constants.HF_HUB_DISABLE_XET, "conftest.py must set HF_HUB_DISABLE_XET before huggingface_hub is imported"


def test_upload_stores_checkpoint_and_card_and_a_rerun_sends_nothing(fp8: Path, hub: HubServer) -> None:
    summary = publish_checkpoint(_request(fp8, hub))
    stored = hub.state.files(REPO_ID)
    expected = _expected_repo(fp8, summary.stage_dir)
    assert stored.pop(".gitattributes")  # written by the Hub when it creates a repository
    assert stored == expected
    assert "README.md" in stored and any(name.startswith("images/") and name.endswith(".svg") for name in stored)
    assert not any(name.startswith(".qtools") for name in stored)
    shards = {f.sha256 for f in summary.files if f.path_in_repo.endswith(".safetensors")}
    assert len(shards) == 3 and set(hub.state.puts) == shards  # each LFS object sent once
    assert summary.plan.skipped == [] and summary.commit_url
    assert hub.state.count("POST", "/commit/") == 1

    again = publish_checkpoint(_request(fp8, hub))
    assert len(hub.state.puts) == 3 and hub.state.count("POST", "/commit/") == 1  # nothing re-sent or committed
    assert {f.path_in_repo for f in again.plan.skipped} == set(expected) and again.plan.send == []


def test_an_upload_refused_part_way_resumes_sending_only_the_missing_objects(fp8: Path, hub: HubServer) -> None:
    hub.state.fail_puts_after = 1
    with pytest.raises(QtoolsError, match="rerun the same command to resume"):
        publish_checkpoint(_request(fp8, hub))
    assert len(hub.state.puts) == 1 and hub.state.count("POST", "/commit/") == 0
    first = hub.state.puts[0]
    assert set(hub.state.files(REPO_ID)) == {".gitattributes"}  # nothing committed

    hub.state.fail_puts_after = None
    puts_before = hub.state.count("PUT", "/lfs-upload/")
    summary = publish_checkpoint(_request(fp8, hub))
    shards = {f.sha256 for f in summary.files if f.path_in_repo.endswith(".safetensors")}
    resent = hub.state.puts[1:]
    assert first not in resent and set(resent) == shards - {first} and len(resent) == 2
    assert hub.state.count("PUT", "/lfs-upload/") - puts_before == 2
    assert [f.sha256 for f in summary.plan.stored] == [first]  # the summary names what was not re-sent
    stored = hub.state.files(REPO_ID)
    stored.pop(".gitattributes")
    assert stored == _expected_repo(fp8, summary.stage_dir)


def _failed_report(tmp_path: Path) -> Path:
    report = json.loads((FIXTURES / "toy-fp8" / "report.json").read_text())
    report["passed"] = False
    report["verdicts"][0]["status"] = "fail"
    (tmp_path / "failed").mkdir()
    (tmp_path / "failed" / "report.json").write_text(json.dumps(report))
    return tmp_path / "failed"


def _broken_shard(checkpoint: Path) -> None:
    shard = sorted(checkpoint.glob("*.safetensors"))[0]
    with open(shard, "r+b") as handle:
        handle.truncate(shard.stat().st_size - 16)


@pytest.mark.parametrize(
    "case, match",
    [
        ("verify fails", "qtools verify. found"),
        ("report of another checkpoint", "measured other files"),
        ("report failed", "FAILED"),
        ("own card", "card of its own"),
        ("bad repo id", "ORG/NAME"),
    ],
)
def test_a_refused_publish_sends_nothing(case: str, match: str, fp8: Path, hub: HubServer, tmp_path: Path) -> None:
    options = {}
    repo_id = REPO_ID
    if case == "verify fails":
        _broken_shard(fp8)
    elif case == "report of another checkpoint":
        options["report"] = FIXTURES / "toy-int4"
    elif case == "report failed":
        options["report"] = _failed_report(tmp_path)
    elif case == "own card":
        (fp8 / "README.md").write_text("# my own card\n")
    else:
        repo_id = "not a repo id"
    request = _request(fp8, hub, **options)
    with pytest.raises(QtoolsError, match=match):
        publish_checkpoint(PublishRequest(**{**request.__dict__, "repo_id": repo_id}))
    assert hub.state.requests == []


def test_the_cli_publishes_to_the_environment_endpoint_and_summarises(fp8: Path, hub: HubServer) -> None:
    arguments = ["publish", str(fp8), "--repo", REPO_ID, "--base-model", "a/b", "--report", str(FIXTURES / "toy-fp8")]
    result = CliRunner().invoke(app, arguments, env={"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "hf_stand_in"})
    assert result.exit_code == 0, result.output
    staged = [path for path in (fp8 / ".qtools" / "publish").rglob("*") if path.is_file()]
    assert len(staged) == 14  # 10 checkpoint files, the card and 3 plots
    assert "sent 14 file(s)" in result.output and "skipped 0 already" in result.output
    assert hub.state.count("POST", "/commit/") == 1 and len(hub.state.puts) == 3
    again = CliRunner().invoke(app, arguments, env={"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "hf_stand_in"})
    assert again.exit_code == 0 and "sent 0 file(s) (0 bytes); skipped 14 already" in again.output


def test_the_cli_exits_2_on_a_refusal_and_sends_nothing(fp8: Path, hub: HubServer) -> None:
    arguments = ["publish", str(fp8), "--repo", REPO_ID, "--report", str(FIXTURES / "toy-int4")]
    result = CliRunner().invoke(app, arguments, env={"HF_TOKEN": "hf_stand_in"})
    assert result.exit_code == 2 and "error: refusing to publish" in result.output
    assert hub.state.requests == []


def test_a_dry_run_sends_nothing(fp8: Path, hub: HubServer, tmp_path: Path) -> None:
    summary = publish_checkpoint(_request(fp8, hub, dry_run=True, stage_dir=tmp_path / "stage"))
    assert hub.state.requests == [] and summary.plan is None
    assert (tmp_path / "stage" / "README.md").is_file() and len(summary.files) == 14


def test_a_branch_a_pull_request_and_a_card_the_repository_already_has(fp8: Path, hub: HubServer) -> None:
    publish_checkpoint(_request(fp8, hub, revision="int4-candidate"))
    assert "README.md" in hub.state.files(REPO_ID, "int4-candidate")
    assert set(hub.state.files(REPO_ID)) == {".gitattributes"}  # main untouched

    summary = publish_checkpoint(_request(fp8, hub, create_pr=True))
    assert summary.pr_url and "README.md" in hub.state.files(REPO_ID, "refs/pr/1")

    publish_checkpoint(_request(fp8, hub))
    puts = len(hub.state.puts)
    with pytest.raises(QtoolsError, match="already has a README.md"):  # another card on main: not replaced
        publish_checkpoint(_request(fp8, hub, base_model="someone/else"))
    publish_checkpoint(_request(fp8, hub, base_model="someone/else", card_overwrite=True))
    assert "someone/else" in hub.state.files(REPO_ID)["README.md"].decode()
    assert len(hub.state.puts) == puts  # the shards were never sent again


def test_a_killed_upload_resumes_on_rerun_sending_only_the_missing_objects(fp8: Path, hub: HubServer) -> None:
    """`qtools publish` in a subprocess, as a user runs it (HF_ENDPOINT, HF_TOKEN from the environment), killed
    while its second LFS object is in flight."""
    hub.state.hold_puts_after = 1  # one shard stored, the next PUTs left hanging until the client is killed
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "hf_stand_in"}
    command = [sys.executable, "-m", "qtools.cli", "publish", str(fp8), "--repo", REPO_ID, "--base-model", "a/b"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert hub.state.held.wait(timeout=300), "the upload never reached its second LFS object"
    finally:
        process.kill()
        process.wait()
    assert len(hub.state.puts) == 1 and hub.state.count("POST", "/commit/") == 0
    first = hub.state.puts[0]

    hub.state.hold_puts_after = None
    summary = publish_checkpoint(_request(fp8, hub, report=None, base_model="a/b"))
    shards = {f.sha256 for f in summary.files if f.path_in_repo.endswith(".safetensors")}
    assert sorted(hub.state.puts[1:]) == sorted(shards - {first})
    stored = hub.state.files(REPO_ID)
    stored.pop(".gitattributes")
    assert stored == _expected_repo(fp8, summary.stage_dir)
