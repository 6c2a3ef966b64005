"""`tweetgen-train push`: publish an exported model folder to the Hugging Face Hub (huggingface_hub's upload_folder).

The token is the one huggingface_hub finds itself (HF_TOKEN, or `hf auth login`); it is handed to the library and
never printed, logged or written, and no error message carries it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tweetgen.errors import TweetgenError
from tweetgen.folder import read_folder

log = logging.getLogger(__name__)
MARKER = "tweetgen.json"  # what makes a folder an export of ours


class PushError(TweetgenError):
    """The folder cannot be pushed; nothing was sent."""


def files_to_push(folder: Path) -> list[str]:
    """The folder's files as they will appear in the repo: every regular file, hidden and temporary ones left out."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def check_push(folder: str | Path, repo_id: str) -> tuple[Path, list[str]]:
    """The folder and its files, after checking both arguments; PushError names what is wrong."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise PushError(f"repo id {repo_id!r}: give it as USER/NAME (or ORG/NAME), e.g. alice/alice-bot")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise PushError(f"repo id {repo_id!r} is not valid on the Hub: {exc}") from None
    path = Path(folder).expanduser()
    if not (path / MARKER).is_file():
        raise PushError(f"{path} is not a tweetgen export (no {MARKER}); push a folder that tweetgen-train export "
                        "made")
    read_folder(path)  # every file the runtime needs is there and readable
    return path, files_to_push(path)


def push(folder: str | Path, repo_id: str, *, private: bool = False, api: Any = None) -> list[str]:
    """Create the model repo `repo_id` if needed and upload the export `folder` to it; returns the files sent.

    Args:
        api: a huggingface_hub.HfApi (default: one with the token huggingface_hub finds).

    Raises:
        PushError: a malformed repo id, a folder that is not an export, no token, or the Hub refused.
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    path, files = check_push(folder, repo_id)
    if api is None:
        token = get_token()
        if not token:
            raise PushError("no Hugging Face token: set HF_TOKEN, or run `hf auth login` (a token with write access)")
        api = HfApi(token=token)
    try:
        api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(path), repo_id=repo_id, repo_type="model", allow_patterns=files,
                          commit_message=f"Upload {read_folder(path).info.get('name') or path.name} (tweetgen)")
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        raise PushError(f"the Hub refused the push to {repo_id} (HTTP {status}): check that the token can write "
                        "to that namespace") from None
    except OSError as exc:
        raise PushError(f"could not reach the Hub to push {repo_id}: {exc.__class__.__name__}") from None
    log.info("pushed %d files to %s", len(files), repo_id)
    return files
