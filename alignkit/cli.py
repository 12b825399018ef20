"""The `alignkit` command line: train, eval, score, rewards, reward fit (one thin function each).

Errors caused by the user's input are printed as one line on stderr with a non-zero exit;
`ALIGNKIT_DEBUG=1` shows the full traceback instead.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from alignkit.errors import AlignkitError, debug_enabled

# Help as click prints it (pip- and git-like): a flag name that does not fit its column gets a
# line of its own and its help goes below, where rich's panels cut long names to `…` at 80
# columns. Up to 120 columns wide on a wide terminal (click's own cap is 80).
HELP = {"rich_markup_mode": None, "context_settings": {"max_content_width": 120}}
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Align text-to-image diffusion models to differentiable rewards.", **HELP)
err = Console(stderr=True)


@app.callback()
def _plugins() -> None:
    # Before any command: the plugins' rewards, models, prompt sets and judges (alignkit.plugins).
    from alignkit.plugins import load_plugins

    load_plugins()


def default_device() -> str:
    from alignkit.devices import resolve_device

    return resolve_device(None)


@app.command("eval", short_help="Evaluate a tuned LoRA against its base model.")
def eval_(
    path: Path = typer.Argument(..., help="A run folder from `alignkit train`, or a diffusers LoRA folder."),
    model: Optional[str] = typer.Option(None, "--model", help="Base model (hub id, folder, or 'toy'); default: the run's."),
    reward: Optional[str] = typer.Option(None, "--reward", help="The reward it was tuned on (spec); default: the run's."),
    heldout: Optional[str] = typer.Option(None, "--rewards", help="Held-out rewards (spec); default: from the held-out table."),
    reward_option: list[str] = typer.Option([], help="NAME.OPTION=VALUE for any reward factory (repeatable)."),
    judge: list[str] = typer.Option([], help="An independent judge of the trained reward's true target, sharing no weights with it (repeatable): 'count' (another detector), 'toy_rules'; default: toy_rules on toy models."),
    judge_option: list[str] = typer.Option([], help="[JUDGE.]KEY=VALUE for a judge, e.g. count.detector=PATH (repeatable)."),
    prompts: Optional[str] = typer.Option(None, help="Prompt set (its held-out eval split) or file; default: the run's."),
    prompt: Optional[str] = typer.Option(None, help="Evaluate on this one prompt."),
    num_prompts: Optional[int] = typer.Option(None, help="Keep only the first N prompts."),
    seeds: int = typer.Option(4, help="Seeds per prompt (shared by base and tuned images)."),
    first_seed: Optional[int] = typer.Option(None, help="The first seed; default: the run's. Another reads the same models on fresh samples (a replication)."),
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
                   judges=judge, judge_options=judge_option, prompts=prompts, prompt=prompt, num_prompts=num_prompts, seeds=seeds,
                   first_seed=first_seed,
                   num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, eta=eta,
                   resolution=resolution, scales=parse_scales(scales), tolerance=tolerance,
                   output_dir=output_dir, device=device, batch_size=batch_size,
                   command=" ".join(["alignkit", *sys.argv[1:]])))


@app.command(short_help="List the rewards, what each needs, what is available.")
def rewards() -> None:
    """List every reward, what it needs, and whether it is available here now."""
    from alignkit.rewards.listing import print_rewards

    print_rewards()


def train(config: Optional[Path], reward_option: list[str], **flags) -> None:
    """Align a diffusion model to a reward: AlignProp (reward backprop) or GRPO (policy gradient, any reward); LoRA."""
    from alignkit.aligner import load_config, train as run_training

    run_training(load_config(config, flags, reward_option))  # unset flags are None


def _train_signature() -> inspect.Signature:
    """`train`'s options: --config, then one per TrainConfig field that is a flag (its help, the
    field's comment), --reward-option after --reward. Derived, so a new field is a new flag."""
    from alignkit.aligner.config import train_flags

    param = functools.partial(inspect.Parameter, kind=inspect.Parameter.KEYWORD_ONLY)
    params = [param("config", annotation=Optional[Path], default=typer.Option(
        None, "--config", help="A YAML or TOML file of TrainConfig fields (flags override it)."))]
    for flag in train_flags():
        decls = [f"{n}/--no-{n[2:]}" for n in flag.names] if flag.type is bool else flag.names
        params.append(param(flag.name, annotation=Optional[flag.type], default=typer.Option(None, *decls, help=flag.help)))
        if flag.name == "reward":
            params.append(param("reward_option", annotation=list[str], default=typer.Option(
                [], "--reward-option", help="NAME.OPTION=VALUE for a reward factory (repeatable).")))
    return inspect.Signature(params)


train.__signature__ = _train_signature()
train.__annotations__ = {p.name: p.annotation for p in train.__signature__.parameters.values()}
app.command(short_help="Align a diffusion model to a reward (AlignProp or GRPO).")(train)


@app.command(short_help="Score image files with a reward.")
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
    from alignkit.devices import resolve_device
    from alignkit.rewards import parse_reward_options
    from alignkit.rewards.scoring import read_prompts, score_files

    device = resolve_device(device)
    prompts = read_prompts(len(images), prompt, prompts_file)
    overrides = parse_reward_options(reward_option, reward)
    rows = score_files(reward, images, prompts, device, batch_size, overrides)
    table = Table(title=f"reward: {reward}")
    columns = [k for k in rows[0] if k not in ("image", "prompt")]
    for column in ("image", "prompt", *columns):
        table.add_column(column)
    for row in rows:
        print(json.dumps(row), flush=True)
        table.add_row(row["image"], row["prompt"], *(f"{row[c]:.4g}" for c in columns))
    err.print(table)


reward_app = typer.Typer(no_args_is_help=True, help="Make rewards of your own: `alignkit reward fit`.", **HELP)
app.add_typer(reward_app, name="reward")


@reward_app.command("fit", short_help="Fit a reward on frozen CLIP embeddings.")
def reward_fit(
    data: Path = typer.Argument(..., help="Ratings (CSV/JSONL: image, score[, prompt]), pairs (JSONL: prompt, chosen, rejected) or labels (image, label)."),
    out: Path = typer.Option(..., "--out", help="Folder for reward.safetensors, reward.json, report.json, fit.png."),
    kind: Optional[str] = typer.Option(None, help="ratings | pairs | labels (default: detected from the columns)."),
    backbone: Optional[str] = typer.Option(None, help="Hub id or folder of a transformers CLIP (default openai/clip-vit-large-patch14), open_clip:ARCH@CHECKPOINT, or reward:NAME (e.g. reward:toy_clip)."),
    with_prompt: bool = typer.Option(False, "--with-prompt", help="The head also reads the prompt's text embedding."),
    positive: Optional[str] = typer.Option(None, help="Labels: the class the reward prefers (its log-probability is the reward)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a previous fit in --out."),
    folds: int = typer.Option(5, help="k of the k-fold cross-validation."),
    heads: str = typer.Option("linear,mlp", help="Heads to compare (the best by cross-validation is kept)."),
    seed: int = typer.Option(0, help="Seed of the folds and the MLP."),
    compare_reward: str = typer.Option("auto", help="A shipped reward to attack beside the fitted one ('auto': by backbone; 'none')."),
    hack_images: int = typer.Option(16, min=2, help="Held-out images for the hackability figure."),
    cache_dir: Optional[Path] = typer.Option(None, help="Embedding cache (default $ALIGNKIT_CACHE/embeddings or ~/.cache/alignkit/embeddings)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the embedding cache."),
    device: Optional[str] = typer.Option(None, help="cuda, cpu, ... (default: cuda when present)."),
    batch_size: int = typer.Option(32, min=1, help="Images per backbone forward pass."),
) -> None:
    """Fit a differentiable reward on frozen CLIP embeddings from ratings, preferences or labels."""
    from alignkit.devices import resolve_device
    from alignkit.rewards.fit.run import FitConfig, command_line, fit_reward

    fit_reward(FitConfig(data=data, out=out, kind=kind, backbone=backbone, with_prompt=with_prompt, positive=positive,
                         overwrite=overwrite, folds=folds, heads=tuple(h.strip() for h in heads.split(",") if h.strip()),
                         seed=seed, device=resolve_device(device), batch_size=batch_size, cache_dir=cache_dir,
                         no_cache=no_cache, compare_reward=compare_reward, hack_images=hack_images,
                         command=command_line()), console=err)


def main(argv: list[str] | None = None) -> None:
    # Not click's standalone mode: its usage errors are a framed box of many lines, and a
    # mistyped flag deserves the one line every other bad input gets.
    try:
        result = app(args=argv, prog_name="alignkit", standalone_mode=False)
    except AlignkitError as exc:
        if debug_enabled():
            raise
        _fail(str(exc), exc.exit_code)
    except typer.Abort:
        _fail("aborted", 130)
    except typer.TyperException as exc:  # click's UsageError family, vendored by typer
        if type(exc).__name__ == "NoArgsIsHelpError" or not hasattr(exc, "format_message"):
            exc.show()  # `alignkit` alone prints the help
            sys.exit(getattr(exc, "exit_code", 2))
        command = exc.ctx.command_path if getattr(exc, "ctx", None) else "alignkit"
        _fail(f"{exc.format_message()} (see `{command} --help`)", getattr(exc, "exit_code", 2))
    # As standalone mode does: exit with the command's code (typer.Exit's, else 0).
    sys.exit(result if isinstance(result, int) else 0)


def _fail(message: str, code: int) -> None:
    from rich.markup import escape

    # Escaped: messages quote lists and extras ("alignkit[count]") that rich would take for markup.
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)
