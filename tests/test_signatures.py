"""No library function takes more than 6 parameters (issue 17): options that travel together are a dataclass.

Exempt: click's commands, which receive one parameter per option by design, and the wrapper in
toolkit/cli/options.py that takes the preprocessing options off a command the same way.
"""

from __future__ import annotations

import ast

from conftest import ROOT

MAX_PARAMETERS = 6
LIBRARY = ("toolkit", "train", "export")


def _click_passes_options(node: ast.FunctionDef, path) -> bool:
    if path.parent.name != "cli":
        return False
    decorators = [d.func for d in node.decorator_list if isinstance(d, ast.Call)]
    return (node.name == "wrapper" and path.name == "options.py") or any(
        isinstance(d, ast.Attribute) and d.attr == "command" for d in decorators)


def too_long(exempt_click: bool = True) -> list[str]:
    """Each function over MAX_PARAMETERS as "path:line name takes N" (self/cls, *args and **kwargs not counted)."""
    found = []
    for folder in LIBRARY:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                if exempt_click and _click_passes_options(node, path):
                    continue
                names = [a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)]
                count = len(names) - (names[:1] in (["self"], ["cls"]))
                if count > MAX_PARAMETERS:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} takes {count}")
    return found


def test_no_library_function_takes_more_than_six_parameters():
    assert too_long() == []


def test_only_the_click_commands_and_the_options_wrapper_are_exempt():
    exempt = {line.split(":")[0] + " " + line.split()[1] for line in too_long(exempt_click=False)}
    assert exempt == {"toolkit/cli/bench.py command", "toolkit/cli/export.py command",
                      "toolkit/cli/options.py wrapper", "toolkit/cli/predict.py command",
                      "toolkit/cli/serve.py command", "toolkit/cli/train.py command"}
