"""Push a run's adapter (or full model) with its model card to the Hugging Face Hub."""

from __future__ import annotations

import os
from pathlib import Path

from tuiwiz.errors import UserError
from tuiwiz.post.export_folders import copy_full_output, export_adapter
from tuiwiz.post.modelcard import write_model_card
from tuiwiz.run.outputs import RunOutput


def push_to_hub(source: RunOutput, repo: str | None, *, private: bool, token: str | None):
    """Push the adapter (or the full model) with its card. The token comes from the caller, HF_TOKEN or
    the user's `hf auth login`; tuiwiz never stores it."""
    if not repo:
        raise UserError("pushing to the Hub needs a repository", hint="--repo user/name", field="--repo", kind="input")
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise UserError("the Hugging Face Hub cannot be reached: HF_HUB_OFFLINE is set",
                        hint="unset HF_HUB_OFFLINE on a machine with a network, or export --format adapter and "
                             "upload the folder later", kind="network")
    token = token or get_token()
    if not token:
        raise UserError("no Hugging Face token: set HF_TOKEN or log in with `hf auth login`",
                        hint="tuiwiz reads the token from there and never stores it", kind="auth")
    import tempfile

    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    # its HTTP library's errors (httpx's refused connection is no OSError) and its own, which derive from them
    network = (OSError, *HfHubHTTPError.__bases__)
    with tempfile.TemporaryDirectory(prefix="tuiwiz-hub-") as tmp:
        folder = Path(tmp) / "upload"
        if source.kind == "full":
            copy_full_output(source, folder)
        else:
            export_adapter(source, folder)
        write_model_card(source, folder, artifact="full" if source.kind == "full" else "adapter")
        # HF_ENDPOINT as it is now: huggingface_hub reads it once, at import (None: its default)
        api = HfApi(token=token, endpoint=os.environ.get("HF_ENDPOINT", "").rstrip("/") or None)
        try:
            url = api.create_repo(repo, private=private, exist_ok=True)
            api.upload_folder(repo_id=repo, folder_path=folder, commit_message=f"tuiwiz: {source.run.run_id}")
        except (*network, RuntimeError) as exc:
            cause = exc.__cause__ if isinstance(exc, RuntimeError) else exc  # how huggingface_hub wraps LFS failures
            if not isinstance(cause, network):
                raise
            raise UserError(f"pushing to {repo} failed: {cause}", hint="check the network, the repository name and "
                            "that the token may write to it", kind="network") from None
        files = tuple(sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file()))
    return str(url), files, []
