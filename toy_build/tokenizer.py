"""A CLIP tokenizer whose vocabulary is the toy world's words.

CLIP's tokenizer is a byte-level BPE in which a word's last piece ends in `</w>`. Here every
word of the world gets its own merge chain, character by character ("b a" → "ba", "ba c" →
"bac", ...), and every intermediate piece is in the vocabulary: transformers 5 refuses a BPE
whose merge results are missing from the vocabulary ("Token `on` out of vocabulary").
"""

from __future__ import annotations

import json
from pathlib import Path

from alignkit.toy.world import BACKGROUNDS, COLOURS, NUMBER_WORDS, SHAPES

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# Prompts are at most 8 words; 16 positions leave room for BOS, EOS and a few unknown words.
MAX_LENGTH = 16


def world_words() -> list[str]:
    words = list(NUMBER_WORDS) + list(COLOURS) + list(BACKGROUNDS)
    words += list(SHAPES) + [s + "s" for s in SHAPES] + ["on", "a", "an", "background"]
    return sorted(set(words))


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE on one word: repeatedly merge the adjacent pair of lowest rank."""
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    while len(pieces) > 1:
        pairs = [(ranks.get(pair, 1 << 30), i) for i, pair in enumerate(zip(pieces, pieces[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        pieces[i:i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def build_vocab_and_merges(words: list[str]) -> tuple[dict[str, int], list[str]]:
    """The BPE tables: single characters (plain and word-final), merge chains, specials.

    Chains of different words interfere (the "r e" of "red" fires inside "three" before
    "three"'s own "h r"), so each word that does not come out as one token gets merges of
    the pieces it does come out as, until every word of the world is a single token.
    """
    tokens: list[str] = []
    merges: list[tuple[str, str]] = []

    def add(token: str) -> None:
        if token not in tokens:
            tokens.append(token)

    for ch in "abcdefghijklmnopqrstuvwxyz":
        add(ch)
        add(ch + "</w>")
    for _ in range(10):
        ranks = {pair: i for i, pair in enumerate(merges)}
        split = {word: _bpe(word, ranks) for word in words}
        broken = {word: pieces for word, pieces in split.items() if len(pieces) > 1}
        if not broken:
            break
        for pieces in broken.values():
            # Merge the pieces left to right; every intermediate result joins the vocabulary.
            piece = pieces[0]
            for right in pieces[1:]:
                if (piece, right) not in merges:
                    merges.append((piece, right))
                piece = piece + right
                add(piece)
    else:  # pragma: no cover - the loop converges in two or three rounds for any word list
        raise RuntimeError(f"BPE merges did not converge for {sorted(broken)}")
    add(BOS)
    add(EOS)
    return {token: i for i, token in enumerate(tokens)}, [f"{a} {b}" for a, b in merges]


def save_tokenizer_files(folder: str | Path) -> None:
    """Write vocab.json and merges.txt, then save a CLIPTokenizer built from them."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab_and_merges(world_words())
    (folder / "vocab.json").write_text(json.dumps(vocab, indent=0))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges], model_max_length=MAX_LENGTH, pad_token=EOS)
    tokenizer.save_pretrained(folder)


def build_tokenizer(folder: str | Path):
    """Save the tokenizer files to `folder` and load them back, as a pipeline would."""
    from transformers import CLIPTokenizer

    save_tokenizer_files(folder)
    return CLIPTokenizer.from_pretrained(folder)
