"""The README's loss table, generated from the registry.

    python -m workbench.losses.table                    # print the table
    python -m workbench.losses.table --write README.md  # rewrite it between the loss-table markers
    python -m workbench.losses.table --check README.md  # exit 1 if the README's table is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from workbench.io import atomic_write_text
from workbench.losses import list_losses, loss_spec

START = "<!-- loss-table:start -->"
END = "<!-- loss-table:end -->"


def loss_table_markdown() -> str:
    """A Markdown table of every registered loss: name, file, description, hyperparameters, teacher, entries."""
    lines = [
        "| loss | file | what it does | hyperparameters (defaults) | teacher | reads |",
        "|---|---|---|---|---|---|",
    ]
    for name in list_losses():
        spec = loss_spec(name)
        hparams = "; ".join(f"`{p.describe()}`" for p in spec.params.values()) or "none"
        cells = [f"`{name}`", f"`{spec.source}`", spec.description, hparams]
        cells += ["yes" if spec.needs_teacher else "no", spec.entries]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def replace_table(text: str, table: str) -> str:
    """``text`` with everything between the markers replaced by ``table``; ``ValueError`` if markers are missing."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the text must contain {START!r} followed by {END!r}")
    return text[: start + len(START)] + "\n" + table + text[end:]


def table_in(text: str) -> str:
    """The text between the markers (what ``replace_table`` writes there)."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the text must contain {START!r} followed by {END!r}")
    return text[start + len(START) + 1 : end]


def main(argv: list[str] | None = None) -> int:
    """Print, write or check the loss table (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m workbench.losses.table", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", type=Path, metavar="README", help="rewrite the table between the markers")
    group.add_argument("--check", type=Path, metavar="README", help="exit 1 if the table there is stale")
    args = parser.parse_args(argv)
    table = loss_table_markdown()
    if args.write:
        atomic_write_text(args.write, replace_table(args.write.read_text(encoding="utf-8"), table))
    elif args.check:
        if table_in(args.check.read_text(encoding="utf-8")) != table:
            print(f"{args.check}: loss table is stale; run python -m workbench.losses.table --write {args.check}")
            return 1
    else:
        sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
