"""Static guarantees: model files are never unpickled as code, and no credential is committed."""

import ast
import re
import subprocess

from tests.conftest import REPO


def calls(name: str):
    for path in [*REPO.glob("components/**/*.py"), *REPO.glob("flows/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == name:
                yield path.relative_to(REPO), node


def test_every_torch_load_reads_weights_only():
    found = list(calls("torch.load"))
    assert found  # the check looks at real calls
    for path, node in found:
        flags = {k.arg: ast.unparse(k.value) for k in node.keywords}
        assert flags.get("weights_only") == "True", f"{path}:{node.lineno}"


def test_no_credential_in_tracked_files():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    pattern = re.compile(r"(AWS_SECRET_ACCESS_KEY|PASSWORD)\s*[=:]\s*['\"]?[A-Za-z0-9/+]{16,}")
    hits = [f for f in tracked if (REPO / f).is_file() and f.endswith(
        (".py", ".sh", ".yaml", ".yml", ".toml", ".cfg", ".env", ".json", ".md"))
        and pattern.search((REPO / f).read_text(errors="replace"))]
    assert not hits, hits
