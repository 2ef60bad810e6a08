"""`publish_checkpoint`: gate, stage, card, upload.

1. refuse (`gate`): a bad repository name, a checkpoint `qtools verify` rejects, a check report that failed or
   measured other files (SHA-256 of every file, `qtools.checkpoint.identity`), a card of the checkpoint's own
   without `card_overwrite`. Nothing is sent and nothing in the checkpoint is changed.
2. stage: a fresh folder (default `CKPT/.qtools/publish/`) of links to the checkpoint's files (never `.qtools/`,
   never a file outside the checkpoint: `Checkpoint.extra_files` refuses those) plus the card and its plots.
3. dry run: stop there. Otherwise create the repository (`exist_ok`), plan (what is there already) and
   `upload_folder` the staging folder; a rerun resumes (see `qtools.publish.upload`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qtools.checkpoint.hf import STATE_DIR
from qtools.checkpoint.identity import CARD_NAME, checkpoint_identity, file_sha256
from qtools.errors import QtoolsError
from qtools.publish.card import plot_images, render_card
from qtools.publish.card_inputs import gather_card_inputs
from qtools.publish.gate import check_repo_id, load_report, require_passed_for, require_verified
from qtools.publish.upload import (
    StagedFile,
    UploadPlan,
    hub_api,
    plan_upload,
    prepare_repo,
    require_token,
    send_folder,
)

STAGE_NAME = "publish"


@dataclass(frozen=True)
class PublishRequest:
    """The options of `qtools publish` (see docs/publish.md)."""

    checkpoint: Path
    repo_id: str
    report: Path | None = None
    private: bool = False
    revision: str | None = None
    create_pr: bool = False
    dry_run: bool = False
    base_model: str | None = None
    card_overwrite: bool = False
    stage_dir: Path | None = None
    endpoint: str | None = None
    token: str | None = None


@dataclass
class PublishSummary:
    """What was staged (`files`, the card among them) and, after an upload, what the plan said was skipped and
    sent, and the commit's URL."""

    stage_dir: Path
    files: list[StagedFile]
    plan: UploadPlan | None = None
    commit_url: str | None = None
    pr_url: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def _stage(checkpoint: Path, stage: Path, identity: dict, card: str, images: dict[str, str]) -> list[StagedFile]:
    """Fill `stage` afresh: a link to each checkpoint file of `identity`, the card and the images."""
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    root = checkpoint.resolve()
    files = []
    for name, entry in identity["files"].items():
        target = stage / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(root / name, target)
        files.append(StagedFile(name, entry["size"], entry["sha256"]))
    written = {CARD_NAME: card, **images}
    for name, text in written.items():
        if name in identity["files"]:
            raise QtoolsError(f"{checkpoint / name}: the checkpoint holds a file the card would replace; rename it")
        path = stage / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        files.append(StagedFile(name, path.stat().st_size, file_sha256(path)))
    return sorted(files, key=lambda f: f.path_in_repo)


def publish_checkpoint(request: PublishRequest, say: Callable[[str], None] | None = None) -> PublishSummary:
    """Publish `request.checkpoint` to `request.repo_id` (or, with `dry_run`, only stage it); see the module
    docstring for the order of things. Raises QtoolsError for every refusal and for a failed upload (the message
    says to rerun, which resumes)."""
    say = say or (lambda message: None)
    checkpoint = request.checkpoint
    check_repo_id(request.repo_id)
    if request.create_pr and request.revision not in (None, "main"):
        raise QtoolsError("--create-pr opens a pull request against main: leave out --revision (or give main)")
    if not checkpoint.is_dir():
        raise QtoolsError(f"{checkpoint}: not a directory")
    if (checkpoint / CARD_NAME).exists() and not request.card_overwrite:
        raise QtoolsError(
            f"{checkpoint / CARD_NAME}: the checkpoint has a card of its own (perhaps the base model's, copied by "
            "convert); pass --card-overwrite to publish the qtools card in its place (the file is not changed)"
        )
    report = load_report(request.report) if request.report is not None else None
    require_verified(checkpoint)
    say("verify: passed")
    say("hashing the checkpoint's files (SHA-256)")
    identity = checkpoint_identity(checkpoint)
    if report is not None:
        require_passed_for(report, identity, request.report)
        say(f"report: passed, measured these exact {len(identity['files'])} files")
    inputs = gather_card_inputs(checkpoint, request.repo_id, report, request.base_model)
    images = plot_images(report)
    card = render_card(inputs, sorted(images))
    stage = request.stage_dir or checkpoint / STATE_DIR / STAGE_NAME
    files = _stage(checkpoint, stage, identity, card, images)
    summary = PublishSummary(stage, files)
    if not inputs.base_model:
        summary.warnings.append("no base model known: the card has no base_model (pass --base-model ORG/NAME)")
    if request.dry_run:
        return summary
    api = hub_api(request.endpoint, request.token)
    require_token(api)
    from huggingface_hub.errors import HfHubHTTPError

    try:
        prepare_repo(api, request.repo_id, request.private, None if request.create_pr else request.revision)
        plan = plan_upload(api, request.repo_id, request.revision, stage, files)
        summary.plan = plan
        if plan.remote_card and CARD_NAME in {f.path_in_repo for f in plan.send} and not request.card_overwrite:
            raise QtoolsError(
                f"{request.repo_id} already has a README.md that is not this card; pass --card-overwrite to replace it"
            )
        say(
            f"upload: {len(plan.send)} file(s) to send ({plan.bytes_to_send} bytes), {len(plan.skipped)} already "
            f"in the repository, {len(plan.stored)} stored by an earlier run and not re-sent"
        )
        info = send_folder(
            api, request.repo_id, stage, request.revision, request.create_pr,
            f"qtools publish: {inputs.fmt.name} checkpoint with its model card",
        )  # fmt: skip
    except (HfHubHTTPError, OSError, RuntimeError, ValueError) as error:
        raise QtoolsError(
            f"upload to {request.repo_id} failed: {error}; rerun the same command to resume (files already "
            "uploaded are not sent again)"
        ) from error
    summary.commit_url = getattr(info, "commit_url", None)
    summary.pr_url = getattr(info, "pr_url", None)
    return summary
