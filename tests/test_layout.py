"""The house: the arrows point one way (app -> webapp -> library; demos -> the library's
shared parts; scripts -> library), nothing imports a script's insides, and the app's
modules stay small."""

import ast
from pathlib import Path

from tests.conftest import ROOT

SCRIPTS = {f"training.{p.stem}" for p in (ROOT / "training").glob("*.py") if p.stem != "__init__"}
SCRIPTS |= {f"benchmarks.{p.stem}" for p in (ROOT / "benchmarks").glob("*.py") if p.stem not in ("__init__", "common")}
SCRIPTS |= {f"demos.{p.parent.name}.{p.stem}" for p in (ROOT / "demos").glob("*/*.py")
            if p.stem in ("train", "evaluate", "export_onnx")}
SCRIPTS |= {"demos.onnx_export"}


def python_files(*folders: str) -> list[Path]:
    return [p for folder in folders for p in (ROOT / folder).rglob("*.py")]


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    found |= {f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
              for a in n.names}
    return found | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}


def test_the_caption_library_imports_no_demo_script_benchmark_or_app():
    for path in python_files("captioner"):
        outside = {m for m in imports(path) if m.split(".")[0] in ("demos", "training", "benchmarks", "webapp", "app")}
        assert not outside, f"{path.relative_to(ROOT)} imports {outside}"


def test_no_module_imports_a_scripts_insides():
    """Scripts, benchmarks, demos and the app never import a script; a test may import a
    script module only to call its ``main``."""
    for path in python_files("captioner", "training", "benchmarks", "demos", "webapp") + [ROOT / "app.py"]:
        used = {m for m in imports(path) if m in SCRIPTS or m.rsplit(".", 1)[0] in SCRIPTS}
        assert not used, f"{path.relative_to(ROOT)} imports {used}"
    for path in python_files("tests"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in SCRIPTS:
                names = {a.name for a in node.names}
                assert names <= {"main"}, f"{path.name} imports {names} from the script {node.module}"


def test_demos_use_only_the_librarys_shared_parts_and_not_each_other():
    shared = {"captioner.checkpoint", "captioner.lstm", "captioner.images", "captioner.devices", "captioner.service",
              "captioner.runtools", "captioner.loop", "captioner.downloads"}
    for path in python_files("demos"):
        if path.name in ("onnx.py", "onnx_export.py"):  # the one exporter, for the demos that have an ONNX form
            continue
        own = f"demos.{path.relative_to(ROOT / 'demos').parts[0]}" if path.parent != ROOT / "demos" else "demos"
        for module in imports(path):
            top = ".".join(module.split(".")[:2])
            if module.startswith("captioner"):
                assert top in shared or module in shared, f"{path.relative_to(ROOT)} uses {module}"
            elif module.startswith("demos.") and top not in (own, "demos.mnist", "demos.onnx_export"):
                raise AssertionError(f"{path.relative_to(ROOT)} uses another demo: {module}")


def test_no_app_module_is_over_300_lines():
    for path in [ROOT / "app.py", *python_files("webapp")]:
        assert len(path.read_text().splitlines()) <= 300, path.name


def test_one_version_number():
    import tomllib

    import captioner

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert captioner.__version__.count(".") == 2


def package_graph() -> dict[str, set[str]]:
    """The caption library's import graph, read from its source (every import, at the top
    of a file or inside a function): module -> the captioner modules it imports."""
    graph = {}
    for path in python_files("captioner"):
        module = "captioner." + ".".join(path.relative_to(ROOT / "captioner").with_suffix("").parts)
        module = module.removesuffix(".__init__")
        used = set()
        for name in imports(path):
            while name.startswith("captioner.") and name not in used:
                if (ROOT / Path(*name.split("."))).with_suffix(".py").is_file():
                    used.add(name)
                    break
                name = name.rsplit(".", 1)[0]
        graph[module] = used - {module}
    return graph


def test_the_caption_library_has_no_import_circle():
    graph = package_graph()
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for used in sorted(graph.get(module, ())):
            if state.get(used) == 1:
                raise AssertionError("import circle: " + " -> ".join(trail[trail.index(used):] + [module, used]))
            if used not in state:
                visit(used, trail + [module] if used != module else trail)
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_the_shared_loop_loads_none_of_the_caption_stack():
    """Demos train with ``captioner.loop``: it must not pull in the model, training or detector."""
    assert package_graph()["captioner.loop"] <= {"captioner.checkpoint", "captioner.runtools"}
    import subprocess
    import sys

    loaded = subprocess.run([sys.executable, "-c", "import sys, captioner.loop; print(' '.join(sys.modules))"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert not {"captioner.model", "captioner.batches", "captioner.detector", "captioner.network"} & set(loaded)


def test_no_source_file_is_over_450_lines():
    for path in [ROOT / "app.py", *python_files("captioner", "training", "webapp", "demos", "benchmarks")]:
        assert len(path.read_text().splitlines()) <= 450, path.relative_to(ROOT)
