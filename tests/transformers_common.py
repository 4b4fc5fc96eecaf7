"""transformers' own common model tests, fetched at test time for the installed transformers version.

transformers tests every in-tree model with the same mixins (`ModelTesterMixin`, `ConfigTester`, the
feature-extraction mixins); they live in its repository's `tests/` folder, which the wheel does not ship. The sdist
(`transformers-<version>.tar.gz` on PyPI) ships the top-level `tests/test_*_common.py` files, so `load()`:

1. finds the sdist of the *installed* version: `$MAMBA_ZOO_TRANSFORMERS_SDIST` (a local `.tar.gz`, for offline
   machines), else a previous download in the cache, else `pip download --no-deps --no-binary :all:
   transformers==<version>` (about 11 MB, once per version);
2. extracts only the modules below into an importable package `transformers_tests` in the cache folder
   (`$MAMBA_ZOO_CACHE` or `~/.cache/mamba-zoo`, then `transformers-tests/<version>/`), outside the repository, so
   nothing of transformers is ever committed here;
3. adds stand-ins for the modules those files import but the sdist does not ship (see `STAND_INS`);
4. imports and returns the package's modules.

`parameterized` (imported by `test_modeling_common.py`) comes with our `dev` extra.

When the download fails (no network, no pip), the tests that use these modules are skipped with the reason, so CI
never fails for network reasons; anything else (an import error of the extracted code, say) fails loudly.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import transformers

PACKAGE = "transformers_tests"

# the sdist's modules we use, relative to its tests/ folder
MODULES = (
    "test_modeling_common.py",
    "test_configuration_common.py",
    "test_feature_extraction_common.py",
    "test_sequence_feature_extraction_common.py",
)

# Modules that the files above import but that no PyPI artefact ships (the sdist has only the top-level
# tests/test_*.py files; the wheel has no tests at all). Each gets a minimal stand-in, with the reason in its text.
STAND_INS = {
    "exporters/test_export.py": '''\
"""Stand-in: tests/exporters/test_export.py is not in transformers' sdist (nor in any other PyPI artefact).

`ModelTesterMixin` inherits `ExportTesterMixin`, whose tests export models to torch.export / ONNX / ExecuTorch /
OpenVINO / TensorRT with backends this project does not install; without the file those export tests do not run."""


class ExportTesterMixin:
    pass
''',
    "generation/test_utils.py": '''\
"""Stand-in: tests/generation/test_utils.py (`GenerationTesterMixin`) is not in transformers' sdist (nor in any other
PyPI artefact).

`ModelTesterMixin.test_generation_tester_mixin_inheritance` checks that a tester of a model that can generate
inherits `GenerationTesterMixin`. This empty marker stands for it; mamba-zoo's own generation checks
(`tests/test_transformers_common.py`: `GenerationChecks`) inherit it in its place."""


class GenerationTesterMixin:
    pass
''',
    "utils/test_configuration_utils.py": '''\
"""Stand-in: tests/utils/test_configuration_utils.py is not in transformers' sdist (nor in any other PyPI artefact).

`ConfigTester.check_config_arguments_init` only imports `config_common_kwargs` from it: the base-config arguments
(`PreTrainedConfig`'s own fields) that every config must accept and keep. This is transformers 5.x's dict, copied."""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["BertModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}
''',
}


class CommonTestsUnavailable(RuntimeError):
    """The sdist could not be obtained (no network, no pip): tests built on it are skipped with this reason."""


def cache_dir() -> Path:
    """`$MAMBA_ZOO_CACHE/transformers-tests/<installed transformers version>` (default `~/.cache/mamba-zoo/...`)."""
    root = os.environ.get("MAMBA_ZOO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "mamba-zoo"
    )
    return Path(root) / "transformers-tests" / transformers.__version__


def _pip_download(requirement: str, dest: Path, *pip_args: str) -> Path:
    """`pip download --no-deps <requirement>` into `dest`; the downloaded file, or `CommonTestsUnavailable`."""
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet",
               "--dest", str(dest), *pip_args, requirement]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise CommonTestsUnavailable(f"`pip download {requirement}` could not run: {error}") from error
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise CommonTestsUnavailable(f"`pip download {requirement}` failed (offline?): {' | '.join(tail)}")
    name = requirement.split("=")[0].split(">")[0].strip().lower()
    found = sorted(p for p in dest.iterdir() if p.name.lower().startswith(name) and not p.name.endswith(".part"))
    if not found:
        raise CommonTestsUnavailable(f"`pip download {requirement}` left no file in {dest}.")
    return found[-1]


def _sdist_path(version: str, downloads: Path) -> Path:
    local = os.environ.get("MAMBA_ZOO_TRANSFORMERS_SDIST")
    if local:
        return Path(local)
    cached = downloads / f"transformers-{version}.tar.gz"
    if cached.is_file():
        return cached
    return _pip_download(f"transformers=={version}", downloads, "--no-binary", ":all:")


def _build_package(version: str, target: Path) -> None:
    """Extract `MODULES` from the sdist and write the stand-ins into `target/transformers_tests` (atomically)."""
    sdist = _sdist_path(version, target / "downloads")
    staging = Path(tempfile.mkdtemp(prefix=f".{PACKAGE}-", dir=target))
    package = staging / PACKAGE
    package.mkdir()
    with tarfile.open(sdist) as archive:
        members = {Path(m.name).relative_to(Path(m.name).parts[0]).as_posix(): m for m in archive.getmembers()}
        for name in MODULES:
            member = members.get(f"tests/{name}")
            if member is None:
                raise RuntimeError(f"{sdist.name} has no tests/{name}: update MODULES in {__file__}.")
            (package / name).write_bytes(archive.extractfile(member).read())
    # an empty __init__.py (test_configuration_common.py runs it once as `transformers`' own __init__)
    (package / "__init__.py").write_text("")
    for name, text in STAND_INS.items():
        path = package / name
        path.parent.mkdir(exist_ok=True)
        (path.parent / "__init__.py").write_text("")
        path.write_text(text)
    (package / "SOURCE").write_text(f"{sdist.name}: tests/{', tests/'.join(MODULES)} + stand-ins\n")
    try:
        os.replace(package, target / PACKAGE)  # another process may have won the race: keep its copy
    except OSError:
        pass
    finally:
        if sdist.parent == target / "downloads":
            sdist.unlink(missing_ok=True)  # the extracted package is the cache; the 11 MB archive is not needed
        for path in sorted(staging.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        staging.rmdir()


_LOADED: SimpleNamespace | None = None


def load() -> SimpleNamespace:
    """The modules of transformers' common tests, as attributes: `modeling`, `configuration`,
    `feature_extraction`, `sequence_feature_extraction`, `generation` (the stand-in). Raises `CommonTestsUnavailable`
    when the sdist cannot be downloaded."""
    global _LOADED
    if _LOADED is not None:
        return _LOADED
    target = cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    if not (target / PACKAGE / "SOURCE").is_file():
        _build_package(transformers.__version__, target)
    if str(target) not in sys.path:
        sys.path.insert(0, str(target))
    with warnings.catch_warnings():
        # the mixins use transformers' own pytest marks (flash_attn_test, torch_compile_test...), registered in its
        # conftest.py, not here: their tests are skipped on CPU anyway
        warnings.filterwarnings("ignore", message="Unknown pytest.mark")
        _LOADED = SimpleNamespace(
            modeling=importlib.import_module(f"{PACKAGE}.test_modeling_common"),
            configuration=importlib.import_module(f"{PACKAGE}.test_configuration_common"),
            feature_extraction=importlib.import_module(f"{PACKAGE}.test_feature_extraction_common"),
            sequence_feature_extraction=importlib.import_module(f"{PACKAGE}.test_sequence_feature_extraction_common"),
            generation=importlib.import_module(f"{PACKAGE}.generation.test_utils"),
            path=target / PACKAGE,
        )
    return _LOADED


def load_or_skip() -> SimpleNamespace:
    """`load()`, or skip the calling test module (with the reason) when the sdist cannot be downloaded."""
    import pytest

    try:
        return load()
    except CommonTestsUnavailable as error:
        pytest.skip(f"transformers' common tests are unavailable: {error}", allow_module_level=True)
