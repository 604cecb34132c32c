"""supercal commands: clean (what killed runs left behind)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []


def _size(path) -> int:
    if not path.is_dir():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


@click.command("clean")
@click.argument("folders", nargs=-1, type=click.Path(file_okay=False, exists=True))
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
def clean_command(folders, dry_run):
    """Remove what killed supercal commands left behind in FOLDERS (default: the current folder) and
    three levels below: temporary .NAME.<pid>-*.partial folders and .tmp files, old outputs moved
    aside during a --force swap, stale .NAME.lock files. Only those whose process is gone; an old
    output whose replacement never arrived is moved back instead. The next run to the same output
    does the same for its own leftovers.

    Example: supercal clean runs --dry-run
    """
    from ..outputs import clean, scan

    items = scan(list(folders) or ["."])
    if not items:
        click.echo("nothing left behind")
        return
    freed = 0
    for item in items:
        size = _size(item["path"]) if item["path"].exists() else 0
        owner = "no owner" if item["pid"] is None else f"pid {item['pid']} {'running' if item['alive'] else 'gone'}"
        if item["alive"]:
            done = "kept (still being written)"
        elif dry_run:
            done = "would be " + ("restored" if item["kind"] == "old" and
                                  not item["path"].with_name(item["name"]).exists() else "removed")
        else:
            done = clean(item)
            freed += size if done == "removed" else 0
        click.echo(f"{item['path']}  ({item['kind']}, {owner}, {size / 1e6:.1f} MB): {done}")
    if not dry_run:
        click.echo(f"freed {freed / 1e6:.1f} MB")


COMMANDS.append(clean_command)
