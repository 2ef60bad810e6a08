"""The built wheels, installed into a fresh environment, convert and verify a checkpoint with no `--recipe`: the
package carries everything it reads at run time (recipes, chat template, kernel configs) and reaches into no
repository directory.

The environment reuses this one's installed dependencies (torch, transformers, ...) through a `.pth` line naming
this interpreter's site-packages; Python does not process the `.pth` files found there, so the editable installs
of qtools and qtools_kernels in it stay invisible and only the two wheels can be imported. Everything runs
offline, from a directory outside the repository, without PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# What the two wheels are built from (pip builds in the source tree, so a copy keeps the checkout clean).
SOURCES = ("pyproject.toml", "README.md", "qtools", "kernels")


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_installed_wheels_convert_and_verify_with_the_default_recipe(synth_checkpoint, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONNOUSERSITE="1")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    source = tmp_path / "source"
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(
                REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "*.so")
            )
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(wheels)]
    _run([*build, str(source / "kernels"), str(source)], elsewhere, env)
    built = sorted(p.name for p in wheels.glob("*.whl"))
    assert [n.split("-")[0] for n in built] == ["qtools_kernels", "qtools_moe"], built

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], elsewhere, env)
    python = venv / "bin" / "python"
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    assert site.is_dir(), site
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(
        [*pip, "--python", str(python), "install", "--no-deps", "--no-index", "-q", *map(str, wheels.glob("*.whl"))],
        elsewhere,
        env,
    )

    probe = "import importlib.util, qtools; print(qtools.__file__, importlib.util.find_spec('qtools_kernels').origin)"
    located = _run([str(python), "-c", probe], elsewhere, env).stdout.split()
    assert len(located) == 2 and all(Path(p).resolve().is_relative_to(site.resolve()) for p in located), located

    if shutil.which("cc"):  # the wheel compiles the converter's loops; without a compiler it still installs
        probe = "from qtools.numerics import native, _native; print(native.built(), _native.__file__)"
        built_native, where = _run([str(python), "-c", probe], elsewhere, env).stdout.split()
        assert built_native == "True" and Path(where).resolve().is_relative_to(site.resolve()), (built_native, where)

    out = tmp_path / "fp8"
    _run([str(venv / "bin" / "qtools"), "convert", str(synth_checkpoint), str(out)], elsewhere, env)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "fp8"  # the default recipe: fp8-block, hf-fp8
    verified = _run([str(venv / "bin" / "qtools"), "verify", str(out)], elsewhere, env)
    assert "OK" in verified.stdout
