"""osd_mpe.py and osd_mamujoco.py are one algorithm written out twice, on purpose: each script is the whole
method in one file, and they share no algorithm code (only osd_common's glue). This test keeps the two
copies identical, so that a change to one that is not made to the other fails here.

What may differ, and nothing else:
- the header docstring and PROGRAM (the script's name in messages);
- in Args: the defaults and help of EXP_NAME_TASK_TIER plus the help text of every flag (budget and
  data descriptions); the flags themselves, their types and every other default are the same;
- everything between Args and the first algorithm banner: PRESETS (the budgets), the per-tier tables
  (BETA_BY_TIER, DEFAULT_BETA, phase 1b's steps) and MaMuJoCo's tier list and example splits;
- in the main block, the data section (task and tier checks, dataset generation): from
  `# ---- data:` to `# ---- the data on the training device`.
"""

from __future__ import annotations

import ast
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ("osd_mpe.py", "osd_mamujoco.py")
ALGORITHM_SECTIONS = ("Diffusion", "Sequential decomposition", "Behavior model", "Critics", "Actors", "Networks")
EXP_NAME_TASK_TIER = {"exp_name", "task", "tier"}  # Args whose default may differ between the scripts


def sections(path: pathlib.Path) -> dict[str, str]:
    """The file cut at its top-level banners (`# ---- Title ...`): title's first words -> the text below it."""
    parts = re.split(r"^# ---- (.+)$", path.read_text(), flags=re.MULTILINE)
    return {title.split(":")[0].split(" (")[0]: body for title, body in zip(parts[1::2], parts[2::2])}


def main_without_data_section(text: str) -> str:
    start, end = text.index("    # ---- data:"), text.index("    # ---- the data on the training device")
    return text[:start] + text[end:]


def args_fields(path: pathlib.Path) -> dict[str, tuple[str, str]]:
    """Args' fields: name -> (type, default), as written."""
    tree = ast.parse(path.read_text())
    (args_class,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Args"]
    return {node.target.id: (ast.unparse(node.annotation), ast.unparse(node.value))
            for node in args_class.body if isinstance(node, ast.AnnAssign)}


def test_both_scripts_have_the_same_sections_in_the_same_order():
    mpe, mamujoco = (list(sections(REPO / script)) for script in SCRIPTS)
    assert mpe == mamujoco
    assert [title for title in mpe if title in ALGORITHM_SECTIONS] == list(ALGORITHM_SECTIONS)
    assert "Sequential decomposition" in mpe  # the method's core has a banner of its own


def test_algorithm_sections_are_identical():
    mpe, mamujoco = (sections(REPO / script) for script in SCRIPTS)
    for title in ALGORITHM_SECTIONS:
        assert mpe[title] == mamujoco[title], f"section '{title}' differs between {SCRIPTS[0]} and {SCRIPTS[1]}"


def test_training_phases_checkpoint_and_record_are_identical():
    mpe, mamujoco = (sections(REPO / script)["Main"] for script in SCRIPTS)
    assert main_without_data_section(mpe) == main_without_data_section(mamujoco)


def test_imports_and_flags_agree():
    texts = [(REPO / script).read_text() for script in SCRIPTS]
    imports = [text[text.index('"""\n\n', 10):text.index("PROGRAM = ")] for text in texts]
    assert imports[0] == imports[1]
    mpe, mamujoco = (args_fields(REPO / script) for script in SCRIPTS)
    assert list(mpe) == list(mamujoco), "the two scripts must take the same flags, in the same order"
    for name in mpe:
        assert mpe[name][0] == mamujoco[name][0], f"--{name} has different types"
        if name not in EXP_NAME_TASK_TIER:
            assert mpe[name][1] == mamujoco[name][1], f"--{name} has different defaults"


def test_the_comparison_sees_a_change():
    """A one-character edit inside an algorithm section is caught (the test is not vacuous)."""
    text = (REPO / SCRIPTS[0]).read_text()
    edited = text.replace("BEHAVIOR_T_MIN = 1e-3", "BEHAVIOR_T_MIN = 2e-3", 1)
    assert edited != text
    parts = re.split(r"^# ---- (.+)$", edited, flags=re.MULTILINE)
    diffusion = next(body for title, body in zip(parts[1::2], parts[2::2]) if title.startswith("Diffusion"))
    assert diffusion != sections(REPO / SCRIPTS[1])["Diffusion"]


# benchmarks/ that use the algorithm's own functions: the didactic games import them (and say so in their
# docstring); the diagnostics that rebuild a run's networks from its checkpoint load the script by path.
# Everything else (the grid, the report, the throughput) runs the scripts as command lines or reads records.
DIDACTIC_GAMES = {"bandit.py", "coordination_game.py", "q_optimum_game.py", "convention_walk.py", "pooled_teams_game.py"}
CHECKPOINT_DIAGNOSTICS = {"critic_check.py", "regularizer_fixed_point.py", "regularizer_pull.py", "spread_coordination.py",
                          "spread_conventions.py"}


def test_only_the_didactic_games_and_checkpoint_diagnostics_use_the_scripts_code():
    for path in sorted((REPO / "benchmarks").glob("*.py")):
        tree = ast.parse(path.read_text())
        imports = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imports |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imports_scripts = bool(imports & {"osd_mpe", "osd_mamujoco"})
        loads_scripts = any(isinstance(node, ast.Constant) and node.value in SCRIPTS for node in ast.walk(tree))
        docstring = ast.get_docstring(tree) or ""
        if path.name in DIDACTIC_GAMES:
            assert imports_scripts and "import" in docstring, f"{path.name}: say in the docstring what it imports"
        elif path.name in CHECKPOINT_DIAGNOSTICS:
            assert not imports_scripts, path.name
        else:
            assert not imports_scripts, f"{path.name} imports an algorithm script: run it as a command line instead"
            assert not loads_scripts or path.name in {"grid.py", "throughput.py"}, path.name
