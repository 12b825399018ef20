"""Serve an alignkit reward to another Python environment over a pipe.

The peer environment (trl 0.23.1) has neither ultralytics nor alignkit's other extras, and
must not get them: a peer is measured as it ships. A non-differentiable reward does not need
to live in the trainer's process, so the peer starts this script with alignkit's interpreter
and exchanges length-prefixed `torch.save` frames with it:

    request : {"images": float (B,3,H,W) in [0,1], "prompts": [str] * B}
    response: {"reward": (B,), <each target>: (B,), <each judge column>: (B,)}   or   {"error": "one line"}

With a judge (`alignkit.evaluation.judges`, e.g. `toy_rules`), its columns (the independent
truth, e.g. `pixel_count_correct`) are served beside the reward's own targets, so that a peer can
be given the same truth the evaluation reads.

Frames are read with `torch.load(weights_only=True)`: tensors, strings and lists only.

    python benchmarks/reward_bridge.py SPEC [JUDGE [OPTIONS_JSON]]   (then speak the protocol on stdin/stdout)
"""

from __future__ import annotations

import io
import os
import struct
import sys
from typing import BinaryIO

_HEADER = struct.Struct("<Q")


def write_frame(stream: BinaryIO, obj) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def read_frame(stream: BinaryIO):
    import torch

    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None  # the other side closed the pipe: we are done
    (size,) = _HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError(f"reward bridge: truncated frame ({len(data)} of {size} bytes)")
    return torch.load(io.BytesIO(data), weights_only=True)


class RewardClient:
    """The peer's side: start the bridge under `python` and score batches through it."""

    def __init__(self, python: str, spec: str, env: dict | None = None, judge: dict | None = None):
        """`judge`: {"name": ..., "options": {...}} to serve a judge's columns too."""
        import json
        import subprocess

        extra = [judge["name"], json.dumps(judge.get("options") or {})] if judge else []
        self.proc = subprocess.Popen([python, __file__, spec, *extra], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env)
        ready = read_frame(self.proc.stdout)
        if ready is None or "error" in ready:
            raise RuntimeError((ready or {}).get("error", f"reward bridge for '{spec}' exited before it was ready"))

    def __call__(self, images, prompts: list[str]) -> dict:
        write_frame(self.proc.stdin, {"images": images.detach().float().cpu().contiguous(), "prompts": list(prompts)})
        out = read_frame(self.proc.stdout)
        if out is None or "error" in out:
            raise RuntimeError((out or {}).get("error", "reward bridge exited"))
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def serve(spec: str, judge_name: str | None = None, judge_options: str = "{}") -> None:
    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    # Runs under alignkit's own interpreter (`python` of RewardClient), where alignkit is installed.
    import torch

    from alignkit.errors import AlignkitError

    try:
        from alignkit.rewards import load_reward

        reward = load_reward(spec, device="cuda" if torch.cuda.is_available() else "cpu")
        judge = None
        if judge_name:
            import json

            from alignkit.evaluation.judges import JudgeScorer

            judge = JudgeScorer(judge_name, json.loads(judge_options), str(reward.device))
            judge.judge  # built now: a missing judge is the bridge's one-line error, before training
    except AlignkitError as exc:
        write_frame(proto_out, {"error": str(exc)})
        return
    write_frame(proto_out, {"ready": True})
    stdin = sys.stdin.buffer
    while (request := read_frame(stdin)) is not None:
        images = request["images"].to(reward.device)
        try:
            with torch.no_grad():
                scores = reward(images, request["prompts"])
                targets = reward.targets(images, request["prompts"])
                if judge is not None:
                    targets.update(judge.score(images, request["prompts"]))
        except AlignkitError as exc:
            write_frame(proto_out, {"error": str(exc)})
            continue
        write_frame(proto_out, {"reward": scores.float().cpu(), **{k: v.float().cpu() for k, v in targets.items()}})


if __name__ == "__main__":
    serve(*sys.argv[1:4])
