"""A method file dropped into methods/ is listed and covered by the conformance test, with no test edited."""

from __future__ import annotations

import textwrap

from conftest import ROOT, run_cli

PLUGIN = textwrap.dedent('''
    """A drop-in probe method written by tests/test_plugins.py (removed when the test ends)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from kdbench.method import Method, Needs, register_method


    @register_method("zz_dropin_probe")
    class DropInProbe(Method):
        """Logit L1 to the teacher through a learned scale (exercises the method's own parameters)."""

        needs = Needs(labels=False)
        description = "test probe: L1 between scaled student logits and teacher logits"

        def __init__(self, student, teacher, *, num_classes: int, weight: float = 1.0) -> None:
            super().__init__(student, teacher, num_classes=num_classes)
            self.weight = weight
            self.scale = nn.Parameter(torch.ones(1))

        def losses(self, batch, s, t):
            return {"l1": self.weight * F.l1_loss(self.scale * s.logits, t.logits)}
''')


def test_dropped_in_method_is_listed_and_conformance_tested() -> None:
    path = ROOT / "methods" / "zz_dropin_probe.py"
    path.write_text(PLUGIN)
    try:
        listed = run_cli("kdbench", "list", "methods")
        assert listed.returncode == 0, listed.stderr
        assert "zz_dropin_probe" in listed.stdout
        tested = run_cli("pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_conformance.py"),
                         "-k", "zz_dropin_probe")
        assert tested.returncode == 0, tested.stdout + tested.stderr
        assert "3 passed" in tested.stdout, tested.stdout  # labelled + unlabeled step, documentation check
    finally:
        path.unlink(missing_ok=True)


def test_readme_method_example_works() -> None:
    """The 'Adding a method' example in the README is real code that passes one training step."""
    import re
    import types

    import torch

    from kdbench.method import Batch, method_registry
    from kdbench.models import create_network

    readme = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- method-example -->\n```python\n(.*?)```", readme, re.S).group(1)
    assert len(code.strip().splitlines()) <= 40
    module = types.ModuleType("readme_example")
    exec(compile(code, "README.md", "exec"), module.__dict__)
    try:
        cls = method_registry.get("logit_l1")
        student = create_network("kdb_cnn_nano", num_classes=4, in_chans=1)
        teacher = create_network("kdb_cnn_small", num_classes=4, in_chans=1).eval()
        x = torch.randn(4, 1, 8, 8)
        terms = cls(student, teacher, num_classes=4).losses(Batch(x, torch.arange(4), torch.arange(4)),
                                                           student(x), teacher(x))
        assert set(terms) == {"l1", "ce"} and all(torch.isfinite(v) for v in terms.values())
    finally:
        method_registry._items.pop("logit_l1", None)


def test_a_folder_of_ones_own_methods_is_found_by_every_worker(tmp_path) -> None:
    """``--methods DIR`` (an installed kdbench has no methods/ folder to drop files into): listed, and a suite
    that names the method runs in local worker processes, which find it through $KDBENCH_METHODS."""
    import yaml

    folder = tmp_path / "my methods"
    folder.mkdir()
    (folder / "zz_folder_probe.py").write_text(PLUGIN.replace("zz_dropin_probe", "zz_folder_probe"))
    listed = run_cli("kdbench", "--methods", str(folder), "list", "methods")
    assert listed.returncode == 0 and "zz_folder_probe" in listed.stdout, listed.stdout + listed.stderr
    assert "zz_folder_probe" not in run_cli("kdbench", "list", "methods").stdout  # only when asked for
    suite = {"extends": "smoke", "tune": None, "regimes": [{"name": "balanced"}], "seeds": [0],
             "methods": [{"name": "zz_folder_probe"}], "train": {"epochs": 1}, "teacher": {"train": {"epochs": 1}},
             "executor": {"name": "local", "workers": 1}}
    (tmp_path / "probe.yaml").write_text(yaml.safe_dump(suite))
    ran = run_cli("kdbench", "--methods", str(folder), "run", str(tmp_path / "probe.yaml"), "--results",
                  str(tmp_path / "r"), "--quiet", timeout=600)
    assert ran.returncode == 0 and "finished: 2 done" in ran.stdout, ran.stdout + ran.stderr


def test_a_missing_method_folder_or_a_broken_file_is_one_clear_error(tmp_path) -> None:
    missing = run_cli("kdbench", "--methods", str(tmp_path / "nowhere"), "list", "methods")
    assert missing.returncode == 2 and missing.stderr.strip() == f"error: --methods: '{tmp_path / 'nowhere'}' " \
                                                                 "is not a folder"
    (tmp_path / "broken.py").write_text("def oops(:\n")
    broken = run_cli("kdbench", "--methods", str(tmp_path), "list", "methods")
    assert broken.returncode == 2 and "Traceback" not in broken.stderr
    assert f"method file '{tmp_path / 'broken.py'}' does not import: SyntaxError" in broken.stderr
