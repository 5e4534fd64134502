"""The house: the arrows point one way (app -> webapp -> captioner -> lstmkit; demos ->
lstmkit; scripts -> library; inference never -> captioner.train), nothing imports a
script's insides, no import circle, and every file and parameter list stays small."""

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


def test_demos_use_only_the_shared_base_and_not_each_other():
    for path in python_files("demos"):
        if path.name in ("onnx.py", "onnx_export.py"):  # the one exporter, for the demos that have an ONNX form
            continue
        own = f"demos.{path.relative_to(ROOT / 'demos').parts[0]}" if path.parent != ROOT / "demos" else "demos"
        for module in imports(path):
            top = ".".join(module.split(".")[:2])
            assert not module.startswith("captioner"), f"{path.relative_to(ROOT)} uses the captioner: {module}"
            if module.startswith("demos.") and top not in (own, "demos.mnist", "demos.onnx_export", "demos.onnx"):
                raise AssertionError(f"{path.relative_to(ROOT)} uses another demo: {module}")


def test_the_shared_base_imports_nothing_of_the_captioner_the_demos_or_the_app():
    for path in python_files("lstmkit"):
        outside = {m for m in imports(path)
                   if m.split(".")[0] in ("captioner", "demos", "training", "benchmarks", "webapp", "app")}
        assert not outside, f"{path.relative_to(ROOT)} imports {outside}"


def test_inference_never_imports_a_training_module():
    """Only ``captioner/train/`` (and the scripts) import ``captioner.train``."""
    for path in python_files("captioner", "webapp") + [ROOT / "app.py"]:
        if "train" in path.relative_to(ROOT).parts[1:-1]:
            continue
        used = {m for m in imports(path) if m.startswith("captioner.train") or m == "captioner.train"}
        assert not used, f"{path.relative_to(ROOT)} imports {used}"


def loaded_by(statement: str) -> set[str]:
    import subprocess
    import sys

    return set(subprocess.run([sys.executable, "-c", f"import sys; {statement}; print(' '.join(sys.modules))"],
                              cwd=ROOT, capture_output=True, text=True, check=True).stdout.split())


def test_the_front_door_loads_no_training_and_a_demo_loads_no_caption_module():
    captioning = loaded_by("from captioner import Captioner; Captioner.from_checkpoint")
    assert "captioner.model" in captioning and not {m for m in captioning if m.startswith("captioner.train")}
    demos = loaded_by("import demos.mnist.train, demos.nextframe.train, demos.trajectory.train, demos.mnist.service")
    assert "lstmkit.loop" in demos and not {m for m in demos if m.startswith("captioner")}


def test_no_library_function_takes_more_than_8_parameters():
    """A photo's inputs travel as one value (``captioner.inputs.PhotoInputs``), settings as
    dataclasses; constructors (``__init__`` and class methods) may take more."""
    for path in python_files("captioner", "lstmkit"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef) or node.name == "__init__":
                continue
            if any(isinstance(d, ast.Name) and d.id == "classmethod" for d in node.decorator_list):
                continue
            a = node.args
            names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
            count = len(names) + bool(a.vararg) + bool(a.kwarg)
            assert count <= 8, f"{path.relative_to(ROOT)}: {node.name} takes {count} parameters"


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
    """The library's import graph (the captioner and the shared base), read from its source
    (every import, at the top of a file or inside a function): module -> the modules it imports."""
    graph = {}
    for path in python_files("captioner", "lstmkit"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        used = set()
        for name in imports(path):
            while name.startswith(("captioner.", "lstmkit.")) and name not in used:
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


def test_no_source_file_is_over_450_lines():
    for path in [ROOT / "app.py", *python_files("captioner", "lstmkit", "training", "webapp", "demos", "benchmarks")]:
        assert len(path.read_text().splitlines()) <= 450, path.relative_to(ROOT)


def test_one_name_one_meaning_no_public_top_level_name_is_defined_twice():
    """A public function or class of ``captioner/``, ``lstmkit/`` or ``webapp/`` is defined in
    one module only (there were two ``decode``s and two ``named_objects``)."""
    where: dict[str, list[str]] = {}
    for path in python_files("captioner", "lstmkit", "webapp"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                where.setdefault(node.name, []).append(str(path.relative_to(ROOT)))
    twice = {name: paths for name, paths in where.items() if len(paths) > 1}
    assert not twice, f"defined in more than one module: {twice}"
