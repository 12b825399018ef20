"""The package's import graph: one direction, bottom up, and no cycles.

Every `import` in every module counts, the ones inside functions too: a lazy import is still
a dependency. The layers (a module may import its own layer's modules and lower ones):

    0  errors, plugins, hub, images, prompts, runfolder, models, devices, detectors, families,
       judges (the judge registry, below evaluation, so that a plugin's judge imports no evaluation),
       pipelines (reading and loading a diffusers pipeline: the aligner's and evaluation's one loader)
    1  rewards, testing   (testing: pipelines and rewards for tests and benchmarks, below the
                          commands they test: the in-process CLI runner is tests/cli_runner.py)
    2  aligner, evaluation
    3  cli, __main__
    4  toy          (a user of the library: a plugin, never imported by the core)

`alignkit.plugins` imports the plugins it lists by name (importlib), the way entry points are
loaded: that is the one place the core reaches a plugin, and no static import. Which modules
a call actually loads is checked in a fresh interpreter (`test_building_a_reward_loads_no_evaluation_nor_toy`).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "alignkit"

LAYERS = {
    "errors": 0, "plugins": 0, "hub": 0, "images": 0, "prompts": 0, "runfolder": 0, "models": 0,
    "devices": 0, "detectors": 0, "families": 0, "judges": 0, "pipelines": 0,
    "rewards": 1, "testing": 1,
    "aligner": 2, "evaluation": 2,
    "cli": 3, "__main__": 3,
    "toy": 4,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """The alignkit modules a file imports, anywhere in it."""
    found = set()
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            # `from alignkit import toy` imports a module, not a name.
            found |= {f"{base}.{a.name}" for a in node.names if (PACKAGE.parent / base.replace(".", "/") / a.name).exists()
                      or (PACKAGE.parent / (base.replace(".", "/") + "/" + a.name + ".py")).exists()}
    return {name for name in found if name == "alignkit" or name.startswith("alignkit.")}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        edges[name] = {m for m in imports_of(path) if m in modules and m != name}
    return edges


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_every_top_level_module_has_a_layer():
    tops = {module_name(p).split(".")[1] for p in PACKAGE.rglob("*.py") if module_name(p) != "alignkit"}
    assert tops <= set(LAYERS), f"give these a layer in LAYERS: {sorted(tops - set(LAYERS))}"


def test_no_upward_imports():
    upward = [f"{a} -> {b}" for a, targets in graph().items() for b in targets
              if layer(b) is not None and layer(a) is not None and layer(b) > layer(a)]
    assert not upward, "imports that reach up a layer:\n" + "\n".join(sorted(upward))


def test_no_cycles():
    edges = graph()
    # A package's __init__ re-exporting its own modules is not a cycle of concepts: ignore
    # edges from a package to its own submodules.
    edges = {a: {b for b in bs if not b.startswith(a + ".")} for a, bs in edges.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [node, nxt]) if nxt in stack else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_package_never_imports_the_toy_build_tools():
    """toy_build/ (the trainers of the toy's weights) is not installed: nothing in alignkit/ may
    import it, or the installed package would fail where the checkout works."""
    assert (PACKAGE.parent / "toy_build" / "train.py").is_file()  # the premise: it exists beside the package
    users = sorted(module_name(p) for p in PACKAGE.rglob("*.py")
                   if any(m == "toy_build" or m.startswith("toy_build.") for m in _all_imports(p)))
    assert not users, f"alignkit modules that import toy_build: {users}"


def _all_imports(path: Path) -> set[str]:
    """Every absolute module name a file imports, anywhere in it (not only alignkit's)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module)
    return names


def test_the_test_sees_function_level_imports():
    """The premise: imports inside functions count (cli.py imports the aligner only in `train`)."""
    cli = PACKAGE / "cli.py"
    top_level = {n.module for n in ast.parse(cli.read_text()).body if isinstance(n, ast.ImportFrom)}
    assert "alignkit.aligner" not in top_level
    assert "alignkit.aligner" in imports_of(cli)


def _modules_loaded_by(code: str) -> list[str]:
    """The alignkit modules in sys.modules after running `code` in a fresh interpreter."""
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith('alignkit'))))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_building_a_reward_loads_no_evaluation_nor_toy():
    """Static imports cannot see what a call loads at run time (a registry that loads every
    plugin on first read pulled in the toy and, through its judge, all of evaluation)."""
    loaded = _modules_loaded_by("import alignkit.rewards\nfrom alignkit.rewards import load_reward\n"
                                "reward = load_reward('compress')\nassert reward.name == 'compress'")
    assert "alignkit.rewards.compress" in loaded  # the premise: the probe saw the reward being built
    assert not [m for m in loaded if m.startswith(("alignkit.evaluation", "alignkit.toy"))], loaded


def test_asking_for_a_plugin_reward_loads_the_plugin_but_no_evaluation():
    """`toy_clip` is the toy's: asking for it loads the toy plugin, whose judge registers below
    evaluation, so evaluation still stays out."""
    loaded = _modules_loaded_by("from alignkit.rewards import get_entry\nget_entry('toy_clip')")
    assert "alignkit.toy.plugin" in loaded
    assert not [m for m in loaded if m.startswith("alignkit.evaluation")], loaded
