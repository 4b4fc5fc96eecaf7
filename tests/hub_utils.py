"""A Hub round trip without a network.

`local_hub(hub_cache)` lets the real `push_to_hub` code of transformers / huggingface_hub run unchanged (saving, model
card creation, building the `CommitOperationAdd` list) and intercepts only the two HTTP calls at the end,
`HfApi.create_repo` and `HfApi.create_commit`. The commit operations are materialised in the Hugging Face cache layout
(`models--org--name/refs/main`, `snapshots/<sha>/...`), exactly where `from_pretrained("org/name")` looks with
`HF_HUB_OFFLINE=1`, so a fresh process can load the pushed repo through the real cache-resolution code.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from pathlib import Path
from unittest import mock

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import EntryNotFoundError
from huggingface_hub.hf_api import CommitInfo, RepoUrl


@contextlib.contextmanager
def local_hub(hub_cache: Path):
    """Yields a list that records `(repo_id, commit_message, [paths])` for every commit pushed inside the block."""
    hub_cache = Path(hub_cache)
    commits: list[tuple[str, str, list[str]]] = []

    def create_repo(self, repo_id, **kwargs):
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, *, commit_message, revision=None, **kwargs):
        operations = list(operations)
        repo_dir = hub_cache / f"models--{repo_id.replace('/', '--')}"
        ref = repo_dir / "refs" / (revision or "main")
        parent = ref.read_text().strip() if ref.exists() else ""
        digest = hashlib.sha1(parent.encode())
        for op in operations:
            digest.update(op.path_in_repo.encode())
            if isinstance(op, CommitOperationAdd):
                with op.as_file() as handle:
                    digest.update(handle.read())
        sha = digest.hexdigest()
        snapshot = repo_dir / "snapshots" / sha
        if parent:
            shutil.copytree(repo_dir / "snapshots" / parent, snapshot)
        snapshot.mkdir(parents=True, exist_ok=True)
        for op in operations:
            target = snapshot / op.path_in_repo
            if isinstance(op, CommitOperationAdd):
                target.parent.mkdir(parents=True, exist_ok=True)
                with op.as_file() as handle:
                    target.write_bytes(handle.read())
            elif isinstance(op, CommitOperationDelete):
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(sha)
        commits.append((repo_id, commit_message, sorted(op.path_in_repo for op in operations)))
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{sha}", commit_message=commit_message,
            commit_description="", oid=sha,
        )

    def no_remote_card(*args, **kwargs):
        raise EntryNotFoundError("no model card on the local hub yet")

    with mock.patch.object(HfApi, "create_repo", create_repo), \
            mock.patch.object(HfApi, "create_commit", create_commit), \
            mock.patch("transformers.utils.hub.ModelCard.load", no_remote_card):
        yield commits
