"""The README documents the vocabularies; keep it in step with vocab.py."""

from conftest import ROOT

from wobble.core import vocab


def test_readme_lists_every_vocabulary_value():
    readme = (ROOT / "README.md").read_text()
    for values in (vocab.SERVICES, vocab.CRISIS_SERVICES, vocab.STATUSES, vocab.MODES,
                   vocab.CONCERN_TAGS, vocab.STRENGTH_TAGS, vocab.ETHNICITY_GROUPS):
        for v in values:
            assert v in readme, v


def test_make_help_lists_every_target():
    import re
    import subprocess

    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z]+):", makefile, re.M))
    out = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for t in targets:
        assert t in out, t
