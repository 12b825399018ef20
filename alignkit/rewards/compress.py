"""`compress` / `incompress`: a differentiable proxy of the JPEG file size (DDPO's target);
`jpeg`: the true size itself, with no gradient (for `--algorithm grpo`).

DDPO scores an image by the size of `PIL.Image.save(buf, "JPEG", quality=95)` in kB
(bytes / 1000), negated for compressibility. That number is a step function of the pixels,
so this module re-traces what Pillow's libjpeg does, with every step differentiable:

1. RGB -> YCbCr with JPEG's (JFIF) matrix, level shift by -128;
2. 4:2:0 chroma subsampling (Pillow's default at quality 95 is libjpeg's 2x2 box average),
   after padding the image to whole 16x16 MCUs by edge replication, as libjpeg does;
3. an orthonormal 8x8 DCT-II per block, divided by the Annex-K tables scaled to quality 95
   with libjpeg's `jpeg_quality_scaling` (scale 200 - 2q percent, rounded, clamped to 1..255);
4. a smooth bit cost of what the baseline Huffman coder pays: for each coefficient the
   "size" bits (~log2(1+|q|)) and one Huffman symbol when it survives rounding (a sharpened
   soft indicator of |q| >= 0.5); the zeros that lengthen run codes (those before a block's
   last nonzero in zig-zag order: trailing zeros are free, EOB ends the block); for DC the
   size bits of the difference to the previous block of its component (DPCM, in MCU order);
   and a per-block (EOB) and per-file (headers) cost;
5. a linear calibration of those features to kB, fitted once (see `_CALIBRATION`).

`targets()` reports the real Pillow size beside the proxy, so evaluation can tell when the
proxy is being gamed rather than the file made smaller.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.rewards.base import Reward
from alignkit.rewards.registry import register

QUALITY = 95

# ITU-T T.81 Annex K tables (natural row-major order), the base of libjpeg's default tables.
_LUMA_TABLE = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)
_CHROMA_TABLE = (
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
)

# JFIF's full-range RGB -> YCbCr (what libjpeg's rgb_ycc_convert computes), before the +128.
_YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.168735892, -0.331264108, 0.5),
    (0.5, -0.418687589, -0.081312411),
)

# Names of the proxy's features, in the order of `_CALIBRATION.weights`.
FEATURES = ("luma_bits", "luma_symbols", "chroma_bits", "chroma_symbols", "dc_bits", "blocks",
            "luma_run_zeros", "chroma_run_zeros")


@dataclass(frozen=True)
class Calibration:
    """kB = intercept + sum(weights * features); weights are bytes per unit of a feature / 1000."""

    weights: tuple[float, ...]
    intercept: float


# Fitted by `python benchmarks/compress_proxy.py --fit`: non-negative least squares (rows
# weighted by 1/sqrt(kB)) of the true Pillow 13 quality-95 size in kB on FEATURES, over 600
# synthetic images (seed 0: noise at several amplitudes, gradients, shapes, textures, blurred-
# noise "photos" with shapes, sides 24..256 px); how well it tracks the true size on held-out
# images: docs/experiments/2026-11-26-compress-proxy.md. Read as bytes: ~2.8 bits per luma
# size bit (the bits themselves plus the Huffman code, which grows with the size), ~3.7 bits per chroma
# symbol, ~1.5 bits per coded chroma zero, 602 bytes of headers (JFIF, tables). The features
# are collinear (symbols, bits and run zeros rise together; the block count is fixed by the
# size), so NNLS zeroes some of them: read the weights as a fit, not as the code lengths.
_CALIBRATION = Calibration(weights=(3.477e-4, 0.0, 3.806e-5, 4.6e-4, 1.713e-4, 0.0, 0.0, 1.914e-4),
                           intercept=0.6021)


def quality_table(base: tuple[int, ...], quality: int = QUALITY) -> Tensor:
    """libjpeg's `jpeg_quality_scaling` + `jpeg_add_quant_table` with force_baseline."""
    quality = min(max(quality, 1), 100)
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    table = [min(max((b * scale + 50) // 100, 1), 255) for b in base]
    return torch.tensor(table, dtype=torch.float32).view(8, 8)


def dct_matrix(n: int = 8) -> Tensor:
    """The orthonormal DCT-II matrix C: C X C^T is JPEG's F(u,v) = 1/4 C(u) C(v) sum f cos cos."""
    k = torch.arange(n, dtype=torch.float64).view(-1, 1)
    i = torch.arange(n, dtype=torch.float64).view(1, -1)
    mat = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    mat[0] /= math.sqrt(2)
    return mat.float()


def zigzag_order(n: int = 8) -> Tensor:
    """Row-major indices of an n x n block in JPEG's zig-zag scan order."""
    cells = sorted(((i, j) for i in range(n) for j in range(n)),
                   key=lambda c: (c[0] + c[1], c[0] if (c[0] + c[1]) % 2 else c[1]))
    return torch.tensor([i * n + j for i, j in cells])


def blockify(plane: Tensor) -> Tensor:
    """(B,H,W) with H, W multiples of 8 -> (B, H/8, W/8, 8, 8)."""
    b, h, w = plane.shape
    return plane.view(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)


class JpegSizeProxy(torch.nn.Module):
    """Differentiable estimate of the quality-95 JPEG file size of each image, in kB."""

    def __init__(self, quality: int = QUALITY, calibration: Calibration = _CALIBRATION,
                 sharpness: float = 0.1):
        super().__init__()
        self.quality = quality
        self.calibration = calibration
        # Width of the soft "survives rounding" step around |q| = 0.5 (in quantisation steps):
        # small enough to count like the codec, wide enough to pass gradients near the edge.
        self.sharpness = sharpness
        self.register_buffer("dct", dct_matrix(), persistent=False)
        self.register_buffer("q_luma", quality_table(_LUMA_TABLE, quality), persistent=False)
        self.register_buffer("q_chroma", quality_table(_CHROMA_TABLE, quality), persistent=False)
        self.register_buffer("ycbcr", torch.tensor(_YCBCR), persistent=False)
        self.register_buffer("zigzag", zigzag_order(), persistent=False)
        self.register_buffer("w", torch.tensor(calibration.weights), persistent=False)

    def features(self, images: Tensor) -> Tensor:
        """(B,3,H,W) in [0,1] -> (B, len(FEATURES)) bit-cost features, float32."""
        x = images.float() * 255.0
        # libjpeg pads each component to whole MCUs (16x16 pixels at 4:2:0) by replicating
        # the last column/row; those dummy blocks are coded too.
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % 16, -w % 16
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        # Level shift: Y - 128; Cb and Cr (which libjpeg stores + 128) are already centred.
        shift = x.new_tensor([128.0, 0.0, 0.0]).view(1, 3, 1, 1)
        ycc = torch.einsum("ij,bjhw->bihw", self.ycbcr.to(x.device), x) - shift
        luma = ycc[:, 0]
        # h2v2 downsampling in libjpeg is a 2x2 box average (its alternating rounding bias
        # is below a grey level and ignored here).
        chroma = F.avg_pool2d(ycc[:, 1:], 2)
        y_coef = self._quantised(luma, self.q_luma)                    # (B, by, bx, 8, 8)
        c_coef = torch.cat([self._quantised(chroma[:, 0], self.q_chroma),
                            self._quantised(chroma[:, 1], self.q_chroma)], dim=1)
        y_bits, y_syms, y_runs = self._ac_cost(y_coef)
        c_bits, c_syms, c_runs = self._ac_cost(c_coef)
        dc_bits = self._dc_cost(y_coef[..., 0, 0], mcu=True) \
            + self._dc_cost(c_coef[..., 0, 0].view(x.shape[0], 2, -1), mcu=False)
        n_blocks = y_coef[..., 0, 0].flatten(1).shape[1] * 1.5
        blocks = torch.full_like(dc_bits, n_blocks)
        return torch.stack([y_bits, y_syms, c_bits, c_syms, dc_bits, blocks, y_runs, c_runs], dim=1)

    def forward(self, images: Tensor) -> Tensor:
        # Under mixed precision the DCTs would run in fp16/bf16, whose step at |F| ~ 2000 is a
        # whole quantisation step: the bit cost is always computed in float32.
        with torch.autocast(device_type=images.device.type, enabled=False):
            feats = self.features(images)
            return feats @ self.w.to(feats.device) + self.calibration.intercept

    def _quantised(self, plane: Tensor, table: Tensor) -> Tensor:
        dct = self.dct.to(plane.device)
        blocks = blockify(plane)
        # libjpeg's integer DCT is 8x this one and its quantiser divides by 8*Q: same ratio.
        coef = dct @ blocks @ dct.T
        return coef / table.to(plane.device)

    def _ac_cost(self, coef: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per image: the 'size' bits, the soft number of coded AC coefficients, and the soft
        number of zeros the coder must run-length code (those before the block's last nonzero)."""
        # AC coefficients in the order the coder walks them.
        ac = coef.flatten(-2)[..., self.zigzag[1:].to(coef.device)]
        magnitude = _smooth_abs(ac)
        # The size category of a coefficient is ceil(log2(|q|+1)); log2(1+|q|) is its smooth
        # version and also grows where a zero is about to round away from zero.
        bits = torch.log2(1.0 + magnitude)
        # One Huffman (run, size) symbol per coefficient that survives rounding; a sharpened
        # sigmoid so that the many tiny coefficients of a smooth image do not leak symbols.
        symbols = torch.sigmoid((magnitude - 0.5) / self.sharpness)
        # A zero is free when only zeros follow it (EOB ends the block) and lengthens the
        # (run, size) code of the next nonzero otherwise: P(zero) * P(some nonzero after it).
        zero = 1.0 - symbols
        all_zero_from = zero.flip(-1).cumprod(-1).flip(-1)  # prod_{m >= k} P(zero_m)
        all_zero_after = torch.cat([all_zero_from[..., 1:], torch.ones_like(zero[..., :1])], -1)
        run_zeros = zero * (1.0 - all_zero_after)
        return bits.flatten(1).sum(1), symbols.flatten(1).sum(1), run_zeros.flatten(1).sum(1)

    def _dc_cost(self, dc: Tensor, mcu: bool) -> Tensor:
        """Bits of the DC differences (DPCM) per image, in the order blocks are coded."""
        if mcu:
            # Luma blocks are coded 2x2 per MCU: reorder (by, bx) -> (MCU row, MCU col, 2, 2).
            b, by, bx = dc.shape
            dc = dc.view(b, by // 2, 2, bx // 2, 2).permute(0, 1, 3, 2, 4).reshape(b, 1, -1)
        else:
            dc = dc.view(dc.shape[0], dc.shape[1], -1)
        # The predictor starts at 0, so the first block pays for its full DC value.
        diff = torch.diff(dc, dim=-1, prepend=torch.zeros_like(dc[..., :1]))
        return torch.log2(1.0 + _smooth_abs(diff)).flatten(1).sum(1)


def _smooth_abs(x: Tensor, eps: float = 1e-3) -> Tensor:
    # |x| smoothed at 0: its gradient goes continuously through 0 instead of jumping from -1
    # to +1, which keeps gradient steps on near-zero coefficients from oscillating.
    return torch.sqrt(x * x + eps * eps)


def pil_jpeg_kb(images: Tensor, quality: int = QUALITY) -> Tensor:
    """The true target: size in kB (bytes/1000) of each image saved by Pillow as JPEG."""
    from alignkit.images import to_pil

    sizes = []
    for image in images:
        buffer = io.BytesIO()
        to_pil(image).save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32)


class JpegSizeReward(Reward):
    """+/- the proxy JPEG size in kB: `compress` prefers small files, `incompress` big ones."""

    def __init__(self, sign: float, quality: int = QUALITY):
        super().__init__()
        self.sign = sign
        self.proxy = JpegSizeProxy(quality=quality)

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        return self.sign * self.proxy(images)

    @torch.no_grad()
    def targets(self, images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        return {"jpeg_kb": pil_jpeg_kb(images, self.proxy.quality).to(images.device)}


def _check_quality(quality) -> int:
    from alignkit.errors import AlignkitError

    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise AlignkitError(f"quality must be an integer from 1 to 100, got {quality!r}")
    return quality


@register("compress", "JPEG compressibility: minus the (proxy) quality-95 JPEG size in kB (DDPO)", path_options=())
def compress(device=None, dtype=None, quality: int = QUALITY) -> Reward:
    # dtype is ignored on purpose: the bit cost is computed in float32 whatever the images are.
    return JpegSizeReward(-1.0, _check_quality(quality)).to(device)


@register("incompress", "JPEG incompressibility: the (proxy) quality-95 JPEG size in kB (DDPO)", path_options=())
def incompress(device=None, dtype=None, quality: int = QUALITY) -> Reward:
    return JpegSizeReward(1.0, _check_quality(quality)).to(device)


class TrueJpegReward(Reward):
    """Minus the true Pillow JPEG size in kB (DDPO's `jpeg_compressibility`): a step function of
    the pixels, so it declares no gradient and trains with a policy gradient only."""

    differentiable = False

    def __init__(self, quality: int = QUALITY):
        super().__init__()
        self.quality = quality

    @torch.no_grad()
    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        return -pil_jpeg_kb(images, self.quality).to(images.device)

    @torch.no_grad()
    def targets(self, images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        return {"jpeg_kb": pil_jpeg_kb(images, self.quality).to(images.device)}


@register("jpeg", "JPEG compressibility, exact: minus the true Pillow quality-95 JPEG size in kB (DDPO); "
          "no gradient", differentiable=False, path_options=())
def jpeg(device=None, dtype=None, quality: int = QUALITY) -> Reward:
    """Higher is better: small files score high (-kB, DDPO's sign for compressibility)."""
    return TrueJpegReward(_check_quality(quality)).to(device)
