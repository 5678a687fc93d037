"""`workbook.py grade`: honest submissions get their verdicts; hostile ones earn nothing, change
nothing outside the sandbox, leave no process behind and never stop the run.

A tiny two-exercise part (the real checks of Part 3's dimensionality and Part 1's correlated
features) keeps this fast. Each hostile submission answers the first exercise only if its attack
works (reading a secret, reaching the network, the reference...), so a pass would mean a breach.
"""

import csv
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from notebook_build import ROOT
from notebook_build import STUB as STUB_LINE
from tooling.grading.catalogue import exercises_of
from tooling.grading.folder import grade_folder
from tooling.grading.sandbox import sandbox_problem, stand_in_checks
from tooling.grading.session import grade_notebook, trusted_exportable, trusted_resolvable
from tooling.grading.verdicts import FAIL, NOT_RUN, PASS, STUB

PART = "09_mini"
MARKER = "workbook-hostile-marker"
WATCHED = (ROOT / "tests", ROOT / "part_utils", ROOT / "tooling", Path(sys.prefix))
"""What no submission may change: the workbook's code and the environment's packages."""
SETUP = (
    "import sys, os\nsys.path.insert(0, os.environ.get('WORKBOOK_ROOT', '.'))\nimport torch\n"
    "import tests.part3_feature_geometry as checks\nimport tests.part1_toy_models as checks_part1"
)
DIMENSIONALITY = (
    "def compute_dimensionality(W):\n"
    "    norms = W.norm(dim=1)\n"
    "    overlaps = torch.einsum('ihf,ihg->ifg', W / norms[:, None, :], W)\n"
    "    return norms.pow(2) / overlaps.pow(2).sum(-1)"
)
WRONG_DIMENSIONALITY = DIMENSIONALITY.replace("norms.pow(2) /", "norms /")
CORRELATED = (
    "def generate_correlated_features(batch_size, feature_probability):\n"
    "    n_inst, n_pairs = feature_probability.shape\n"
    "    present = torch.rand(batch_size, n_inst, n_pairs) < feature_probability\n"
    "    return (torch.rand(batch_size, n_inst, n_pairs, 2) * present[..., None]).flatten(-2)"
)
UNCORRELATED = (  # each feature of a pair drawn on its own: not correlated
    "def generate_correlated_features(batch_size, feature_probability):\n"
    "    probability = feature_probability.repeat_interleave(2, dim=-1)\n"
    "    return torch.rand(batch_size, *probability.shape) * (torch.rand(batch_size, *probability.shape) < probability)"
)


def if_attack_works(attack: str) -> str:
    """An answer that is right only when `attack` (code setting `worked`) succeeds."""
    indented = "\n".join("        " + line for line in attack.splitlines())
    return (
        f"{WRONG_DIMENSIONALITY.replace('def compute_dimensionality', 'def _wrong')}\n"
        f"{DIMENSIONALITY.replace('def compute_dimensionality', 'def _right')}\n"
        "def compute_dimensionality(W):\n"
        "    worked = False\n"
        "    try:\n"
        f"{indented}\n"
        "    except BaseException:\n"
        "        worked = False\n"
        "    return _right(W) if worked else _wrong(W)"
    )


def mini_notebook(
    dimensionality: str, correlated: str = CORRELATED, *, extra: str | None = None, extra_at: int = 2
) -> nbformat.NotebookNode:
    cells = [
        nbformat.v4.new_markdown_cell("# Mini part"),
        nbformat.v4.new_code_cell(SETUP),
        nbformat.v4.new_markdown_cell("### Exercise 1: `compute_dimensionality`"),
        nbformat.v4.new_code_cell(dimensionality),
        nbformat.v4.new_code_cell("checks.test_compute_dimensionality(compute_dimensionality)"),
        nbformat.v4.new_markdown_cell("### Exercise 2: `generate_correlated_features`"),
        nbformat.v4.new_code_cell(correlated),
        nbformat.v4.new_code_cell("checks_part1.test_generate_correlated_features(generate_correlated_features)"),
        nbformat.v4.new_code_cell("print('after the last check: never run')"),
    ]
    if extra is not None:
        cells.insert(extra_at, nbformat.v4.new_code_cell(extra))
    return nbformat.v4.new_notebook(cells=cells)


def hostile(places: dict[str, Path], port: int) -> dict[str, nbformat.NotebookNode]:
    """One submission per attack: each answers exercise 1 only if the attack succeeds."""
    reference = ROOT / "part_utils" / "reference" / "part3_feature_geometry.py"
    attacks = {
        # Forged verdicts: a pass line printed by the submission, a fake checks object, an exception handler, a thread.
        "forged_print": mini_notebook(WRONG_DIMENSIONALITY + "\nprint('✔ compute_dimensionality: all checks passed.')"),
        "fake_checks": mini_notebook(
            WRONG_DIMENSIONALITY
            + "\nclass _Fake:\n    def __getattr__(self, name):\n        return lambda *a, **k: print('✔ passed')\n"
            "checks = checks_part1 = _Fake()"
        ),
        "forging_handler_and_thread": mini_notebook(
            f"def compute_dimensionality(W):\n    {STUB_LINE}\n"
            "import threading, time\nget_ipython().set_custom_exc((BaseException,), lambda *a, **k: print('✔ passed'))\n"
            "threading.Thread(target=lambda: [print('✔ compute_dimensionality: all checks passed.') or time.sleep(0.01) "
            "for _ in range(10**6)], daemon=True).start()"
        ),
        # Routes to the reference implementation.
        "reference_import": mini_notebook(
            "from part_utils.reference.part3_feature_geometry import compute_dimensionality"
        ),
        "reference_module_attribute": mini_notebook(
            "from part_utils import reference\ncompute_dimensionality = reference.part3_feature_geometry.compute_dimensionality"
        ),
        "reference_computed_import": mini_notebook(
            "compute_dimensionality = __import__('part_utils.refer' + 'ence.part3_feature_geometry', fromlist=['x']).compute_dimensionality"
        ),
        "reference_file_exec": mini_notebook(f"exec(open({str(reference)!r}).read())"),
        "reference_through_checks": mini_notebook(
            "import importlib\nfrom tests import checking\ncompute_dimensionality = getattr(importlib.import_module('tests.part3_feature_geometry'), "
            "'reference').compute_dimensionality"
        ),
        "tooling_and_oracles": mini_notebook(
            if_attack_works(
                "import importlib\n"
                "for name in ('tooling.grading.session', 'tooling.claims', 'tests.oracles.jumprelu_numpy'):\n"
                "    try:\n        importlib.import_module(name)\n        worked = True\n"
                "    except ImportError:\n        pass"
            )
        ),
        "solution_notebook": mini_notebook(
            "import json\nsolution = json.load(open(os.path.join(os.environ['WORKBOOK_ROOT'], 'solutions', '03_feature_geometry.ipynb')))\n"
            "exec(next(''.join(c['source']) for c in solution['cells'] if 'def compute_dimensionality' in ''.join(c['source'])))"
        ),
        # Reaching outside: secrets, environment, other submissions, the workbook, the environment's packages, HOME, network.
        "reads_secret_and_environment": mini_notebook(
            if_attack_works(
                f"worked = bool(open({str(places['secret'])!r}).read()) or bool(os.environ.get('WORKBOOK_TEST_SECRET'))"
            )
        ),
        "writes_everywhere": mini_notebook(
            if_attack_works(
                "import site, pathlib\nworked = False\n"
                f"for target in [{str(places['victim'])!r}, {str(places['out_canary'])!r}, {str(ROOT / 'tests' / 'fake_check.py')!r}, "
                f"site.getsitepackages()[0] + '/evil.pth', {str(Path.home() / '.ipython/profile_default/startup/evil.py')!r}]:\n"
                "    try:\n        pathlib.Path(target).write_text('owned')\n        worked = True\n    except BaseException:\n        pass"
            )
        ),
        "network": mini_notebook(
            if_attack_works(
                f"import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))\nworked = True"
            )
        ),
        # Outliving the limit, and resources.
        "survivors": mini_notebook(
            DIMENSIONALITY,
            extra=(
                "import subprocess, threading, time\nfor _ in range(3):\n    try:\n"
                f"        subprocess.Popen(['sleep', '300', '{MARKER}'], start_new_session=True)\n    except OSError:\n        pass\n"
                "try:\n    if os.fork() == 0:\n        os.setsid()\n        time.sleep(300)\nexcept OSError:\n    pass"
            ),
        ),
        "resources": mini_notebook(
            DIMENSIONALITY,
            extra="try:\n    hog = bytearray(8 * 2**30)\nexcept MemoryError:\n    pass\nimport sys\nsys.stdout.write('x' * (50 * 2**20))\n"
            "import signal\nfor pid in (os.getppid(), 1):\n    try:\n        os.kill(pid, signal.SIGSTOP)\n    except OSError:\n        pass",
        ),
        "endless": mini_notebook(DIMENSIONALITY, extra="while True:\n    pass", extra_at=5),
        "crashing": mini_notebook(DIMENSIONALITY, extra="import os\nos._exit(3)", extra_at=5),
    }
    return attacks


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> dict:
    problem = sandbox_problem()
    if problem and not os.environ.get("WORKBOOK_REQUIRE_SANDBOX"):
        pytest.skip(f"no sandbox here: {problem}")
    assert problem is None, problem
    catalogue = tmp_path_factory.mktemp("catalogue")
    stub = f"def compute_dimensionality(W):\n    {STUB_LINE}"
    nbformat.write(
        mini_notebook(stub, f"def generate_correlated_features(batch_size, feature_probability):\n    {STUB_LINE}"),
        catalogue / f"{PART}.ipynb",
    )
    outside = tmp_path_factory.mktemp("outside")
    folder = tmp_path_factory.mktemp("submissions")
    out = tmp_path_factory.mktemp("out")
    places = {
        "secret": outside / "id_rsa",
        "victim": folder / "victim" / f"{PART}.ipynb",
        "out_canary": out / "canary.txt",
    }
    places["secret"].write_text("secret key")
    places["out_canary"].write_text("canary")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    submissions = {
        "correct": mini_notebook(DIMENSIONALITY),
        "wrong": mini_notebook(WRONG_DIMENSIONALITY, UNCORRELATED),
        "stubbed": nbformat.read(catalogue / f"{PART}.ipynb", as_version=4),
        "victim": mini_notebook(DIMENSIONALITY),
        **hostile(places, listener.getsockname()[1]),
    }
    for learner, notebook in submissions.items():
        (folder / learner).mkdir()
        nbformat.write(notebook, folder / learner / f"{PART}.ipynb")
    (folder / f"broken_{PART}.ipynb").write_text("{ this is not json")
    (folder / f"a_folder_{PART}.ipynb").mkdir()
    (folder / f"link_{PART}.ipynb").symlink_to(places["secret"])
    (folder / f"forger | ✔ ✔_{PART}.ipynb").write_text(nbformat.writes(mini_notebook(WRONG_DIMENSIONALITY)))
    nbformat.write(mini_notebook(DIMENSIONALITY), folder / f"victim_{PART}.ipynb")  # the same learner twice
    before = {path: path.read_bytes() for path in [places["victim"], places["out_canary"], places["secret"]]}
    workbook_files = set().union(*map(_listing, WATCHED))
    home_files = _listing(Path.home() / ".ipython")
    os.environ["WORKBOOK_TEST_SECRET"] = "secret"
    try:
        results = grade_folder(folder, out, time_limit=30.0, catalogue=catalogue, log=lambda line: None)
    finally:
        del os.environ["WORKBOOK_TEST_SECRET"]
        listener.close()
    return {
        "results": results,
        "out": out,
        "before": before,
        "workbook_files": workbook_files,
        "home_files": home_files,
        "learners": set(submissions),
    }


def _listing(folder: Path) -> set[str]:
    return {str(path) for path in folder.rglob("*") if "__pycache__" not in path.parts} if folder.is_dir() else set()


def statuses(graded: dict, learner: str) -> list[str]:
    (result,) = graded["results"][learner]
    return [verdict.status for verdict in result.verdicts]


def test_honest_submissions_get_their_verdicts(graded):
    assert statuses(graded, "correct") == [PASS, PASS]
    assert statuses(graded, "wrong") == [FAIL, FAIL]
    assert statuses(graded, "stubbed") == [STUB, STUB]
    (wrong,) = graded["results"]["wrong"]
    assert "squared norm" in wrong.verdicts[0].message and "✘" not in wrong.verdicts[0].message


def test_no_hostile_submission_earns_credit(graded):
    hostile_learners = graded["learners"] - {
        "correct",
        "wrong",
        "stubbed",
        "victim",
        "survivors",
        "resources",
        "endless",
        "crashing",
    }
    earned = {
        learner: statuses(graded, learner)[0] for learner in hostile_learners if statuses(graded, learner)[0] == PASS
    }
    assert earned == {}


def test_routes_to_the_reference_are_reported(graded):
    for learner in (
        "reference_import",
        "reference_module_attribute",
        "reference_computed_import",
        "reference_file_exec",
        "solution_notebook",
    ):
        (result,) = graded["results"][learner]
        assert any("reaches outside" in problem for problem in result.problems), learner


def test_nothing_outside_the_sandbox_changes(graded):
    for path, content in graded["before"].items():
        assert path.read_bytes() == content, path
    assert set().union(*map(_listing, WATCHED)) == graded["workbook_files"]
    assert _listing(Path.home() / ".ipython") == graded["home_files"]


def test_no_process_outlives_its_submission(graded):
    survivors = subprocess.run(["pgrep", "-f", MARKER], capture_output=True, text=True).stdout.split()
    assert survivors == []


def test_the_run_completes_and_reports_everyone(graded):
    assert statuses(graded, "survivors")[0] == PASS and statuses(graded, "resources")[0] == PASS
    assert statuses(graded, "endless") == [PASS, NOT_RUN] and statuses(graded, "crashing") == [PASS, NOT_RUN]
    (endless,) = graded["results"]["endless"]
    assert "time limit" in endless.problems[0] and endless.verdicts[1].message.startswith("not reached: the time limit")
    rows = list(csv.DictReader((graded["out"] / "grades.csv").open()))
    assert graded["learners"] <= {row["learner"] for row in rows}
    table = (graded["out"] / "grades.md").read_text()
    assert "forger \\| ✔ ✔" in table and "broken" in table and "a symbolic link" in table
    assert "handed in 2 times" in table
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len({len(re.split(r"(?<!\\)\|", line)) for line in rows}) == 1  # no name or message adds a column


def test_a_real_solution_notebook_passes_every_exercise():
    if sandbox_problem():
        pytest.skip("no sandbox here")
    (exercise,) = exercises_of("03_feature_geometry")
    result = grade_notebook(ROOT / "solutions" / "03_feature_geometry.ipynb", time_limit=300)
    assert [verdict.status for verdict in result.verdicts] == [PASS] and not result.problems, result
    assert exercise.checks[0].check == "test_compute_dimensionality"


@pytest.mark.parametrize("part", ["04_toy_sae", "05_sae_variants", "09_attribution_graphs"])
def test_solutions_that_exchange_objects_pass_through_the_bridge(part):
    """The SAE checks swap the learner's own methods into the reference's objects; Part 9's hand the learner
    dataclasses, a dictionary holding a reference module, and the reference forward pass to call back and
    differentiate through: across the sandbox too."""
    if sandbox_problem():
        pytest.skip("no sandbox here")
    result = grade_notebook(ROOT / "solutions" / f"{part}.ipynb", time_limit=600)
    assert {verdict.status for verdict in result.verdicts} == {PASS} and not result.problems, result
    assert len(result.verdicts) == sum(len(exercise.checks) for exercise in exercises_of(part))


def test_the_grader_never_lends_learner_code_its_own_reference_or_tools():
    resolvable = trusted_resolvable("01_toy_models")
    assert not resolvable("part_utils.reference.part1_toy_models:ToyModel")
    assert not resolvable("tooling.grading.session:Run") and not resolvable("tests.part1_toy_models:Case")
    assert resolvable("part_utils.reference.part4_toy_sae:ToySAE") and resolvable("torch.nn.modules.module:Module")
    assert not any(
        trusted_exportable(thing) for thing in (eval, exec, open, os.system, subprocess.run, type, Path.write_text)
    )
    assert trusted_exportable(mini_notebook) is False  # a test module's function, not a check's


def test_every_checks_module_has_a_stand_in_in_the_sandbox(tmp_path):
    """A part's checks may be a module or a package (Part 5's); the notebook imports either by the same name."""
    stand_ins = {path.stem for path in stand_in_checks(tmp_path).glob("*.py")}
    assert {"part1_toy_models", "part5_sae_variants"} <= stand_ins
