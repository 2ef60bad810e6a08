"""A cache of built toy models, one directory per build key (`qtools.toy.key`).

A build goes to a temporary sibling directory and is renamed into place only once it has passed its gate, so an
interrupted or failed build is never reused and concurrent builders do not clash.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from qtools.toy.key import is_current, toy_cache_key
from qtools.toy.recipe import ToyRecipe

CACHE_ENV = "QTOOLS_CACHE"


def cache_root() -> Path:
    """`$QTOOLS_CACHE`, else `~/.cache/qtools`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "qtools")


def cached_toy_model(
    recipe: ToyRecipe | None = None, seed: int = 0, root: Path | None = None, prebuilt: Path | None = None
) -> Path:
    """Directory of the toy model for `recipe` and `seed`: `prebuilt` when it holds a current build (e.g. the
    one committed to the repository), else the cache's, building it first when the cache lacks it."""
    from qtools.toy.build import build_toy_model

    recipe = recipe or ToyRecipe()
    key = toy_cache_key(recipe, seed)  # hashes the sources: computed once
    if prebuilt is not None and is_current(prebuilt, key):
        return prebuilt
    root = root or cache_root()
    target = root / f"toy-{key[:16]}"
    if is_current(target, key):
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.building-", dir=root))
    try:
        build_toy_model(staging, seed=seed, recipe=recipe)
        try:
            staging.rename(target)
        except OSError:
            if not is_current(target, key):
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
