"""The Hugging Face Hub, asked as little as possible: is a name a hub id, is the Hub reachable, one
repository's metadata (or a UserError saying why there is none). No downloads here.

Below every stage: profiles, data, planning and the run checks all ask it the same way.
"""

from __future__ import annotations

import os
import re

from tuiwiz.errors import UserError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def is_hub_id(value: str) -> bool:
    """``org/name`` or ``name``, as the Hub spells repository ids."""
    return bool(_HUB_ID.match(value))


def looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.endswith("/") or name.count("/") > 1


HUB_TIMEOUT = 10.0  # seconds for one metadata request: a planning check, not a download
_TRUE = ("1", "ON", "YES", "TRUE")  # huggingface_hub's reading of a boolean variable


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as it is now, or as huggingface_hub read it at import."""
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def hub_endpoint() -> str:
    # HF_ENDPOINT as it is now: huggingface_hub reads it once, at import
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or constants.ENDPOINT


def hub_repo_info(repo_id: str, repo_type: str = "model", *, field: str, file: str | None = None,
                  revision: str | None = None, split: str = "train", files_metadata: bool = False):
    """The Hub's metadata of a repository (one request), or a UserError that says why there is none:
    offline, not found, gated without a token, a revision missing, the Hub unreachable."""
    what = "model" if repo_type == "model" else "dataset"
    named = f"{what} {repo_id}" + (f" at revision {revision}" if revision else "") + (
        f" (split {split})" if repo_type == "dataset" and split != "train" else "")
    download = f"hf download {repo_id}" + (" --repo-type dataset" if repo_type == "dataset" else "") + (
        f" --revision {revision}" if revision else "")
    local = f"; for a local folder write ./{repo_id}" if repo_type == "model" else ""

    def refuse(message: str, hint: str, at: str = field) -> UserError:
        return UserError(message, hint=hint, file=file, field=at, kind="model" if what == "model" else "data")

    if hub_offline():
        raise refuse(f"{named} is not in the Hugging Face cache, and HF_HUB_OFFLINE is set",
                     f"download it first (`{download}`) on a machine with a network, or unset HF_HUB_OFFLINE{local}")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    endpoint = hub_endpoint()
    api = HfApi(endpoint=endpoint)
    ask = api.model_info if repo_type == "model" else api.dataset_info
    not_found = refuse(f"no {what} {repo_id} on the Hugging Face Hub ({endpoint}), and it is not in the cache",
                       f"check the spelling{local}; for a private repository set HF_TOKEN (or `hf auth login`)")
    try:
        info = ask(repo_id, revision=revision, timeout=HUB_TIMEOUT, files_metadata=files_metadata)
    except GatedRepoError:
        info = None  # exists, but gated: refused below
    except RepositoryNotFoundError:
        raise not_found from None
    except RevisionNotFoundError:
        raise refuse(f"{what} {repo_id} has no revision {revision} on the Hugging Face Hub",
                     "give a branch, tag or commit of the repository", at="model.revision") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 404:  # a 404 without the Hub's error code
            raise not_found from None
        raise refuse(f"the Hugging Face Hub ({endpoint}) answered {status or 'with an error'} when asked about {named}",
                     "check HF_TOKEN" if status in (401, 403) else
                     f"try again later, or download it first (`{download}`)") from None
    except (OSError, *HfHubHTTPError.__bases__) as exc:  # its HTTP library's too: a refused connection is no OSError
        raise refuse(f"the Hugging Face Hub ({endpoint}) could not be reached to look up {named} "
                     f"({type(exc).__name__}), and it is not in the cache: the runner could not download it either",
                     f"check the network or HF_ENDPOINT, or download it first (`{download}`)") from None
    if info is None or (getattr(info, "gated", False) and not has_token()):
        raise refuse(f"{named} is gated on the Hugging Face Hub: it needs an account that accepted its conditions",
                     "accept them on the repository's page, then set HF_TOKEN (or `hf auth login`)")
    return info


def has_token() -> bool:
    from huggingface_hub import get_token

    return bool(get_token())
