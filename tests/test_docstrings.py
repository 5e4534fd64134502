"""Docstrings point to what is there: every ``module.name`` or ``Class.attribute`` a
docstring of the library, the app or the demos names in backticks is defined where it says
(read from the source, so a name that is only imported there does not count)."""

import ast
import re
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("captioner", "lstmkit", "webapp", "demos")
FILES = ("py", "json", "md", "txt", "tsv", "csv", "onnx", "safetensors", "jpg", "png", "js", "css", "html", "toml")
QUOTED = re.compile(r"(`{1,2})([^`\n]+?)\1")
DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def defined_in_class(node: ast.ClassDef) -> set[str]:
    """The methods, class attributes, fields and ``self.x`` attributes a class defines."""
    names = set()
    for item in ast.walk(node):
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(item.name)
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            names.add(item.target.id)
        elif isinstance(item, ast.Assign):
            names |= {t.id for t in item.targets if isinstance(t, ast.Name)}
        if isinstance(item, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for target in item.targets if isinstance(item, ast.Assign) else [item.target]:
                for t in ast.walk(target):
                    if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                        names.add(t.attr)
    return names


def defined_in_module(tree: ast.Module, package: bool) -> set[str]:
    """Top-level definitions (and, for a package's ``__init__``, what it re-exports)."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)}
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):  # loaded lazily
                names |= {e.value for e in ast.walk(node.value) if isinstance(e, ast.Constant)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif package and isinstance(node, ast.ImportFrom):
            names |= {a.asname or a.name for a in node.names}
    return names


class House:
    """Every module of the project (the scripts too, to resolve names) with what it defines."""

    def __init__(self):
        self.trees = {module_name(p): ast.parse(p.read_text()) for folder in (*PACKAGES, "training", "benchmarks")
                      for p in (ROOT / folder).rglob("*.py")}
        self.defined = {m: defined_in_module(t, m in self.packages()) for m, t in self.trees.items()}
        self.classes: dict[str, list[ast.ClassDef]] = {}
        for tree in self.trees.values():
            for node in tree.body:
                if isinstance(node, ast.ClassDef):
                    self.classes.setdefault(node.name, []).append(node)

    def packages(self) -> set[str]:
        return {module_name(p) for folder in PACKAGES for p in (ROOT / folder).rglob("__init__.py")}

    def module(self, name: str, here: str) -> str | None:
        """The module ``name`` means in a docstring of ``here``: a full dotted name, or the
        nearest module of that last name (the same package first)."""
        if name in self.trees:
            return name
        found = [m for m in self.trees if m.endswith("." + name)]
        return max(found, key=lambda m: shared(m, here), default=None)

    def class_has(self, name: str, attribute: str) -> bool:
        for node in self.classes[name]:
            if attribute in defined_in_class(node):
                return True
            for base in node.bases:  # a base the project defines is read too; another one may hold anything
                base_name = base.id if isinstance(base, ast.Name) else None
                if base_name is None or base_name not in self.classes or self.class_has(base_name, attribute):
                    return True
        return False

    def problem(self, reference: str, here: str) -> str | None:
        parts = reference.split(".")
        if parts[-1] in FILES:
            stem = ".".join(parts[:-1])
            if parts[-1] == "py" and self.module(stem, here) is None and not (ROOT / f"{stem}.py").exists():
                return f"no module {stem}.py"
            return None
        for cut in range(len(parts), 0, -1):  # the longest beginning that is a module
            module = self.module(".".join(parts[:cut]), here)
            if module is not None and cut == len(parts):
                return None
            if module is not None:
                rest = parts[cut:]
                if rest[0] not in self.defined[module]:
                    return f"{module} defines no {rest[0]}"
                if len(rest) > 1 and rest[0] in self.classes and not self.class_has(rest[0], rest[1]):
                    return f"{rest[0]} has no {rest[1]}"
                return None
        if parts[0] in self.classes and not self.class_has(parts[0], parts[1]):
            return f"{parts[0]} has no {parts[1]}"
        return None  # a variable (``inputs.grid``) or another library's name (``torch.nn.LSTM``)


def shared(a: str, b: str) -> int:
    """How many leading parts two dotted names share."""
    n = 0
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        n += 1
    return n


def docstrings(tree: ast.Module):
    """(node, docstring, the names that are variables there: a function's parameters)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            text = ast.get_docstring(node, clean=False)
            if text:
                args = node.args if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
                local = {a.arg for a in (args.posonlyargs + args.args + args.kwonlyargs)} if args else set()
                yield node, text, local | {"self", "cls"}


def broken_references(house: House) -> list[str]:
    found = []
    for module, tree in house.trees.items():
        if module.split(".")[0] not in PACKAGES:
            continue
        for node, text, local in docstrings(tree):
            for _, quoted in QUOTED.findall(text):
                match = DOTTED.match(quoted)
                if match and match.group(0).split(".")[0] not in local:
                    problem = house.problem(match.group(0), module)
                    if problem:
                        where = getattr(node, "name", "the module docstring")
                        found.append(f"{module} ({where}): ``{match.group(0)}``: {problem}")
    return found


def test_every_module_attribute_a_docstring_names_is_there():
    broken = broken_references(House())
    assert not broken, "docstrings name what is not there:\n" + "\n".join(broken)


def test_the_check_finds_a_missing_name():
    house = House()
    assert house.problem("objects.coco_synonyms", "captioner.decoding") == "captioner.objects defines no coco_synonyms"
    assert house.problem("wordlists.coco_synonyms", "captioner.decoding") is None
    assert house.problem("model.CaptionNetwork", "captioner.decoder") == "captioner.model defines no CaptionNetwork"
    assert house.problem("CaptionRules.no_such_rule", "captioner.search") == "CaptionRules has no no_such_rule"
    assert house.problem("nowhere.py", "captioner.search") == "no module nowhere.py"
