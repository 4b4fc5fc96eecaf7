"""Repository-level checks: the README's commands are the ones CI runs, and the flat layout stays importable."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text):
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_ci_runs_exactly_the_readme_test_command():
    readme_blocks = [b.strip() for b in _bash_blocks((ROOT / "README.md").read_text())]
    assert len(readme_blocks) >= 2, "README must show the main-job command and the test command"
    test_command = readme_blocks[1]
    assert "pytest" in test_command
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_library_modules_use_single_level_relative_imports_only():
    """transformers' remote-code loader only follows `from .module import X`; deeper forms break Hub loading."""
    offenders = []
    for path in sorted((ROOT / "src" / "mamba_zoo").glob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if re.match(r"from \.\.", stripped) or re.match(r"from \.[\w]+\.[\w.]+ import", stripped) or re.match(
                r"from \. import", stripped
            ):
                offenders.append(f"{path.name}:{number}: {stripped}")
    assert not offenders, offenders
