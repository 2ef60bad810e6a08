"""A cache of built toy models, keyed by everything that decides the weights.

The key hashes the recipe, the source of `qtools.toy`, `qtools.chat` and `qtools.generation` (data, template,
training code, the gate's decoding; not the modules that only drive or cache a build), the Python version (the
training code is its standard library) and the torch, transformers and tokenizers versions. A build goes to a
temporary sibling directory and is renamed into place only once it has passed its gate, so an interrupted or
failed build is never reused and concurrent builders do not clash.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import tempfile
from importlib import metadata, resources
from pathlib import Path

from qtools.toy.recipe import ToyRecipe

CACHE_ENV = "QTOOLS_CACHE"
# Written by every build that passes its gate: the key of the recipe, seed, sources and versions it used.
KEY_FILE = "toy_key.txt"
# Modules that decide neither the data, the training nor the gate: editing them keeps the key (and the build).
NOT_IN_KEY = {"qtools.toy": {"__init__.py", "cache.py", "cli.py"}}
# Read from package metadata, not by importing them: the key is computed on every test session and demo start.
VERSIONED = ("torch", "transformers", "tokenizers")


def cache_root() -> Path:
    """`$QTOOLS_CACHE`, else `~/.cache/qtools`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "qtools")


def _package_sources(package: str) -> list[tuple[str, bytes]]:
    root = Path(str(resources.files(package)))
    skipped = NOT_IN_KEY.get(package, set())
    found = []
    for entry in sorted(root.rglob("*")):
        name = entry.relative_to(root).as_posix()
        if entry.is_file() and entry.suffix in {".py", ".jinja", ".json"} and name not in skipped:
            found.append((name, entry.read_bytes()))
    return found


def toy_cache_key(recipe: ToyRecipe, seed: int) -> str:
    """Hex digest identifying the weights a build with `recipe` and `seed` produces on this software stack."""
    digest = hashlib.sha256()
    versions = (platform.python_version(), *(metadata.version(name) for name in VERSIONED))
    for part in (recipe.sha256(), str(seed), *versions):
        digest.update(part.encode() + b"\0")
    for package in ("qtools.toy", "qtools.chat"):
        for name, content in _package_sources(package):
            digest.update(f"{package}/{name}".encode() + b"\0" + hashlib.sha256(content).digest())
    generation = Path(str(resources.files("qtools"))) / "generation.py"  # the gate decodes through it
    digest.update(b"qtools/generation.py\0" + hashlib.sha256(generation.read_bytes()).digest())
    return digest.hexdigest()


def is_current(directory: Path, recipe: ToyRecipe, seed: int) -> bool:
    """Whether `directory` holds a finished toy build whose key is the one this code would build now."""
    key_file = directory / KEY_FILE
    return key_file.is_file() and key_file.read_text().strip() == toy_cache_key(recipe, seed)


def cached_toy_model(
    recipe: ToyRecipe | None = None, seed: int = 0, root: Path | None = None, prebuilt: Path | None = None
) -> Path:
    """Directory of the toy model for `recipe` and `seed`: `prebuilt` when it holds a current build (e.g. the
    one committed to the repository), else the cache's, building it first when the cache lacks it."""
    from qtools.toy.build import build_toy_model

    recipe = recipe or ToyRecipe()
    if prebuilt is not None and is_current(prebuilt, recipe, seed):
        return prebuilt
    root = root or cache_root()
    target = root / f"toy-{toy_cache_key(recipe, seed)[:16]}"
    if is_current(target, recipe, seed):
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.building-", dir=root))
    try:
        build_toy_model(staging, seed=seed, recipe=recipe)
        try:
            staging.rename(target)
        except OSError:
            if not is_current(target, recipe, seed):
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
