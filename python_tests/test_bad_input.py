"""Bad inputs of the ``cdred-fast`` command: one line ``error: ...``, exit status 2, no
traceback, the message of docs/bad-input.md, and no files left behind."""

from pathlib import Path

import pytest
from bad_inputs import CASES, make_run, run_case, table

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad-input.md"


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    make_run(tmp)
    return tmp


def _doc_messages() -> dict[str, str]:
    messages = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        if len(cells) == 3 and cells[0] in CASES:
            messages[cells[0]] = cells[2].strip("`").replace("\\|", "|")
    return messages


@pytest.mark.parametrize("case_id", list(CASES))
def test_bad_input_gets_one_line(tmp, case_id):
    status, _, stderr, exc = run_case(case_id, tmp)
    assert status == 2 and isinstance(exc, SystemExit), (status, stderr, exc)
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert CASES[case_id][2] in lines[0]
    assert "Traceback" not in stderr
    assert _doc_messages().get(case_id) == lines[0], "docs/bad-input.md is stale: run python tools/bad_input_doc.py"
    assert not (tmp / "new").exists(), "a refused run left a work directory"


def test_doc_lists_every_case():
    assert set(_doc_messages()) == set(CASES)
    text = DOC.read_text()
    assert text == table(_doc_messages())


def test_files_are_written_with_the_umask_mode(tmp):
    import os

    umask = os.umask(0)
    os.umask(umask)
    for name in ("demos.npz", "checkpoint.pt", "eval.csv", "config.yaml"):
        assert (tmp / "run" / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
