"""The key of a toy build: a digest of everything that decides its weights.

The key hashes the recipe, the seed, the source of `qtools.toy`, `qtools.chat` and `qtools.generation` (data,
template, training code, the gate's decoding; not the modules that only drive, cache or key a build), the Python
version (the training code is its standard library) and the torch, transformers and tokenizers versions. Python
sources are hashed as their syntax tree without docstrings, so editing a docstring, a comment or the formatting
keeps the key (and the committed build).
"""

from __future__ import annotations

import ast
import hashlib
import platform
from importlib import metadata, resources
from pathlib import Path

from qtools.toy.recipe import ToyRecipe

# Written by every build that passes its gate: the key of the recipe, seed, sources and versions it used.
KEY_FILE = "toy_key.txt"
# Modules that decide neither the data, the training nor the gate: editing them keeps the key (and the build).
NOT_IN_KEY = {"qtools.toy": {"__init__.py", "cache.py", "cli.py", "key.py"}}
# Read from package metadata, not by importing them: the key is computed on every test session and demo start.
VERSIONED = ("torch", "transformers", "tokenizers")


def normalised_source(content: bytes) -> bytes:
    """A Python source's syntax tree without docstrings, as text: the same for any comment, docstring or
    formatting edit, different for any change to what the code does."""
    tree = ast.parse(content)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False).encode()


def _fingerprint(name: str, content: bytes) -> bytes:
    return hashlib.sha256(normalised_source(content) if name.endswith(".py") else content).digest()


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
            digest.update(f"{package}/{name}".encode() + b"\0" + _fingerprint(name, content))
    generation = Path(str(resources.files("qtools"))) / "generation.py"  # the gate decodes through it
    digest.update(b"qtools/generation.py\0" + _fingerprint(generation.name, generation.read_bytes()))
    return digest.hexdigest()


def is_current(directory: Path, key: str) -> bool:
    """Whether `directory` holds a finished toy build with `key` (`toy_cache_key` of what would be built now)."""
    key_file = directory / KEY_FILE
    return key_file.is_file() and key_file.read_text().strip() == key
