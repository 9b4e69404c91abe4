"""Write the `pysandbox` launcher: a real interpreter started with -I -S.

-I ignores PYTHON* variables (PYTHONDONTWRITEBYTECODE would make every start
recompile the package) and -S skips site, whose .pth processing (an editable
install's import hook among it) costs more than the runtime's own imports.
The package is reached through a tree of links that maps the layer folders to
their installed names, so the work tree itself is what runs.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

LAYERS = ("oci", "sentry", "syscalls", "gofer", "policies")


def make_tree(repo: Path, tree: Path) -> Path:
    pkg = tree / "pysandbox"
    pkg.mkdir(parents=True, exist_ok=True)
    links = {"__init__.py": repo / "pkg" / "__init__.py", **{n: repo / n for n in LAYERS}}
    for name, target in links.items():
        link = pkg / name
        if link.is_symlink() or link.exists():
            if link.is_symlink() and Path(os.readlink(link)) == target:
                continue
            link.unlink()
        link.symlink_to(target)
    return tree


def main() -> int:
    repo = Path(__file__).resolve().parents[1]
    out = Path(sys.argv[1])
    tree = make_tree(repo, repo / "build" / "pkgroot")
    site = sysconfig.get_paths()["purelib"]
    text = (
        f"#!{sys.executable} -IS\n"
        "import sys\n"
        f"sys.path[:0] = [{str(tree)!r}]\n"
        f"sys.path.append({site!r})\n"
        # create/run/exec: start warming the cgroup-migration lock before
        # anything else is imported (see pysandbox.oci.cgroups.prime_migration).
        "if {'create', 'run', 'exec'}.intersection(sys.argv[1:10]):\n"
        "    from pysandbox.oci.cgroups import prime_migration\n"
        "    prime_migration()\n"
        "from pysandbox.oci.cli import run_and_exit\n"
        "run_and_exit()\n"
    )
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o755)
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
