"""Sending a staged folder to the Hub through huggingface_hub, resumably.

`upload_folder` is rerun-safe by itself (huggingface_hub 1.33, LFS path): its preupload call returns each
existing file's oid and it drops from the commit every file whose oid matches (`_remote_oid == _local_oid`); the
LFS batch call answers "already stored" (no upload action) for objects the server holds, committed or left by an
interrupted run, and those are not sent again; the commit is one NDJSON request, so a killed upload commits
nothing and a rerun commits everything. With hf_xet installed (the default) the same call goes through Xet's
pipeline instead, which also resumes by being rerun. `plan_upload` asks the server the same two questions first
(the repository's tree, the LFS batch), so the summary can say what will be sent and what skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qtools.checkpoint.identity import CARD_NAME
from qtools.errors import QtoolsError

# Files the Hub stores in git itself rather than LFS are at most this big (its preupload rule for text files).
REGULAR_MAX_BYTES = 10 * 1024 * 1024
PUBLIC_HUB = "https://huggingface.co"


@dataclass(frozen=True)
class StagedFile:
    """One file to publish: its path in the repository, size and SHA-256 (the LFS oid)."""

    path_in_repo: str
    size: int
    sha256: str


@dataclass
class UploadPlan:
    """Which staged files the repository already holds unchanged (`skipped`), which are sent (`send`), and of
    those the ones whose bytes the server already stores from an interrupted run (`stored`: committed, not
    re-sent)."""

    skipped: list[StagedFile] = field(default_factory=list)
    send: list[StagedFile] = field(default_factory=list)
    stored: list[StagedFile] = field(default_factory=list)
    remote_card: bool = False

    @property
    def bytes_to_send(self) -> int:
        stored = {f.path_in_repo for f in self.stored}
        return sum(f.size for f in self.send if f.path_in_repo not in stored)


def hub_api(endpoint: str | None, token: str | None):
    """An `HfApi` for `endpoint` (None: HF_ENDPOINT or the Hub) with `token` (None: HF_TOKEN or the saved login).
    Raises QtoolsError, with the install command, when huggingface_hub is missing."""
    try:
        from huggingface_hub import HfApi
    except ImportError as error:
        raise QtoolsError("qtools publish needs huggingface_hub: pip install 'huggingface_hub>=1.33'") from error
    return HfApi(endpoint=endpoint, token=token)


def require_token(api) -> None:
    """QtoolsError when no token is configured for the public Hub (a local stand-in needs none)."""
    from huggingface_hub import get_token

    if api.token is None and get_token() is None and api.endpoint.rstrip("/") == PUBLIC_HUB:
        raise QtoolsError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a write token is needed)")


def prepare_repo(api, repo_id: str, private: bool, revision: str | None) -> None:
    """Create the model repository when it does not exist (`exist_ok`), and the branch `revision` from main."""
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)


def remote_files(api, repo_id: str, revision: str | None) -> dict[str, tuple[int, str | None, str]]:
    """path -> (size, LFS sha256 or None, git blob id) of every file at `revision`; {} for an empty repository."""
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    try:
        entries = list(api.list_repo_tree(repo_id, recursive=True, revision=revision, repo_type="model"))
    except (EntryNotFoundError, RevisionNotFoundError):
        return {}
    return {
        entry.path: (entry.size, entry.lfs.sha256 if entry.lfs else None, entry.blob_id)
        for entry in entries
        if hasattr(entry, "size")
    }


def _git_blob_id(path: Path) -> str:
    from huggingface_hub.utils.sha import git_hash

    return git_hash(path.read_bytes())


def plan_upload(api, repo_id: str, revision: str | None, folder: Path, files: list[StagedFile]) -> UploadPlan:
    """What `upload_folder(folder)` will skip and send, asked of the server the way huggingface_hub asks it."""
    from huggingface_hub.lfs import UploadInfo, post_lfs_batch_info
    from huggingface_hub.utils import build_hf_headers

    remote = remote_files(api, repo_id, revision)
    plan = UploadPlan(remote_card=CARD_NAME in remote)
    for staged in files:
        there = remote.get(staged.path_in_repo)
        same = (
            there is not None
            and there[0] == staged.size
            and (
                there[1] == staged.sha256
                if there[1] is not None
                else staged.size <= REGULAR_MAX_BYTES and there[2] == _git_blob_id(folder / staged.path_in_repo)
            )
        )
        (plan.skipped if same else plan.send).append(staged)
    large = [f for f in plan.send if f.size > 0]
    if large:
        infos = [UploadInfo(sha256=bytes.fromhex(f.sha256), size=f.size, sample=b"") for f in large]
        actions, _, _ = post_lfs_batch_info(
            upload_infos=infos,
            repo_id=repo_id,
            repo_type="model",
            revision=revision,
            endpoint=api.endpoint,
            headers=build_hf_headers(token=api.token),
            token=None,
            transfers=["basic", "multipart"],
        )
        present = {action["oid"] for action in actions if action.get("actions") is None}
        plan.stored = [f for f in large if f.sha256 in present]
    return plan


def send_folder(api, repo_id: str, folder: Path, revision: str | None, create_pr: bool, message: str):
    """`upload_folder` of everything in `folder` (files already there are skipped by huggingface_hub); returns
    its CommitInfo."""
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        repo_type="model",
        revision=revision,
        create_pr=create_pr,
        commit_message=message,
    )
