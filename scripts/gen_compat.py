"""Write docs/compatibility.md from the syscall table and the bundled profiles.

Usage: python scripts/gen_compat.py [--check] [OUTPUT]
(default OUTPUT: docs/compatibility.md next to this script's repository).
With --check, exit 1 if OUTPUT differs from what would be written.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pysandbox.policies.report import compatibility_markdown

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "docs" / "compatibility.md"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    out = Path(args[0]) if args else DEFAULT_OUTPUT
    text = compatibility_markdown()
    if check:
        current = out.read_text() if out.exists() else ""
        if current != text:
            sys.stderr.write(f"{out} is stale: run `make docs`\n")
            return 1
        return 0
    out.write_text(text)
    sys.stdout.write(f"wrote {out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
