"""The `alignkit` command line: train, eval, score, rewards (one thin function each).

Errors caused by the user's input are printed as one line on stderr with a non-zero exit;
`ALIGNKIT_DEBUG=1` shows the full traceback instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from alignkit.errors import AlignkitError, debug_enabled

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Align text-to-image diffusion models to differentiable rewards.")
err = Console(stderr=True)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_reward_options(options: list[str], spec: str) -> dict:
    """['aesthetic.head_path=/x', 'hps.version=v2.1'] -> load_reward keyword overrides.

    With a single reward the `name.` prefix may be left out.
    """
    import yaml

    from alignkit.rewards import parse_spec

    names = [name for name, _ in parse_spec(spec)]
    overrides: dict = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise AlignkitError(f"--reward-option '{item}' must look like NAME.OPTION=VALUE")
        name, dot, option = key.rpartition(".")
        if not dot:
            if len(names) > 1:
                raise AlignkitError(f"--reward-option '{item}': say which reward, e.g. {names[0]}.{key}={value}")
            name, option = names[0], key
        if name not in names:
            raise AlignkitError(f"--reward-option '{item}': '{name}' is not in the reward spec '{spec}'")
        parsed = yaml.safe_load(value) if value else value
        overrides.setdefault(name, {})[option] = value if isinstance(parsed, (dict, list)) or parsed is None else parsed
    return overrides


@app.command("eval")
def eval_(
    path: Path = typer.Argument(..., help="A run folder from `alignkit train`, or a diffusers LoRA folder."),
    model: Optional[str] = typer.Option(None, "--model", help="Base model (hub id, folder, or 'toy'); default: the run's."),
    reward: Optional[str] = typer.Option(None, "--reward", help="The reward it was tuned on (spec); default: the run's."),
    heldout: Optional[str] = typer.Option(None, "--rewards", help="Held-out rewards (spec); default: from the held-out table."),
    reward_option: list[str] = typer.Option([], help="NAME.OPTION=VALUE for any reward factory (repeatable)."),
    prompts: Optional[str] = typer.Option(None, help="Prompt set (its held-out eval split) or file; default: the run's."),
    prompt: Optional[str] = typer.Option(None, help="Evaluate on this one prompt."),
    num_prompts: Optional[int] = typer.Option(None, help="Keep only the first N prompts."),
    seeds: int = typer.Option(4, help="Seeds per prompt (shared by base and tuned images)."),
    num_inference_steps: Optional[int] = typer.Option(None, help="Denoising steps; default: the run's."),
    guidance_scale: Optional[float] = typer.Option(None, help="Classifier-free guidance; default: the run's."),
    eta: Optional[float] = typer.Option(None, help="DDIM eta; default: the run's."),
    resolution: Optional[int] = typer.Option(None, help="Image side in pixels; default: the run's."),
    scales: str = typer.Option("0,0.25,0.5,0.75,1", help="LoRA scales for the final LoRA, e.g. 0,0.5,1,1.5."),
    tolerance: float = typer.Option(0.5, help="Flag a watched metric that falls more than this many base stds."),
    output_dir: Optional[Path] = typer.Option(None, help="Where to write the report (default: PATH/eval)."),
    device: Optional[str] = typer.Option(None, help="cuda, cpu, ... (default: cuda when present)."),
    batch_size: int = typer.Option(8, help="Images per pipeline call and per reward forward."),
) -> None:
    """Evaluate a tuned LoRA against its base model: reward gains, held-out rewards, over-optimisation."""
    from alignkit.evaluation import EvalConfig, parse_scales, run

    run(EvalConfig(path=path, model=model, reward=reward, heldout=heldout, reward_options=reward_option,
                   prompts=prompts, prompt=prompt, num_prompts=num_prompts, seeds=seeds,
                   num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, eta=eta,
                   resolution=resolution, scales=parse_scales(scales), tolerance=tolerance,
                   output_dir=output_dir, device=device, batch_size=batch_size,
                   command=" ".join(["alignkit", *sys.argv[1:]])))


@app.command()
def rewards() -> None:
    """List every reward, what it needs, and whether it is available here now."""
    from alignkit.rewards import list_entries

    table = Table(title="alignkit rewards")
    for column in ("name", "what it scores", "needs", "grad", "available"):
        table.add_column(column)
    for entry in list_entries():
        ok, why = entry.status()
        needs = [*entry.packages, *(f"{repo}/{file}" for repo, file in entry.weights)]
        table.add_row(entry.name, entry.summary, "\n".join(needs) or "-",
                      "yes" if entry.differentiable else "no",
                      f"[green]yes[/] ({why})" if ok else f"[red]no[/] ({why})")
    Console().print(table)


@app.command()
def score(
    images: list[Path] = typer.Argument(..., help="Image files to score."),
    reward: str = typer.Option(..., "--reward", "-r", help="Reward spec, e.g. 'hps+aesthetic:0.5'."),
    prompt: Optional[str] = typer.Option(None, help="One prompt for every image."),
    prompts_file: Optional[Path] = typer.Option(None, help="A file with one prompt a line, one per image."),
    reward_option: list[str] = typer.Option([], help="NAME.OPTION=VALUE for a reward factory (repeatable)."),
    device: Optional[str] = typer.Option(None, help="cuda, cpu, ... (default: cuda when present)."),
    batch_size: int = typer.Option(16, min=1, help="Images scored per forward pass."),
) -> None:
    """Score image files with a reward: a table on stderr, one JSON line per image on stdout."""
    from alignkit.rewards.scoring import read_prompts, score_files

    prompts = read_prompts(len(images), prompt, prompts_file)
    overrides = parse_reward_options(reward_option, reward)
    rows = score_files(reward, images, prompts, device or default_device(), batch_size, overrides)
    table = Table(title=f"reward: {reward}")
    columns = [k for k in rows[0] if k not in ("image", "prompt")]
    for column in ("image", "prompt", *columns):
        table.add_column(column)
    for row in rows:
        print(json.dumps(row), flush=True)
        table.add_row(row["image"], row["prompt"], *(f"{row[c]:.4g}" for c in columns))
    err.print(table)


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, prog_name="alignkit")
    except AlignkitError as exc:
        if debug_enabled():
            raise
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
