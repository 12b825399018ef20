"""`alignkit rewards`: what each reward scores, whether it can run here, and what it needs.

Printed for an 80-column terminal: a narrow table (name, differentiable, available, summary),
then one block per reward with its needs, each hub file on a line of its own, indented by two
spaces (the longest, 68 characters, fits in 80 columns): the ids a user has to download are
never cut.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from alignkit.rewards.registry import describe, list_entries

# status()'s reason when weights are missing names them; the block below lists them already.
_NOT_CACHED = "not in HF cache: "


def print_rewards(console: Console | None = None) -> None:
    console = console or Console()
    entries = list_entries()
    statuses = {entry.name: entry.status() for entry in entries}
    table = Table(title="alignkit rewards")
    table.add_column("name", no_wrap=True)
    table.add_column("grad", no_wrap=True)
    table.add_column("here", no_wrap=True)
    table.add_column("what it scores", ratio=1)
    for entry in entries:
        ok = statuses[entry.name][0]
        table.add_row(entry.name, entry.gradient_note(),
                      "[green]yes[/]" if ok else "[red]no[/]", escape(entry.summary))
    console.print(table)
    free = "; ".join(f"{entry.name} with {entry.gradient_free_options()}" for entry in entries if entry.gradient_free)
    console.print("grad: differentiable with respect to the images, as --algorithm alignprop needs"
                  + (f" (* not {free})" if free else "") + "; --algorithm grpo takes every reward. "
                  "here: available on this machine now.", highlight=False)

    console.print()
    console.print("[bold]What each needs[/] (hub files are read from the HF cache; a reward's options "
                  "take local paths):", highlight=False)
    width = max(len(entry.name) for entry in entries)
    for entry in entries:
        ok, why = statuses[entry.name]
        needs = [*(f"package {p}" for p in entry.packages), *(describe(repo, file) for repo, file in entry.weights)]
        why = why.split(":")[0] if why.startswith(_NOT_CACHED) and needs else why
        console.print(f"[bold]{entry.name:<{width}}[/]  {escape(why)}", highlight=False)
        for need in needs:
            console.print(f"  {escape(need)}", highlight=False)
    console.print()
    console.print("Your own rewards: [bold]alignkit reward fit DATA --out DIR[/] then --reward fitted:path=DIR; "
                  "--reward my_pkg.module:factory; or a package's entry points in the group "
                  "'alignkit.rewards' (listed above). See docs/rewards.md.", highlight=False)
