"""Every bad input to `alignkit train`, `eval`, `score` and the rewards: one line on stderr, a
non-zero exit, and a disk exactly as it was (no output folder, no config.yaml left behind
to block the corrected rerun, no lock file, nothing changed in the workspace).

One table, one test. The CLI runs in this process (`run_cli`), so that the ~90 cases take
seconds; the only other process is the holder of a run folder's lock.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from alignkit.runfolder import LORA_FILE
from alignkit.hub import load_state_dict
from cli_runner import run_cli

TRAIN = ["--reward", "brightness", "--prompt", "a cat", "--num-inference-steps", "2", "--guidance-scale", "1",
         "--train-batch-size", "1", "--max-train-steps", "1", "--report-to", "none", "--truncation", "last:1"]
NO_GPU = not torch.cuda.is_available()


@dataclass
class Workspace:
    root: Path
    sd: Path

    def __getattr__(self, name: str) -> Path:  # ws.nonutf8 -> root/nonutf8
        return self.root / name


@pytest.fixture(scope="module")
def ws(tiny_sd, test_rewards, tmp_path_factory):
    """Files every case may point at; none of them may change while the table runs."""
    root = tmp_path_factory.mktemp("bad-inputs")
    w = Workspace(root, tiny_sd)
    (root / "nonutf8").write_bytes(b"two red circles\n\xff\xfe caf\xe9\n")
    (root / "nonutf8.yaml").write_bytes(b"learning_rate: 0.001\n# caf\xe9\n")
    (root / "afile").write_text("not a folder\n")
    (root / "notimage.png").write_text("not an image\n")
    (root / "two_prompts.txt").write_text("a cat\na dog\n")
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(root / "image.png")
    for name, text in {"beta.yaml": "adam_beta1: 1.5\n", "eps.yaml": "adam_epsilon: 0\n",
                       "clip.yaml": "max_grad_norm: .nan\n", "warmup.yaml": "lr_warmup_steps: -1\n",
                       "targets.yaml": "lora_target_modules: []\n", "unknown.yaml": "learning_rat: 0.1\n",
                       "type.yaml": "learning_rate: fast\n", "nonfinite.yaml": "max_nonfinite_steps: 0\n",
                       "decay.yaml": "adam_weight_decay: -1\n", "samples.yaml": "num_samples: 0\n",
                       "notmapping.yaml": "- a\n- b\n", "broken.yaml": "rank: [1,\n",
                       "ropts.yaml": "reward_options:\n  count: 5\n"}.items():
        (root / name).write_text(text)
    # A model folder whose model_index.json is cut short (not valid JSON).
    (root / "badindex").mkdir()
    (root / "badindex" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline",\n')
    # A finished run with a checkpoint at each of its 2 steps, and damaged copies of it.
    assert run_cli(["train", "--model", tiny_sd, *TRAIN, "--max-train-steps", "2", "--checkpointing-steps", "1",
                    "--output-dir", root / "run"]) == 0
    for name, damage in {"run_no_optimizer": lambda r: (r / "checkpoint-2" / "optimizer.bin").unlink(),
                         "run_bad_rng": lambda r: (r / "checkpoint-2" / "random_states_0.pkl").write_bytes(b"\0" * 40),
                         "run_bad_metrics": lambda r: (r / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n'),
                         "run_nan": _nan_lora, "run_bad_config": lambda r: (r / "config.yaml").write_bytes(b"\xff\xfe"),
                         "run_bad_reward_options": _number_for_reward_options}.items():
        shutil.copytree(root / "run", root / name)
        damage(root / name)
    # A folder another (live) process holds the lock of.
    # Inputs of `alignkit reward fit` and of fitted / plugin rewards.
    from fit_data import write_bad_fit_inputs

    sys.path.insert(0, str(write_bad_fit_inputs(root)))
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from alignkit.runfolder.lock import RunLock; "
                               "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(600)",
                               str(root / "locked")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    yield w
    holder.kill()
    holder.wait()
    sys.path.remove(str(root / "fit"))


def _nan_lora(run: Path) -> None:
    from safetensors.torch import save_file

    state = load_state_dict(run / LORA_FILE)
    key = next(iter(state))
    state[key] = torch.full_like(state[key], float("inf"))
    save_file(state, str(run / LORA_FILE))


def _number_for_reward_options(run: Path) -> None:
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text())
    config["reward_options"] = {"brightness": 5}
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def _network_down(monkeypatch) -> None:
    import huggingface_hub.constants as constants

    from alignkit import hub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    hub._endpoint_answers.cache_clear()


@dataclass
class Case:
    id: str
    argv: Callable[[Workspace], list]
    # A fragment of the one line the user must see.
    match: str
    setup: Callable | None = None
    skip: str | None = field(default=None)


def train(*extra, out="out", drop=()):
    """train on the tiny pipeline with TRAIN's settings (less the flags in `drop`), then `extra`."""
    base = [a for i, a in enumerate(TRAIN) if a not in drop and (i == 0 or TRAIN[i - 1] not in drop)]
    return lambda w: ["train", "--model", w.sd, *base, "--output-dir", w.root / out, *extra]


def resume(source, *extra, out="out"):
    return lambda w: ["train", "--model", w.sd, *TRAIN, "--max-train-steps", "3", "--output-dir", w.root / out,
                      "--resume-from-checkpoint", source if source == "latest" else w.root / source, *extra]


def evaluate(*extra, run="run"):
    return lambda w: ["eval", w.root / run, "--seeds", "1", "--rewards", "brightness", "--output-dir",
                      w.root / "eval-out", *extra]


def fit(data, *extra, out="fit-out"):
    """reward fit on a data file of the workspace's fit/ folder, the cache inside the workspace."""
    return lambda w: ["reward", "fit", w.root / "fit" / data, "--out", w.root / out, "--cache-dir", w.root / "fit-cache",
                      "--device", "cpu", *extra]


def score(*extra, prompt=("--prompt", "a cat"), image="image.png"):
    return lambda w: ["score", w.root / image, "--device", "cpu", *prompt, *extra]


CASES = [
    # ---- train: numbers out of range
    Case("lr-negative", train("--learning-rate", "-1"), "--learning-rate must be a finite number above 0"),
    Case("lr-zero", train("--learning-rate", "0"), "--learning-rate must be a finite number above 0"),
    Case("lr-nan", train("--learning-rate", "nan"), "--learning-rate must be a finite number above 0, got nan"),
    Case("lr-inf", train("--learning-rate", "inf"), "--learning-rate must be a finite number above 0, got inf"),
    Case("eta-negative", train("--eta", "-0.1"), "--eta must be between 0 (DDIM) and 1"),
    Case("eta-above-one", train("--eta", "1.5"), "--eta must be between 0 (DDIM) and 1"),
    Case("eta-nan", train("--eta", "nan"), "--eta must be between 0 (DDIM) and 1 (DDPM-like), got nan"),
    Case("seed-negative", train("--seed", "-1"), "--seed must be between 0 and"),
    Case("seed-huge", train("--seed", str(2 ** 40)), "--seed must be between 0 and"),
    Case("resolution-zero", train("--resolution", "0"), "--resolution must be a positive multiple of 8, got 0"),
    Case("resolution-toy-accepted", train("--resolution", "36"), "use 32 or 40"),
    Case("resolution-negative", train("--resolution", "-8"), "--resolution must be a positive multiple of 8"),
    Case("resolution-not-8", train("--resolution", "20"), "use 16 or 24"),
    Case("checkpointing-negative", train("--checkpointing-steps", "-1"), "--checkpointing-steps must be at least 0"),
    Case("total-limit-zero", train("--checkpoints-total-limit", "0"), "--checkpoints-total-limit must be at least 1"),
    Case("alpha-zero", train("--lora-alpha", "0"), "--lora-alpha must be a finite number above 0"),
    Case("alpha-nan", train("--lora-alpha", "nan"), "--lora-alpha must be a finite number above 0"),
    Case("guidance-nan", train("--guidance-scale", "nan"), "--guidance-scale must be a finite number"),
    Case("guidance-inf", train("--guidance-scale", "inf"), "--guidance-scale must be a finite number"),
    Case("rank-zero", train("--rank", "0"), "--rank must be at least 1"),
    Case("batch-zero", train("--train-batch-size", "0"), "--train-batch-size must be at least 1"),
    Case("steps-zero", train("--num-inference-steps", "0"), "--num-inference-steps must be at least 1"),
    Case("accumulation-zero", train("--gradient-accumulation-steps", "0"), "--gradient-accumulation-steps must be"),
    Case("max-steps-zero", train("--max-train-steps", "0"), "--max-train-steps must be at least 1"),
    Case("seed-not-a-number", train("--seed", "abc"), "Invalid value for '--seed'"),
    Case("unknown-flag", train("--learning-rat", "1"), "No such option: --learning-rat"),
    Case("truncation-too-long", train("--truncation", "last:5"), "backpropagates through 5 steps"),
    Case("truncation-unknown", train("--truncation", "often"), "unknown --truncation 'often'"),
    Case("mixed-precision", train("--mixed-precision", "fp8"), "--mixed-precision 'fp8' is not one of"),
    Case("fp16-on-cpu", train("--mixed-precision", "fp16"), "fp16 needs a CUDA device",
         skip=None if NO_GPU else "this machine has a GPU"),
    Case("report-to", train("--report-to", "mlflow"), "--report-to 'mlflow' is not one of"),
    # ---- train: config files
    Case("config-nonutf8", train("--config", "{nonutf8.yaml}"), "is not UTF-8 text"),
    Case("config-missing", train("--config", "{nowhere.yaml}"), "no such file"),
    Case("config-beta", train("--config", "{beta.yaml}"), "adam_beta1 must be in [0, 1), got 1.5"),
    Case("config-epsilon", train("--config", "{eps.yaml}"), "adam_epsilon must be a finite number above 0"),
    Case("config-clip-nan", train("--config", "{clip.yaml}"), "max_grad_norm must be a finite number, got nan"),
    Case("config-warmup", train("--config", "{warmup.yaml}"), "lr_warmup_steps must be at least 0"),
    Case("config-targets", train("--config", "{targets.yaml}"), "lora_target_modules must be a non-empty list"),
    Case("config-unknown", train("--config", "{unknown.yaml}"), "did you mean 'learning_rate'"),
    Case("config-type", train("--config", "{type.yaml}"), "'learning_rate' must be float"),
    Case("config-nonfinite", train("--config", "{nonfinite.yaml}"), "max_nonfinite_steps must be at least 1"),
    Case("config-decay", train("--config", "{decay.yaml}"), "adam_weight_decay must be at least 0"),
    Case("config-samples", train("--config", "{samples.yaml}"), "num_samples must be at least 1"),
    Case("config-not-mapping", train("--config", "{notmapping.yaml}"), "must hold a mapping"),
    Case("config-broken", train("--config", "{broken.yaml}"), "does not parse"),
    Case("config-reward-options-number", train("--config", "{ropts.yaml}"),
         "config: reward_options.count must map option names to values"),
    # ---- train: prompts, rewards, models
    Case("prompts-nonutf8", train("--prompts", "{nonutf8}", drop=("--prompt",)), "is not UTF-8 text"),
    Case("prompts-missing", train("--prompts", "{nowhere.txt}", drop=("--prompt",)), "neither a built-in set"),
    Case("prompt-empty", train("--prompt", " "), "--prompt is empty"),
    Case("prompts-unreadable-by-reward", train("--reward", "count"), "count: no object class of the detector"),
    Case("reward-weight-zero", train("--reward", "brightness:0"), "has weight 0; drop the term"),
    Case("reward-weight-nan", train("--reward", "brightness:nan"), "must be finite"),
    Case("reward-unknown", train("--reward", "brightnes"), "did you mean 'brightness'"),
    Case("reward-not-differentiable", train("--reward", "nondiff"), "is not differentiable"),
    Case("reward-option-unknown", train("--reward-option", "brightness.gain=2"), "has no option gain"),
    Case("reward-option-malformed", train("--reward-option", "gain"), "must look like NAME.OPTION=VALUE"),
    Case("model-missing-folder", lambda w: ["train", "--model", w.root / "nomodel", *TRAIN, "--output-dir",
                                            w.root / "out"], "no folder at"),
    Case("model-not-cached-offline", lambda w: ["train", "--model", "org/uncached", *TRAIN, "--output-dir",
                                                w.root / "out"], "HF_HUB_OFFLINE is set"),
    Case("model-index-not-json", train("--model", "{badindex}"), "badindex/model_index.json is not valid JSON"),
    Case("model-network-down", lambda w: ["train", "--model", "org/uncached", *TRAIN, "--output-dir",
                                          w.root / "out"], "cannot be reached", setup=_network_down),
    # ---- train: the output folder
    Case("output-is-a-file", train(out="afile"), "is a file; pass a folder"),
    Case("output-under-a-file", train(out="afile/run"), "is a file, so no folder can be made under it"),
    Case("output-unwritable", lambda w: ["train", "--model", w.sd, *TRAIN, "--output-dir", "/proc/alignkit-run"],
         "/proc/alignkit-run"),
    Case("output-holds-a-run", train(out="run"), "already holds a run"),
    Case("output-locked", train(out="locked"), "is in use by another alignkit train"),
    Case("output-locked-overwrite", train("--overwrite", out="locked"), "is in use by another alignkit train"),
    # ---- train: resuming
    Case("resume-nothing", resume("latest"), "no checkpoint-<step> folder"),
    Case("resume-missing-folder", resume("run/checkpoint-9"), "no such folder"),
    Case("resume-not-a-checkpoint", resume("run"), "not a checkpoint-<step> folder"),
    Case("resume-other-rank", resume("run/checkpoint-2", "--rank", "2"), "rank differ"),
    Case("resume-other-reward", resume("run/checkpoint-2", "--reward", "brightness:2"), "reward differ"),
    Case("resume-other-seed-same-folder", resume("latest", "--seed", "5", out="run"), "seed differ"),
    Case("resume-missing-file", resume("latest", out="run_no_optimizer"), "optimizer.bin missing"),
    Case("resume-damaged-rng", resume("latest", out="run_bad_rng"), "random_states_0.pkl is corrupted"),
    Case("resume-broken-metrics", resume("latest", out="run_bad_metrics"), "metrics.jsonl line 2"),
    # ---- eval
    Case("eval-missing", evaluate(run="nowhere"), "no folder at"),
    Case("eval-a-file", evaluate(run="afile"), "is a file"),
    Case("eval-resolution-not-8", evaluate("--resolution", "20"), "--resolution must be a positive multiple of 8"),
    Case("eval-resolution-zero", evaluate("--resolution", "0"), "--resolution must be a positive multiple of 8"),
    Case("eval-seeds-zero", evaluate("--seeds", "0"), "--seeds must be at least 1"),
    Case("eval-eta", evaluate("--eta", "2"), "--eta must be between 0 and 1"),
    Case("eval-guidance-nan", evaluate("--guidance-scale", "nan"), "--guidance-scale must be a finite number"),
    Case("eval-steps-zero", evaluate("--num-inference-steps", "0"), "--num-inference-steps must be at least 1"),
    Case("eval-scales-text", evaluate("--scales", "a,b"), "--scales 'a,b' must be comma-separated numbers"),
    Case("eval-scales-negative", evaluate("--scales", "-1,1"), "--scales must be non-negative"),
    Case("eval-scales-nan", evaluate("--scales", "nan"), "must be finite numbers"),
    Case("eval-tolerance", evaluate("--tolerance", "-1"), "--tolerance must be non-negative"),
    Case("eval-batch-zero", evaluate("--batch-size", "0"), "--batch-size must be at least 1"),
    Case("eval-num-prompts-zero", evaluate("--num-prompts", "0"), "--num-prompts must be at least 1"),
    Case("eval-prompt-and-prompts", evaluate("--prompt", "a", "--prompts", "simple_animals"), "at most one of"),
    Case("eval-prompts-nonutf8", evaluate("--prompts", "{nonutf8}"), "is not UTF-8 text"),
    Case("eval-device-cuda", evaluate("--device", "cuda"), "no CUDA GPU is visible here",
         skip=None if NO_GPU else "this machine has a GPU"),
    Case("eval-device-unknown", evaluate("--device", "tpu9"), "is not a device name"),
    Case("eval-non-finite-lora", evaluate(run="run_nan"), "holds non-finite values"),
    Case("eval-config-nonutf8", evaluate(run="run_bad_config"), "is not UTF-8 text"),
    Case("eval-prompts-unreadable-by-reward", evaluate("--reward", "count", "--prompt", "a cat"),
         "count: no object class of the detector"),
    Case("eval-reward-unknown", evaluate("--reward", "nope"), "unknown reward 'nope'"),
    Case("eval-heldout-weight-zero", evaluate("--rewards", "brightness:0"), "has weight 0"),
    Case("eval-model-index-not-json", evaluate("--model", "{badindex}"), "badindex/model_index.json is not valid JSON"),
    Case("eval-run-reward-options-number", evaluate(run="run_bad_reward_options"),
         "reward_options.brightness must map option names to values"),
    Case("eval-output-locked", evaluate("--output-dir", "{locked}"), "is in use by another alignkit train (pid"),
    # ---- score
    Case("score-device-cuda", score("--reward", "brightness", "--device", "cuda"), "no CUDA GPU is visible here",
         skip=None if NO_GPU else "this machine has a GPU"),
    Case("score-device-unknown", score("--reward", "brightness", "--device", "gpu"), "is not a device name"),
    Case("score-prompts-nonutf8", score("--reward", "brightness", prompt=("--prompts-file", "{nonutf8}")),
         "is not UTF-8 text"),
    Case("score-prompts-count", score("--reward", "brightness", prompt=("--prompts-file", "{two_prompts.txt}")),
         "has 2 prompts for 1 images"),
    Case("score-no-prompt", score("--reward", "brightness", prompt=()), "give exactly one of --prompt"),
    Case("score-missing-image", score("--reward", "brightness", image="nowhere.png"), "no image file at"),
    Case("score-not-an-image", score("--reward", "brightness", image="notimage.png"), "is not a readable image"),
    Case("score-weight-zero", score("--reward", "brightness:0"), "has weight 0"),
    Case("score-batch-zero", score("--reward", "brightness", "--batch-size", "0"), "Invalid value for '--batch-size'"),
    Case("score-no-reward", score(), "Missing option '--reward'"),
    # ---- rewards: specs, options and their models
    Case("spec-empty-term", score("--reward", "brightness++compress"), "empty term around '+'"),
    Case("spec-twice", score("--reward", "compress+compress"), "appears twice"),
    Case("option-ambiguous", score("--reward", "brightness+compress", "--reward-option", "gain=1"),
         "say which reward"),
    Case("option-other-reward", score("--reward", "compress", "--reward-option", "hps.version=v2"),
         "'hps' is not in the reward spec"),
    Case("clip-model-missing", score("--reward", "clip", "--reward-option", "model={nomodel}"), "no folder at"),
    Case("clip-not-cached", score("--reward", "clip"), "not in the Hugging Face cache"),
    Case("clip-network-down", score("--reward", "clip"), "cannot be reached", setup=_network_down),
    Case("aesthetic-head-missing", score("--reward", "aesthetic", "--reward-option", "head_path={nowhere.pth}"),
         "nowhere.pth"),
    Case("hps-version", score("--reward", "hps", "--reward-option", "version=v9"), "v9"),
    Case("count-imgsz", score("--reward", "count", "--reward-option", "imgsz=7"), "imgsz must be an integer >= 32"),
    Case("count-conf", score("--reward", "count", "--reward-option", "conf=2"), "conf must be a number between 0"),
    Case("count-prompt", score("--reward", "count"), "count: no object class of the detector"),
    Case("rewards-extra-argument", lambda w: ["rewards", "--all"], "No such option: --all"),
    # ---- reward fit: data, folds, output (all caught before a model loads or a file is written)
    Case("fit-missing-image", fit("missing_image.csv"), "row 13: no image file at"),
    Case("fit-unreadable-image", fit("unreadable.csv"), "notimage.png is not a readable image"),
    Case("fit-row-without-score", fit("no_score.csv"), "row 3: no 'score'"),
    Case("fit-too-few-rows", fit("few.csv"), "too few for 5-fold cross-validation"),
    Case("fit-too-few-for-the-folds", fit("ok.csv", "--folds", "7"), "too few for 7-fold cross-validation"),
    Case("fit-folds-one", fit("ok.csv", "--folds", "1"), "--folds must be at least 2"),
    Case("fit-constant-scores", fit("constant.csv"), "every score is 3.5; constant scores carry nothing to fit"),
    Case("fit-one-class", fit("one_class.jsonl"), "every row has the label 'good'"),
    Case("fit-nan-score", fit("nan.csv"), "score 'nan' is not finite"),
    Case("fit-inf-score", fit("inf.csv"), "score 'inf' is not finite"),
    Case("fit-pair-same-file", fit("same_pair.jsonl"), "'chosen' and 'rejected' are the same image"),
    Case("fit-pair-same-content", fit("same_content_pair.jsonl"), "'chosen' and 'rejected' are the same image"),
    Case("fit-out-holds-a-fit", fit("ok.csv", out="fit/prev_fit"), "already holds a previous fit; pass --overwrite"),
    Case("fit-out-is-a-file", fit("ok.csv", out="afile"), "is a file; give a folder"),
    Case("fit-kind-unknown", fit("ok.csv", "--kind", "scores"), "--kind 'scores' is not one of"),
    Case("fit-kind-undetectable", fit("unknown_columns.csv"), "cannot tell the data's kind"),
    Case("fit-positive-unknown", fit("labels.jsonl", "--positive", "great"), "--positive 'great' is not a label"),
    Case("fit-positive-on-ratings", fit("ok.csv", "--positive", "good"), "--positive only applies to labels"),
    Case("fit-not-json", fit("notjson.jsonl"), "line 2 is not JSON"),
    Case("fit-data-missing", fit("nowhere.csv"), "no such file"),
    Case("fit-heads-unknown", fit("ok.csv", "--heads", "svm"), "unknown head svm"),
    Case("fit-with-prompt-no-prompts", fit("ok.csv", "--with-prompt"), "has no 'prompt' column values"),
    Case("fit-backbone-missing", fit("ok.csv", "--backbone", "{nomodel}"), "no folder at"),
    Case("fit-backbone-open-clip", fit("ok.csv", "--backbone", "open_clip:ViT-B-32"), "open_clip:ARCH@CHECKPOINT"),
    # ---- fitted and plugin rewards
    Case("fitted-backbone-unavailable", score("--reward", "fitted:path={fit/fitted_bad_backbone}"),
         "its backbone '"),
    Case("fitted-no-path", score("--reward", "fitted"), "reward 'fitted' needs path=DIR"),
    Case("fitted-not-a-fit", score("--reward", "fitted:path={fit/images}"), "has no reward.json"),
    Case("fitted-option-unknown", score("--reward", "fitted:folder=x"), "reward 'fitted' has no option folder"),
    Case("plugin-import-fails", score("--reward", "ak_no_such_module:factory"), "cannot import module 'ak_no_such_module'"),
    Case("plugin-no-attribute", score("--reward", "ak_badplug:missing"), "has no attribute 'missing'"),
    Case("plugin-factory-raises", score("--reward", "ak_badplug:fails"), "the factory failed (RuntimeError: no weights here)"),
    Case("plugin-wrong-shape", score("--reward", "ak_badplug:wrong_shape"), "returned shape (2, 64) for 2 images"),
    Case("plugin-no-gradient", train("--reward", "ak_badplug:nograd"), "no gradient reaches the pixels"),
]


def _argv(case: Case, w: Workspace) -> list[str]:
    """The case's arguments, "{name}" standing for the path root/name in the workspace."""
    return [re.sub(r"\{([^{}]+)\}", lambda m: str(w.root / m.group(1)), a) for a in map(str, case.argv(w))]


def _snapshot(root: Path) -> dict:
    """Every path under root, with the content hash of files: the disk, as a value."""
    state = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        state[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return state


def test_the_table_is_large_enough():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_a_non_zero_exit_and_an_untouched_disk(case, ws, fails, monkeypatch):
    if case.skip:
        pytest.skip(case.skip)
    if case.setup:
        case.setup(monkeypatch)
    argv = _argv(case, ws)
    before = _snapshot(ws.root)
    fails(argv, case.match)
    assert _snapshot(ws.root) == before
