"""The feedback folder on the Hugging Face Hub: pushed to a dataset repository
(``$CAPTIONER_FEEDBACK_REPO``) while the app runs, and corrections removed from it again.

A removal is a new commit that deletes the record (and the photo, when no other correction
names it); the repository's git history still holds both until the history is squashed
(``squash_history``: huggingface_hub's ``HfApi.super_squash_history``, which rewrites the
whole history of the branch into one commit). Every call goes through huggingface_hub's
``HfApi`` (tests hand in a fake one: these machines cannot reach the Hub).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from captioner.feedback import CorrectionError

log = logging.getLogger(__name__)


def feedback_repo() -> str | None:
    """The dataset repository corrections are pushed to, or None."""
    return os.environ.get("CAPTIONER_FEEDBACK_REPO") or None


def sync_to_hub(folder: Path, repo: str | None = None, every_minutes: float = 10):
    """Push the folder to a Hugging Face dataset repo (``$CAPTIONER_FEEDBACK_REPO``) every
    few minutes with huggingface_hub's ``CommitScheduler`` (complete photos and records
    only: temporary files are never pushed). Returns the scheduler, or None when no repo
    is set or the Hub cannot be reached (logged; corrections are still stored locally)."""
    repo = repo or feedback_repo()
    if not repo:
        return None
    try:
        from huggingface_hub import CommitScheduler

        return CommitScheduler(repo_id=repo, repo_type="dataset", folder_path=folder, every=every_minutes,
                               private=True, allow_patterns=["photos/*.jpg", "records/*.json"])
    except Exception as err:  # offline, no token, no such repo: keep storing locally
        log.warning("corrections are not pushed to %s: %s", repo, err)
        return None


def _api(api):
    if api is not None:
        return api
    from huggingface_hub import HfApi

    return HfApi()


def remove_from_hub(repo: str, files: list[str], what: str, api=None) -> list[str]:
    """Delete ``files`` (paths in the folder, as ``FeedbackStore.files_of`` gives them) from
    the dataset repository in one commit; returns those it held (a correction removed before
    the scheduler pushed it is not there). ``CorrectionError`` when the Hub cannot be
    reached or refuses (offline, no token with write access)."""
    from huggingface_hub import CommitOperationDelete

    api = _api(api)
    try:
        held = set(api.list_repo_files(repo, repo_type="dataset"))
        there = [name for name in files if name in held]
        if there:
            api.create_commit(repo_id=repo, repo_type="dataset", commit_message=f"Remove {what}",
                              operations=[CommitOperationDelete(path_in_repo=name) for name in there])
    except Exception as err:  # the Hub's errors are many; each ends here as one sentence
        raise CorrectionError(f"The Hugging Face dataset {repo} could not be changed ({err}).") from err
    log.info("removed %s from %s: %s", what, repo, ", ".join(there) or "nothing was there")
    return there


def squash_history(repo: str, api=None) -> None:
    """Rewrite the dataset repository's history into one commit of what it holds now, so that
    removed photos and captions are gone from its history too (irreversible)."""
    api = _api(api)
    try:
        api.super_squash_history(repo_id=repo, repo_type="dataset",
                                 commit_message="Squash history: removed corrections are gone from it")
    except Exception as err:
        raise CorrectionError(f"The history of the Hugging Face dataset {repo} could not be squashed ({err}).") \
            from err
