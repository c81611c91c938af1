"""The package's shape: folders by concept, no import circle, llama_cpp behind llama/, every module small, each
folder importing only what its docstring allows, and docs/architecture.md's gate recipe works everywhere."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

PACKAGE = Path(__file__).resolve().parents[1] / "sia_local"


def _imports(file: Path, depth: int = 1) -> set[str]:
    """Package modules `file` imports, at module level, inside functions or under `if TYPE_CHECKING:` alike.
    `depth` is how deep the file sits (1: sia_local/x.py; 2: sia_local/pkg/x.py, whose `from .y` stays inside pkg)."""
    tree = ast.parse(file.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == depth:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sia_local."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("sia_local.")}
    return out - {"data"}


def _graph() -> dict[str, set[str]]:
    """module or subpackage -> the package's modules it imports (a subpackage is one node: the union of its files)."""
    graph = {f.stem: _imports(f) for f in PACKAGE.glob("*.py") if f.stem != "__init__"}
    for pkg in (d for d in PACKAGE.iterdir() if d.is_dir() and (d / "__init__.py").exists() and d.name != "data"):
        graph[pkg.name] = set().union(*(_imports(f, 2) for f in pkg.glob("*.py"))) - {pkg.name}
    return graph


def _table() -> dict[str, tuple[int, set[str]]]:
    """docs/architecture.md's module table: module -> (layer, the imports it lists)."""
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name = cells[0].strip("`") if cells else ""
        if len(cells) == 4 and cells[0].startswith("`") and (name.endswith(".py") or name.endswith("/")) and cells[1].isdigit():
            listed = set() if cells[3] in ("–", "-", "") else {m.strip() for m in cells[3].split(",")}
            rows[name[:-3] if name.endswith(".py") else name[:-1]] = (int(cells[1]), listed)
    return rows


def test_the_map_matches_the_code() -> None:
    """Every module has its row; its row lists exactly what it imports; everything it imports sits in a lower layer."""
    graph, table = _graph(), _table()
    assert set(table) == set(graph), f"modules without a row: {sorted(set(graph) - set(table))}; rows without a module: {sorted(set(table) - set(graph))}"
    for module, imported in graph.items():
        layer, listed = table[module]
        assert listed == imported, f"{module}.py imports {sorted(imported)}, docs/architecture.md says {sorted(listed)}"
        upward = [m for m in imported if table[m][0] >= layer]
        assert not upward, f"{module}.py (layer {layer}) imports {upward} from layer(s) {[table[m][0] for m in upward]}"


def _folders() -> list[Path]:
    return [d for d in PACKAGE.iterdir() if d.is_dir() and (d / "__init__.py").exists() and d.name != "data"]


def test_each_folder_imports_only_what_its_docstring_allows() -> None:
    """Every subpackage's __init__ says what it may import ("May import: a, b"); every file in it keeps to that."""
    for folder in _folders():
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text())) or ""
        said = [line for line in doc.splitlines() if line.startswith("May import:")]
        assert said, f"{folder.name}/__init__.py does not say what it may import"
        allowed = {m.strip(" .") for m in said[0].split(":", 1)[1].split("(")[0].split(",")}
        if "anything below it" in said[0]:
            allowed = {m.strip(" .") for m in said[0].split("(", 1)[1].rstrip(").").split(",")}
        for file in folder.glob("*.py"):
            extra = _imports(file, 2) - allowed - {folder.name}
            assert not extra, f"{folder.name}/{file.name} imports {sorted(extra)}, which {folder.name}/__init__.py does not allow"


def test_no_module_is_over_500_lines_and_few_sit_at_the_top() -> None:
    long = {str(f.relative_to(PACKAGE)): n for f in PACKAGE.rglob("*.py") if (n := len(f.read_text().splitlines())) > 500}
    assert not long, long
    assert len(list(PACKAGE.glob("*.py"))) <= 9  # the rest sits in folders by concept


def test_old_import_paths_name_the_moved_modules() -> None:
    import importlib

    from sia_local._moved import MOVED

    for old, new in MOVED.items():
        assert importlib.import_module(f"sia_local.{old}") is importlib.import_module(f"sia_local.{new}"), old
    from sia_local.steer import Steerer as old_steerer
    from sia_local import Steerer

    assert old_steerer is Steerer


def test_lower_modules_do_not_reach_up() -> None:
    assert "steer" not in _imports(PACKAGE / "core" / "calibrate.py", 2) and "from .steer" not in (PACKAGE / "core" / "calibrate.py").read_text()
    for module in ("runtime.py", "core/steer.py", "batch/__init__.py", "bench/grid.py"):  # nothing click-specific below the CLI
        assert "import click" not in (PACKAGE / module).read_text(), module


def test_llama_cpp_only_in_the_llama_package() -> None:
    users = sorted(str(f.relative_to(PACKAGE)) for f in PACKAGE.rglob("*.py") if "import llama_cpp" in f.read_text() or "from llama_cpp" in f.read_text())
    assert users and all(u.startswith("llama/") for u in users), users


@pytest.fixture()
def every_other_gate():
    """docs/architecture.md's recipe, verbatim in spirit: one class and one registration."""
    from sia_local.core.junction import _GATES, register_gate

    class EveryOtherGate:
        def __call__(self, step: int, h: float) -> bool:
            return step % 2 == 0

    register_gate("every-other", lambda config, tau, seed: EveryOtherGate(), help="every second step")
    yield "every-other"
    _GATES.pop("every-other", None)


def _alternates(trace: list[dict]) -> bool:
    return [t["junction"] for t in trace] == [i % 2 == 0 for i in range(len(trace))]


def test_a_registered_gate_works_in_generate(every_other_gate: str, tiny_gguf: Path, tiny_reward: Path) -> None:
    from sia_local.cli import main

    result = CliRunner().invoke(main, ["generate", "Hello", "-m", str(tiny_gguf), "-r", str(tiny_reward), "--gate", every_other_gate,
                                       "-n", "9", "--seed", "2", "--json", "--trace"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["stats"]["gate"] == "every-other" and data["stats"]["tokens"] > 2
    assert _alternates(data["trace"])
    bad = CliRunner().invoke(main, ["generate", "Hello", "-m", str(tiny_gguf), "--gate", "no-such-gate"])
    assert bad.exit_code != 0 and "every-other" in bad.output  # the error lists the registered gates


def test_a_registered_gate_works_in_server_chat_and_bench(every_other_gate: str, tiny_lm, tiny_reward: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from sia_local.bench.grid import run_grid, select_arms
    from sia_local.bench.judges import VaderJudge
    from sia_local.cli.chat import ChatSession
    from sia_local.core.config import SteerConfig
    from sia_local.rewards.reward import OnnxReward
    from sia_local.serve.server import create_app
    from sia_local.core.steer import Steerer

    reward = OnnxReward(tiny_reward, provider="cpu")
    steerer = Steerer(tiny_lm, reward, SteerConfig(tau=1.0, max_tokens=8, seed=0))
    client = TestClient(create_app(steerer, model_id="tiny"), base_url="http://127.0.0.1")
    ok = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 8, "seed": 1, "sia": {"gate": every_other_gate}})
    assert ok.status_code == 200, ok.text
    usage = ok.json()["usage"]
    assert usage["sia"]["gate"] == "every-other" and usage["completion_tokens"] > 2
    assert usage["sia"]["junctions"] == (usage["completion_tokens"] + 1) // 2
    bad = client.post("/v1/completions", json={"prompt": "Hello", "sia": {"gate": "nope"}})
    assert bad.status_code == 400 and "every-other" in bad.json()["error"]["message"]

    session = ChatSession(Steerer(tiny_lm, reward, SteerConfig(tau=1.0, max_tokens=8, seed=0)))
    assert '"gate": "every-other"' in session.command(f"/gate {every_other_gate}")
    answer = session.ask("hi", lambda p: None)
    assert answer is not None and answer.stats.junctions == (answer.stats.tokens + 1) // 2

    pytest.importorskip("vaderSentiment")
    arms = select_arms(["base", every_other_gate], 8)
    result = run_grid(steerer, VaderJudge(), ["Hello there.", "Why?"], arms, tmp_path / "bench", plots=False)
    rows = [r for r in result.rows if r["arm"] == every_other_gate]
    assert len(rows) == 2 and all(r["junctions"] == (r["tokens"] + 1) // 2 for r in rows)
