"""Hostile inputs to `qtools convert`: links out of the source, the Hugging Face cache layout, a source that changed
under a finished output, foreign files in the output, killed and interrupted runs, concurrent runs, incomplete
sources, malformed headers and indexes. Each is refused with `error: <file>: <what>` (exit 2) or handled, and the
source is never written to."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from qtools.checkpoint.hf import INDEX_NAME, STATE_DIR
from qtools.convert import ProgressHooks, convert_checkpoint
from qtools.errors import QtoolsError
from qtools.testing.files import edit_shard, poison_nan, tree_digest
from qtools.testing.hf_cache import hf_cache_copy
from qtools.testing.synth import SynthSpec, make_checkpoint
from qtools.verify import verify_checkpoint

SHARD1 = "model-00001-of-00003.safetensors"
SHARD2 = "model-00002-of-00003.safetensors"
# A source that takes a few seconds to convert, so a run can be caught while it works (12 shards, 65 MB).
SLOW_SPEC = SynthSpec(num_layers=6, hidden_size=512, moe_intermediate_size=384, num_experts=8, shard_bytes=6_000_000)
SLOW_SHARDS = 12


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qtools.cli", *args], capture_output=True, text=True, timeout=600, **kwargs
    )


def _assert_clean_refusal(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "error:" in result.stderr and "Traceback" not in result.stderr, result.stderr
    message = " ".join(result.stderr.split())
    for fragment in fragments:
        assert fragment in message, (fragment, result.stderr)


def _outputs(root: Path) -> dict[str, str]:
    """Digest of an output checkpoint without qtools's own state (which names the source's path and inodes)."""
    return {name: digest for name, digest in tree_digest(root).items() if not name.startswith(STATE_DIR)}


def _shards_written(root: Path) -> list[Path]:
    return sorted(root.glob("*.safetensors*")) if root.exists() else []


def _rewrite_header(path: Path, edit) -> None:
    """Rewrite a safetensors file's header JSON with `edit(header) -> header`, keeping its data bytes."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = edit(json.loads(data[8 : 8 + length]))
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + length :])


def _drop_tensors(root: Path, names: set[str]) -> None:
    """Remove tensors from a checkpoint's shards and its index (a source missing them)."""
    index = json.loads((root / INDEX_NAME).read_text())
    for shard in {index["weight_map"][name] for name in names}:
        tensors = {n: t for n, t in load_file(root / shard).items() if n not in names}
        save_file(tensors, root / shard, metadata={"format": "pt"})
    index["weight_map"] = {n: f for n, f in index["weight_map"].items() if n not in names}
    (root / INDEX_NAME).write_text(json.dumps(index))


@pytest.fixture
def source(synth_checkpoint, tmp_path) -> Path:
    """A private copy of the synthetic checkpoint, free to damage."""
    return shutil.copytree(synth_checkpoint, tmp_path / "src")


@pytest.fixture(scope="module")
def slow_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("slow") / "bf16", SLOW_SPEC, seed=3)


@pytest.fixture(scope="module")
def plain_output(synth_checkpoint, tmp_path_factory) -> Path:
    from qtools.recipe import load_recipe

    out = tmp_path_factory.mktemp("plain") / "fp8"
    convert_checkpoint(synth_checkpoint, out, load_recipe("fp8-block"))
    return out


# D1: links out of the source are refused before any shard is written.


def _outside_file(source: Path) -> Path:
    secret = source.parent / "secret.txt"
    secret.write_text("API_TOKEN=do-not-upload\n")
    return secret


def _link_to_outside_file(source: Path) -> tuple[str, str]:
    (source / "notes.md").symlink_to(_outside_file(source))
    return "notes.md", "secret.txt"


def _link_to_environ(source: Path) -> tuple[str, str]:
    (source / "environment.txt").symlink_to("/proc/self/environ")
    return "environment.txt", "/proc/self/environ"


def _link_in_subfolder(source: Path) -> tuple[str, str]:
    (source / "original").mkdir()
    (source / "original" / "params.json").symlink_to(_outside_file(source))
    return "original/params.json", "secret.txt"


def _dangling_link(source: Path) -> tuple[str, str]:
    (source / "chat_template.jinja").symlink_to(source / "gone.jinja")
    return "chat_template.jinja", "gone.jinja"


def _named_pipe(source: Path) -> tuple[str, str]:
    os.mkfifo(source / "vocab.txt")
    return "vocab.txt", "not a regular file"


def _shard_link_outside(source: Path) -> tuple[str, str]:
    moved = source.parent / "elsewhere.safetensors"
    shutil.move(source / SHARD2, moved)
    (source / SHARD2).symlink_to(moved)
    return SHARD2, "elsewhere.safetensors"


LINKS_OUT = {
    "non-weight file linked outside": _link_to_outside_file,
    "link to /proc/self/environ": _link_to_environ,
    "link in a subfolder": _link_in_subfolder,
    "dangling link": _dangling_link,
    "named pipe": _named_pipe,
    "shard linked outside": _shard_link_outside,
}


@pytest.mark.parametrize("make_link", LINKS_OUT.values(), ids=LINKS_OUT.keys())
def test_links_out_of_the_source_are_refused_before_any_shard(source, tmp_path, fp8_recipe, make_link):
    link, target = make_link(source)
    out = tmp_path / "out"
    with pytest.raises(QtoolsError) as error:
        convert_checkpoint(source, out, fp8_recipe)
    assert link in str(error.value) and target in str(error.value)
    assert not _shards_written(out)


def test_cli_refuses_to_copy_the_environment(source, tmp_path):
    link, target = _link_to_environ(source)
    out = tmp_path / "out"
    _assert_clean_refusal(_cli("convert", str(source), str(out)), link, target)
    assert not _shards_written(out)


def test_links_inside_the_source_are_copied_as_files(source, tmp_path, fp8_recipe):
    (source / "tokenizer").mkdir()
    shutil.move(source / "tokenizer_config.json", source / "tokenizer" / "tokenizer_config.json")
    (source / "tokenizer_config.json").symlink_to("tokenizer/tokenizer_config.json")
    out = tmp_path / "out"
    convert_checkpoint(source, out, fp8_recipe)
    copied = out / "tokenizer_config.json"
    assert not copied.is_symlink() and copied.read_bytes() == (source / "tokenizer_config.json").read_bytes()


# D2: the Hugging Face cache layout.


def test_hugging_face_cache_layout_converts_like_the_plain_one(synth_checkpoint, plain_output, tmp_path, fp8_recipe):
    snapshot = hf_cache_copy(synth_checkpoint, tmp_path / "hub", "org/synth")
    assert (snapshot / SHARD1).is_symlink() and "blobs" in os.readlink(snapshot / SHARD1)
    before = tree_digest(snapshot.parents[1])
    out = tmp_path / "out"
    convert_checkpoint(snapshot, out, fp8_recipe)
    assert _outputs(out) == _outputs(plain_output)
    assert not any(path.is_symlink() for path in out.rglob("*"))
    assert tree_digest(snapshot.parents[1]) == before
    assert verify_checkpoint(out).ok


def test_hugging_face_cache_link_into_another_repo_is_refused(synth_checkpoint, tmp_path, fp8_recipe):
    snapshot = hf_cache_copy(synth_checkpoint, tmp_path / "hub", "org/synth")
    other = hf_cache_copy(synth_checkpoint, tmp_path / "hub", "org/other")
    (snapshot / SHARD2).unlink()
    (snapshot / SHARD2).symlink_to(os.path.realpath(other / SHARD2))
    with pytest.raises(QtoolsError, match=re.escape(SHARD2)) as error:
        convert_checkpoint(snapshot, tmp_path / "out", fp8_recipe)
    assert "models--org--other" in str(error.value)


@pytest.mark.parametrize(
    "shard_name",
    ["/tmp/model-00002-of-00003.safetensors", "sub/../../model-00002-of-00003.safetensors", "sub/x.safetensors"],
    ids=["absolute", "escape through a subfolder", "subfolder"],
)
def test_index_entries_must_name_files_in_the_checkpoint(source, tmp_path, fp8_recipe, shard_name):
    (source / "sub").mkdir()
    save_file({"lm_head.weight": torch.zeros(1)}, source / "sub" / "x.safetensors")
    index = json.loads((source / INDEX_NAME).read_text())
    index["weight_map"]["lm_head.weight"] = shard_name
    (source / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(QtoolsError, match=re.escape(repr(shard_name))):
        convert_checkpoint(source, tmp_path / "out", fp8_recipe)


# D3: a finished output is not reused for a source that changed since.


def test_resume_redoes_shards_whose_source_changed(source, tmp_path, fp8_recipe):
    out = tmp_path / "out"
    convert_checkpoint(source, out, fp8_recipe)
    finetune = make_checkpoint(tmp_path / "finetune", SynthSpec(), seed=1)
    for shard in (SHARD1, SHARD2, "model-00003-of-00003.safetensors"):
        shutil.copyfile(finetune / shard, source / shard)
    assert (source / INDEX_NAME).read_bytes() == (finetune / INDEX_NAME).read_bytes()
    with pytest.warns(UserWarning, match="changed since"):
        summary = convert_checkpoint(source, out, fp8_recipe)
    assert summary.shards_converted == 3 and summary.shards_reused == 0
    expected = tmp_path / "expected"
    convert_checkpoint(finetune, expected, fp8_recipe)
    assert _outputs(out) == _outputs(expected)


def test_resume_redoes_only_the_changed_shard(source, tmp_path, fp8_recipe):
    out = tmp_path / "out"
    convert_checkpoint(source, out, fp8_recipe)
    finetune = make_checkpoint(tmp_path / "finetune", SynthSpec(), seed=1)
    shutil.copy2(finetune / SHARD2, source / SHARD2)
    with pytest.warns(UserWarning, match=re.escape(SHARD2)):
        summary = convert_checkpoint(source, out, fp8_recipe)
    assert summary.shards_converted == 1 and summary.shards_reused == 2
    fresh = tmp_path / "fresh"
    convert_checkpoint(source, fresh, fp8_recipe)
    assert _outputs(out) == _outputs(fresh)
    record = json.loads((out / STATE_DIR / "shards" / f"{SHARD2}.json").read_text())
    stat = (source / SHARD2).stat()
    assert record["source"]["size"] == stat.st_size and record["source"]["mtime_ns"] == stat.st_mtime_ns
    assert record["source"]["inode"] == stat.st_ino
    assert {"header_sha256", "read_digest"} <= set(record["source"])


# D5: --overwrite deletes only what qtools wrote.


def test_overwrite_refuses_to_delete_foreign_files(synth_checkpoint, tmp_path, fp8_recipe):
    out = tmp_path / "out"
    convert_checkpoint(synth_checkpoint, out, fp8_recipe)
    (out / "MODEL_CARD.md").write_text("my notes")
    (out / "eval").mkdir()
    (out / "eval" / "humaneval.json").write_text("{}")
    before = tree_digest(out)
    other = fp8_recipe.model_copy(update={"scale_dtype": "bfloat16"})
    with pytest.raises(QtoolsError) as error:
        convert_checkpoint(synth_checkpoint, out, other, overwrite=True)
    assert "MODEL_CARD.md" in str(error.value) and "eval/humaneval.json" in str(error.value)
    assert tree_digest(out) == before
    shutil.rmtree(out / "eval")
    (out / "MODEL_CARD.md").unlink()
    summary = convert_checkpoint(synth_checkpoint, out, other, overwrite=True)
    assert summary.shards_converted == summary.shards_total and verify_checkpoint(out).ok


def test_overwrite_deletes_what_qtools_copied(source, tmp_path, fp8_recipe):
    (source / "original").mkdir()
    (source / "original" / "params.json").write_text("{}")
    out = tmp_path / "out"
    convert_checkpoint(source, out, fp8_recipe)
    assert (out / "original" / "params.json").exists()
    (source / "original" / "params.json").unlink()
    (source / "original").rmdir()
    other = fp8_recipe.model_copy(update={"scale_dtype": "bfloat16"})
    convert_checkpoint(source, out, other, overwrite=True)
    assert not (out / "original").exists() and verify_checkpoint(out).ok


# D6: workers die with their parent.


def _stat(path: Path) -> list[str] | None:
    try:
        return path.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _session_members(session: int) -> list[int]:
    """Live processes of a session: every process a command started, even once orphaned.

    A killed process whose main thread is already a zombie still counts while any other thread of it is winding
    down: those threads still hold its files open.
    """
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or (fields := _stat(entry / "stat")) is None or int(fields[3]) != session:
            continue
        threads = [_stat(task / "stat") for task in (entry / "task").glob("*")]
        if any(thread is not None and thread[0] not in "ZX" for thread in threads):
            members.append(int(entry.name))
    return members


def _wait_for(condition, process: subprocess.Popen, what: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"no {what} after {seconds} s"
        time.sleep(0.02)


def _start_cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "qtools.cli", *args], start_new_session=True, text=True, **kwargs)


def test_kill_9_takes_the_workers_with_it(slow_checkpoint, tmp_path, fp8_recipe):
    out = tmp_path / "out"
    process = _start_cli(
        "convert",
        str(slow_checkpoint),
        str(out),
        "--workers",
        "2",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: len(_session_members(process.pid)) >= 3, process, "two workers")
        process.kill()
        process.wait()
        # Generous: a worker needs only to notice (the kernel signals it at once on Linux).
        deadline = time.monotonic() + 30
        while alive := _session_members(process.pid):
            assert time.monotonic() < deadline, f"still running 30 s after their parent was killed: {alive}"
            time.sleep(0.05)
    finally:
        for pid in _session_members(process.pid):
            os.kill(pid, signal.SIGKILL)
    summary = convert_checkpoint(slow_checkpoint, out, fp8_recipe, workers=2)
    assert summary.shards_converted + summary.shards_reused == SLOW_SHARDS and verify_checkpoint(out).ok


# D16: one run per output directory.


def test_second_run_on_the_same_output_refuses_naming_the_holder(synth_checkpoint, tmp_path, fp8_recipe):
    from qtools.convert.lock import destination_lock

    out = tmp_path / "out"
    with destination_lock(out):
        result = _cli("convert", str(synth_checkpoint), str(out))
        _assert_clean_refusal(result, f"pid {os.getpid()}", socket.gethostname(), "another")
        assert not _shards_written(out)
    convert_checkpoint(synth_checkpoint, out, fp8_recipe)
    assert verify_checkpoint(out).ok and not (out / STATE_DIR / "lock").exists()


def test_lock_is_released_when_a_run_fails(source, tmp_path, fp8_recipe):
    from qtools.convert.lock import destination_lock

    edit_shard(source / SHARD2, lambda n: n.endswith("down_proj.weight"), poison_nan)
    out = tmp_path / "out"
    with pytest.raises(QtoolsError, match="NaN"):
        convert_checkpoint(source, out, fp8_recipe)
    assert not (out / STATE_DIR / "lock").exists()
    with destination_lock(out):
        pass


def test_a_forked_child_does_not_keep_a_dead_runs_lock(tmp_path):
    # A worker forked while the run holds the lock must not hold it on: when the run is killed (no unlock, no
    # unlink), the next run has to find the lock free even while the worker is still alive.
    from qtools.convert.lock import destination_lock

    out = tmp_path / "out"
    read_end, write_end = os.pipe()
    run = os.fork()
    if run == 0:
        try:
            with destination_lock(out):
                worker = os.fork()
                if worker == 0:
                    time.sleep(60)
                    os._exit(0)
                os.write(write_end, str(worker).encode())
                os._exit(0)  # as a kill -9 would: the lock's file stays, nothing unlocks it
        finally:
            os._exit(1)
    os.close(write_end)
    _, status = os.waitpid(run, 0)
    worker = int(os.read(read_end, 32) or 0)
    os.close(read_end)
    try:
        assert os.waitstatus_to_exitcode(status) == 0 and worker > 0
        assert (out / STATE_DIR / "lock").exists()
        with destination_lock(out):
            pass
    finally:
        if worker > 0:
            os.kill(worker, signal.SIGKILL)


# D7: an incomplete source is refused before any data is read.


def test_missing_tensor_is_refused(source, tmp_path, fp8_recipe):
    _drop_tensors(source, {"model.layers.1.self_attn.o_proj.weight"})
    out = tmp_path / "out"
    with pytest.raises(QtoolsError, match=re.escape("model.layers.1.self_attn.o_proj.weight")):
        convert_checkpoint(source, out, fp8_recipe)
    assert not _shards_written(out)


def test_missing_layer_is_refused_with_a_summary(source, tmp_path, fp8_recipe):
    index = json.loads((source / INDEX_NAME).read_text())
    layer = {name for name in index["weight_map"] if name.startswith("model.layers.1.")}
    _drop_tensors(source, layer)
    with pytest.raises(QtoolsError, match=f"{len(layer)} tensor") as error:
        convert_checkpoint(source, tmp_path / "out", fp8_recipe)
    assert "more" in str(error.value) and str(error.value).count("model.layers.1.") < 10


def test_tied_embeddings_without_lm_head_are_accepted(source, tmp_path, fp8_recipe):
    config = json.loads((source / "config.json").read_text())
    config["tie_word_embeddings"] = True
    (source / "config.json").write_text(json.dumps(config))
    _drop_tensors(source, {"lm_head.weight"})
    out = tmp_path / "out"
    summary = convert_checkpoint(source, out, fp8_recipe)
    assert summary.shards_converted == 3 and "lm_head.weight" not in load_file(out / "model-00003-of-00003.safetensors")


# D8: tensors a shard holds but the index does not list.


def test_tensor_missing_from_the_index_is_refused(source, tmp_path, fp8_recipe):
    tensors = load_file(source / SHARD2)
    tensors["model.layers.0.mlp.shared_expert_gate.weight"] = torch.zeros(1, 320, dtype=torch.bfloat16)
    save_file(tensors, source / SHARD2, metadata={"format": "pt"})
    with pytest.raises(QtoolsError, match="shared_expert_gate") as error:
        convert_checkpoint(source, tmp_path / "out", fp8_recipe)
    assert SHARD2 in str(error.value)


# D11: headers safetensors itself refuses.


def _alias_two_experts(header: dict) -> dict:
    header["model.layers.0.mlp.experts.1.up_proj.weight"]["data_offsets"] = header[
        "model.layers.0.mlp.experts.0.up_proj.weight"
    ]["data_offsets"]
    return header


def _float_offsets(header: dict) -> dict:
    entry = header["model.layers.0.input_layernorm.weight"]
    entry["data_offsets"] = [float(o) for o in entry["data_offsets"]]
    return header


@pytest.mark.parametrize("edit", [_alias_two_experts, _float_offsets], ids=["aliased", "float offsets"])
def test_header_safetensors_refuses_is_refused_by_convert(source, tmp_path, fp8_recipe, edit):
    _rewrite_header(source / SHARD1, edit)
    with pytest.raises(QtoolsError, match=re.escape(SHARD1)) as error:
        convert_checkpoint(source, tmp_path / "out", fp8_recipe)
    assert "model.layers.0." in str(error.value)
    assert not _shards_written(tmp_path / "out")


# D14: clean refusals instead of tracebacks.


def _metadata_list(root: Path) -> str:
    _rewrite_header(root / SHARD1, lambda header: {**header, "__metadata__": ["format", "pt"]})
    return SHARD1


def _nested_header(root: Path) -> str:
    _rewrite_header(root / SHARD1, lambda header: b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    return SHARD1


def _index_value_number(root: Path) -> str:
    index = json.loads((root / INDEX_NAME).read_text())
    index["weight_map"]["lm_head.weight"] = 3
    (root / INDEX_NAME).write_text(json.dumps(index))
    return "lm_head.weight"


def _index_value_list(root: Path) -> str:
    index = json.loads((root / INDEX_NAME).read_text())
    index["weight_map"]["lm_head.weight"] = [SHARD1]
    (root / INDEX_NAME).write_text(json.dumps(index))
    return "lm_head.weight"


def _weight_map_list(root: Path) -> str:
    index = json.loads((root / INDEX_NAME).read_text())
    index["weight_map"] = sorted(index["weight_map"].items())
    (root / INDEX_NAME).write_text(json.dumps(index))
    return "weight_map"


def _nested_index(root: Path) -> str:
    (root / INDEX_NAME).write_text('{"weight_map":' + "[" * 100_000 + "]" * 100_000 + "}")
    return INDEX_NAME


BAD_SOURCES = {
    "__metadata__ not an object": _metadata_list,
    "deeply nested header": _nested_header,
    "index value a number": _index_value_number,
    "index value a list": _index_value_list,
    "weight_map not an object": _weight_map_list,
    "deeply nested index": _nested_index,
}


# The CLI prints every QtoolsError as `error: <message>` and exits 2 (test_bad_input.py, and the CLI cases
# below): a library call that raises QtoolsError naming the file is what each of these needs.
@pytest.mark.parametrize("damage", BAD_SOURCES.values(), ids=BAD_SOURCES.keys())
def test_malformed_source_is_a_clean_refusal(source, tmp_path, fp8_recipe, damage):
    named = damage(source)
    before = tree_digest(source)
    with pytest.raises(QtoolsError, match=re.escape(named)):
        convert_checkpoint(source, tmp_path / "out", fp8_recipe)
    assert tree_digest(source) == before


def test_cli_malformed_header_is_a_clean_refusal(source, tmp_path):
    named = _nested_header(source)
    _assert_clean_refusal(_cli("convert", str(source), str(tmp_path / "out"), "--device", "cpu"), named)


def test_corrupt_plan_is_a_clean_refusal(synth_checkpoint, tmp_path, fp8_recipe):
    out = tmp_path / "out"
    convert_checkpoint(synth_checkpoint, out, fp8_recipe)
    (out / STATE_DIR / "plan.json").write_text('{"source": ')
    before = tree_digest(out)
    for overwrite in (False, True):
        with pytest.raises(QtoolsError, match="plan.json"):
            convert_checkpoint(synth_checkpoint, out, fp8_recipe, overwrite=overwrite)
    assert tree_digest(out) == before


@pytest.mark.parametrize("device", ["tpu", "meta", "cuda:x"])
def test_unknown_device_is_refused_before_the_run(synth_checkpoint, tmp_path, fp8_recipe, device):
    out = tmp_path / "out"
    with pytest.raises(QtoolsError, match=re.escape(repr(device))):
        convert_checkpoint(synth_checkpoint, out, fp8_recipe, device=device)
    assert not out.exists()


def test_cli_unknown_device_is_refused(synth_checkpoint, tmp_path):
    out = tmp_path / "out"
    _assert_clean_refusal(_cli("convert", str(synth_checkpoint), str(out), "--device", "tpu"), "'tpu'")
    assert not out.exists()


def test_dangling_symlink_destination_is_refused(synth_checkpoint, tmp_path, fp8_recipe):
    out = tmp_path / "out"
    out.symlink_to(tmp_path / "nowhere")
    with pytest.raises(QtoolsError, match="nowhere") as error:
        convert_checkpoint(synth_checkpoint, out, fp8_recipe)
    assert str(out) in str(error.value)
    assert not (tmp_path / "nowhere").exists()


def test_read_only_destination_is_refused(synth_checkpoint, tmp_path, fp8_recipe):
    out = tmp_path / "out"
    out.mkdir()
    # Root ignores permission bits but not the immutable attribute.
    protect = ["chattr", "+i", str(out)] if os.geteuid() == 0 else ["chmod", "555", str(out)]
    subprocess.run(protect, check=True)
    try:
        with pytest.raises(QtoolsError, match=re.escape(str(out))):
            convert_checkpoint(synth_checkpoint, out, fp8_recipe)
    finally:
        subprocess.run(["chattr", "-i", str(out)] if os.geteuid() == 0 else ["chmod", "755", str(out)], check=True)
    assert not list(out.iterdir())


def test_full_disk_while_copying_non_weight_files_cleans_up(source, tmp_path, fp8_recipe):
    """A file-size limit above every output shard but below one non-weight file fails the copy (EFBIG)."""
    (source / "original").mkdir()
    (source / "original" / "consolidated.bin").write_bytes(b"\x01" * 3_000_000)
    out = tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))
        from qtools.cli import app
        sys.argv = ["qtools", "convert", {str(source)!r}, {str(out)!r}]
        app()
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    _assert_clean_refusal(result, "original/consolidated.bin", "write failed")
    assert not list(out.rglob("*.partial"))
    assert not verify_checkpoint(out).ok
    convert_checkpoint(source, out, fp8_recipe)
    assert verify_checkpoint(out).ok


# D17: no more workers than shards.


def test_workers_are_capped_at_the_shard_count(synth_checkpoint, tmp_path, fp8_recipe):
    warned: list[str] = []
    hooks = ProgressHooks(on_warning=warned.append)
    summary = convert_checkpoint(synth_checkpoint, tmp_path / "out", fp8_recipe, workers=48, hooks=hooks)
    assert summary.workers == 3
    assert bool(warned) == (3 > (os.cpu_count() or 1)), warned


def test_more_workers_than_cores_is_a_warning(synth_checkpoint, tmp_path, fp8_recipe, monkeypatch):
    # As under torchrun with one local rank per core: each rank has one core to itself.
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(os.cpu_count() or 1))
    with pytest.warns(UserWarning, match=re.escape("2 worker processes on 1 core(s)")):
        summary = convert_checkpoint(synth_checkpoint, tmp_path / "out", fp8_recipe, workers=2)
    assert summary.workers == 2 and verify_checkpoint(tmp_path / "out").ok


# D18: Ctrl-C says how far the run got.


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_reports_progress_and_exits_130(slow_checkpoint, tmp_path, fp8_recipe, workers):
    out = tmp_path / "out"
    process = _start_cli(
        "convert",
        str(slow_checkpoint),
        str(out),
        "--workers",
        str(workers),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    records = out / STATE_DIR / "shards"
    if workers == 1:
        _wait_for(lambda: records.is_dir() and any(records.iterdir()), process, "a finished shard")
    else:
        _wait_for(lambda: len(_session_members(process.pid)) >= 3, process, "two workers")
    # Ctrl-C in a terminal signals the whole foreground process group.
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    done = re.search(rf"(\d+) of {SLOW_SHARDS} shards", stderr)
    assert done and "rerun the same command" in " ".join(stderr.split()), stderr
    assert not _session_members(process.pid) and not list(out.glob("*.partial"))
    summary = convert_checkpoint(slow_checkpoint, out, fp8_recipe, workers=2)
    assert summary.shards_reused == int(done.group(1))
    assert verify_checkpoint(out).ok
