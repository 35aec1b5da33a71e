"""Write docs/bad-input.md: run every case of python_tests/bad_inputs.py and record its message.

PYTHONPATH=. python tools/bad_input_doc.py
"""

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python_tests"))

from bad_inputs import CASES, make_run, run_case, table  # noqa: E402


def main() -> None:
    messages = {}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        make_run(tmp)
        for case_id in CASES:
            status, _, stderr, _ = run_case(case_id, tmp)
            lines = stderr.splitlines()
            if status != 2 or len(lines) != 1:
                raise SystemExit(f"{case_id}: exit {status}, stderr {stderr!r}")
            messages[case_id] = lines[0]
    (ROOT / "docs" / "bad-input.md").write_text(table(messages))
    print(f"wrote {ROOT / 'docs' / 'bad-input.md'} ({len(messages)} cases)")


if __name__ == "__main__":
    main()
