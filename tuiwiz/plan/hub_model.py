"""A model on the Hugging Face Hub that is not downloaded yet, inspected without downloading its weights.

Planning before a 100 GB download is the point: one metadata request (the file list with
sizes, the card's license), the small text files (config.json and the tokenizer's, for the
Data step's samples), and each safetensors file's header through HTTP range requests
(huggingface_hub's ``parse_safetensors_file_metadata``: about 100 kB a file). Nothing goes
into the Hugging Face cache: a snapshot there holding only config.json would read as a
downloaded model that lacks its weights. The small files go to tuiwiz's own cache instead,
one folder per commit, which is what ``ModelInfo.path`` names.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tuiwiz.errors import UserError
from tuiwiz.files import write_bytes_atomic
from tuiwiz.hub_access import HUB_TIMEOUT, hub_endpoint, hub_repo_info
from tuiwiz.paths import cache_dir
from tuiwiz.plan.weights import TensorEntry

# The small files worth having before a download: the shapes, and what renders the Data step's samples.
TEXT_FILES = ("config.json", "tokenizer_config.json", "tokenizer.json", "chat_template.jinja",
              "special_tokens_map.json", "generation_config.json")
MAX_TEXT_FILE = 64 * 2**20  # a tokenizer.json is a few MB; anything far larger is not one
INDEX = "model.safetensors.index.json"


def metadata_folder(repo_id: str, sha: str) -> Path:
    return cache_dir() / "hub-metadata" / repo_id.replace("/", "--") / sha


def _fetch(api, repo_id: str, sha: str, filename: str, timeout: float) -> bytes:
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    url = hf_hub_url(repo_id, filename, revision=sha, endpoint=api.endpoint)
    response = get_session().get(url, headers=build_hf_headers(), timeout=timeout, follow_redirects=True)
    hf_raise_for_status(response)
    return response.content


def _save_text_files(api, repo_id: str, sha: str, names: set[str], sizes: dict[str, int | None],
                     timeout: float) -> Path:

    folder = metadata_folder(repo_id, sha)
    folder.mkdir(parents=True, exist_ok=True)
    for name in TEXT_FILES:
        if name not in names or (folder / name).is_file():  # a commit's files never change
            continue
        if (sizes.get(name) or 0) > MAX_TEXT_FILE:
            continue
        write_bytes_atomic(folder / name, _fetch(api, repo_id, sha, name, timeout))
    return folder


def _shards(api, repo_id: str, sha: str, names: set[str], timeout: float) -> list[str]:
    """The safetensors files that hold the weights, as transformers would read them."""
    import json

    if INDEX in names:
        try:
            index = json.loads(_fetch(api, repo_id, sha, INDEX, timeout))
            return sorted(set((index.get("weight_map") or {}).values()))
        except ValueError:
            raise UserError(f"{INDEX} of {repo_id} on the Hub is not valid JSON", field="model.name_or_path",
                            hint="the repository is damaged; try another revision", kind="model") from None
    if "model.safetensors" in names:
        return ["model.safetensors"]
    return sorted(n for n in names if n.endswith(".safetensors") and "/" not in n)


def _headers(api, repo_id: str, sha: str, shards: list[str], timeout: float) -> list:
    from huggingface_hub.errors import SafetensorsParsingError


    def read(name: str):
        return api.parse_safetensors_file_metadata(repo_id, name, revision=sha, timeout=timeout)

    try:
        with ThreadPoolExecutor(max_workers=min(8, len(shards) or 1)) as pool:
            files = list(pool.map(read, shards))
    except SafetensorsParsingError as exc:
        raise UserError(f"a safetensors header of {repo_id} on the Hub cannot be read: {exc}",
                        field="model.name_or_path", hint="the repository is damaged; try another revision",
                        kind="model") from None
    return [TensorEntry(name, t.dtype, tuple(t.shape)) for f in files for name, t in f.tensors.items()]


@dataclass(frozen=True)
class HubModelFiles:
    """What the planner reads of a model on the Hub, fetched without its weights."""

    folder: Path  # config.json and the tokenizer files, saved in tuiwiz's own cache
    params: list  # every tensor's name, dtype and shape, from the safetensors headers
    weight_files: tuple[str, ...]
    size: int  # bytes of every file in the repository
    license: str | None


def fetch_hub_model(repo_id: str, revision: str | None = None) -> HubModelFiles:
    """A model on the Hub, from its metadata alone. Raises UserError.

    Offline, missing, gated without a token, or unreachable: the same refusals as preflight's.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    info = hub_repo_info(repo_id, "model", field="model.name_or_path", revision=revision, files_metadata=True)
    api = HfApi(endpoint=hub_endpoint())
    sha = info.sha or revision or "main"
    sizes = {s.rfilename: s.size for s in info.siblings or ()}
    names = set(sizes)
    if "config.json" not in names:
        raise UserError(f"{repo_id} on the Hugging Face Hub has no config.json", field="model.name_or_path",
                        hint="is it a transformers model? GGUF-only and adapter-only repositories cannot be fine-tuned "
                             "from", kind="model")
    try:
        folder = _save_text_files(api, repo_id, sha, names, sizes, HUB_TIMEOUT)
        params = _headers(api, repo_id, sha, _shards(api, repo_id, sha, names, HUB_TIMEOUT), HUB_TIMEOUT)
    except (OSError, HfHubHTTPError, *HfHubHTTPError.__bases__) as exc:
        raise UserError(f"reading {repo_id}'s files on the Hugging Face Hub failed ({type(exc).__name__}: {exc})",
                        field="model.name_or_path", hint="check the network, or download it first "
                        f"(`hf download {repo_id}`)", kind="model") from None
    card = info.card_data
    license_ = getattr(card, "license", None) if card is not None else None
    if isinstance(license_, list):
        license_ = ", ".join(map(str, license_))
    return HubModelFiles(folder, params, weight_files=tuple(n for n in sorted(names) if n.endswith(".safetensors")),
                         size=sum(v or 0 for v in sizes.values()), license=str(license_) if license_ else None)

