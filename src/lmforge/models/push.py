"""Publish a trained model to the Hugging Face Hub: the model folder (weights, tokenizer, model card).

    lmforge push runs/sentiment-minilm --repo-id your-name/sentiment-minilm [--private]

Offline (HF_HUB_OFFLINE=1), without a token, or with the Hub unreachable, it fails at once with one
line saying so and how to log in. It only reads the run folder: nothing there changes.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import LmforgeError
from ..runtime import hub_offline, hub_reachable
from .load import resolve_model_dir

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
LOGIN_HINT = "log in with `hf auth login` (or set HF_TOKEN to a token with write access)"


def check_can_push(repo_id: str) -> str:
    """The token to push with, after checking the repository name, the Hub switch, the token and the network."""
    if not REPO_ID.match(repo_id or ""):
        raise LmforgeError(f"'{repo_id}' is not a Hub repository id", "use your-name/model-name")
    if hub_offline():
        raise LmforgeError("cannot push to the Hugging Face Hub: it is switched off (HF_HUB_OFFLINE=1)",
                           f"unset HF_HUB_OFFLINE, then {LOGIN_HINT}")
    from huggingface_hub import get_token  # lazy: only pushing needs the Hub client
    token = get_token()
    if not token:
        raise LmforgeError("cannot push to the Hugging Face Hub: not logged in (no token)", LOGIN_HINT)
    if not hub_reachable():
        raise LmforgeError("cannot push to the Hugging Face Hub: it is unreachable (no network)",
                           "push from a machine that can reach huggingface.co")
    return token


def push_folder(run_or_model: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload a run's model folder (or a model folder) to `repo_id`; returns the repository's URL."""
    folder = resolve_model_dir(run_or_model)
    token = check_can_push(repo_id)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          commit_message=f"lmforge: upload {Path(folder).resolve().parent.name}/{Path(folder).name}")
    except HfHubHTTPError as e:
        raise LmforgeError(f"the Hub refused the upload to {repo_id}: {str(e).splitlines()[0][:300]}",
                           f"check the repository name and that your token may write to it; {LOGIN_HINT}") from None
    return str(url)
