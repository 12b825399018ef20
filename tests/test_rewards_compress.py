"""The `compress` / `incompress` rewards: a differentiable proxy of Pillow's quality-95 JPEG size."""

import math

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from alignkit.errors import AlignkitError
from alignkit.rewards import get_entry, load_reward
from alignkit.rewards.compress import _CHROMA_TABLE, _LUMA_TABLE, JpegSizeProxy, pil_jpeg_kb, quality_table


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(3 * sigma))
    k = torch.exp(-torch.arange(-radius, radius + 1).float() ** 2 / (2 * sigma * sigma))
    k = (k / k.sum()).to(x)
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _shape_mask(g: torch.Generator, h: int, w: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    cy, cx, r = torch.rand(3, generator=g) * torch.tensor([h, w, 0.4 * min(h, w)])
    if torch.rand(1, generator=g) < 0.5:
        return (yy - cy) ** 2 + (xx - cx) ** 2 < (r + 3) ** 2
    return ((yy - cy).abs() < r + 3) & ((xx - cx).abs() < r / 2 + 3)


def varied_image(i: int) -> torch.Tensor:
    """A deterministic (3,H,W) image in [0,1], 8-bit quantised, of one of six kinds."""
    g = torch.Generator().manual_seed(1000 + i)
    h, w = (int(s) for s in torch.randint(20, 97, (2,), generator=g))
    kind = i % 6
    colour = torch.rand(3, 1, 1, generator=g)
    yy = torch.linspace(0, 1, h).view(1, -1, 1)
    xx = torch.linspace(0, 1, w).view(1, 1, -1)
    if kind == 0:  # flat colour plus noise of one of several amplitudes
        amp = [0.02, 0.08, 0.25, 0.6, 1.0][i // 6 % 5]
        img = colour + amp * (torch.rand(3, h, w, generator=g) - 0.5)
    elif kind == 1:  # two-colour gradient at some angle
        t = math.cos(i) * xx + math.sin(i) * yy
        img = colour + (torch.rand(3, 1, 1, generator=g) - colour) * (t - t.min()) / (t.max() - t.min() + 1e-6)
    elif kind == 2:  # flat shapes on a flat background
        img = colour.expand(3, h, w).clone()
        for _ in range(1 + i % 5):
            img = torch.where(_shape_mask(g, h, w), torch.rand(3, 1, 1, generator=g), img)
    elif kind == 3:  # stripes / checks of some frequency
        f = 1 + 20 * torch.rand(2, generator=g)
        wave = torch.sin(6.28 * f[0] * xx) * torch.sin(6.28 * f[1] * yy)
        img = colour + 0.4 * torch.rand(1, generator=g) * (wave.sign() if i % 2 else wave)
    elif kind == 4:  # "photo": blurred noise, a shape, a little sensor noise
        sigma = 0.6 + 4 * float(torch.rand(1, generator=g))
        img = colour + 0.5 * (_blur(torch.rand(1, 3, h, w, generator=g), sigma)[0] - 0.5) * 3
        img = torch.where(_shape_mask(g, h, w), torch.rand(3, 1, 1, generator=g), img)
        img = img + 0.03 * torch.randn(3, h, w, generator=g)
    else:  # a blurred copy of a noisy image: same content, much smaller file
        img = _blur((colour + 0.5 * torch.rand(3, h, w, generator=g)).unsqueeze(0), 1.5)[0]
    return img.clamp(0, 1).mul(255).round().div(255)


@pytest.fixture(scope="module")
def dataset():
    return [varied_image(i) for i in range(240)]


@pytest.fixture(scope="module")
def proxy():
    return JpegSizeProxy()


def test_rank_correlation_and_calibration(dataset, proxy):
    with torch.no_grad():
        pred = torch.stack([proxy(img[None])[0] for img in dataset])
    true = torch.cat([pil_jpeg_kb(img[None]) for img in dataset])
    rho = stats.spearmanr(pred.numpy(), true.numpy()).statistic
    abs_err = (pred - true).abs()
    print(f"\ncompress proxy on {len(dataset)} test images: Spearman {rho:.4f}, mean |err| "
          f"{abs_err.mean():.3f} kB, mean rel err {(abs_err / true).mean():.1%}, true {true.min():.2f}-{true.max():.2f} kB")
    assert len({tuple(img.shape[1:]) for img in dataset}) > 100  # many sizes, mostly not multiples of 8
    assert rho >= 0.9
    assert abs_err.mean() < 0.75
    assert (abs_err / true).mean() < 0.25


def test_quality_tables_match_libjpeg():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, format="JPEG", quality=95)
    tables = Image.open(io.BytesIO(buf.getvalue())).quantization
    # Pillow reports the tables it wrote in natural order: they must be the proxy's.
    assert quality_table(_LUMA_TABLE).flatten().int().tolist() == list(tables[0])
    assert quality_table(_CHROMA_TABLE).flatten().int().tolist() == list(tables[1])


def test_registry_and_signs():
    entry = get_entry("compress")
    assert entry.differentiable and not entry.weights and entry.status()[0]
    images = torch.rand(2, 3, 40, 56)
    compress, incompress = load_reward("compress"), load_reward("incompress")
    torch.testing.assert_close(compress(images, ["x", "y"]), -incompress(images, ["x", "y"]))
    assert not any(p.requires_grad for p in compress.parameters())


def test_smooth_image_is_more_compressible():
    g = torch.Generator().manual_seed(0)
    smooth = torch.linspace(0.2, 0.8, 96).view(1, 1, 1, -1).expand(1, 3, 80, 96)
    noisy = (smooth + 0.3 * torch.rand(1, 3, 80, 96, generator=g)).clamp(0, 1)
    reward = load_reward("compress")
    scores = reward(torch.cat([smooth, noisy]), ["a", "a"])
    assert scores[0] > scores[1]
    true = reward.targets(torch.cat([smooth, noisy]), ["a", "a"])["jpeg_kb"]
    assert true[0] < true[1]


def test_gradient_finite_and_nonzero():
    reward = load_reward("compress")
    for images in (torch.rand(2, 3, 37, 45), torch.full((1, 3, 16, 16), 0.5)):
        images = images.requires_grad_(True)
        reward(images, ["x"] * len(images)).sum().backward()
        assert torch.isfinite(images.grad).all()
        assert images.grad.abs().sum() > 0


def test_gradient_descent_shrinks_the_real_file():
    """A few steps on `compress` make the true JPEG smaller, not just the proxy."""
    g = torch.Generator().manual_seed(1)
    x = (0.5 + 0.3 * (torch.rand(1, 3, 48, 48, generator=g) - 0.5)).requires_grad_(True)
    reward = load_reward("compress")
    before = reward.targets(x.detach(), ["x"])["jpeg_kb"]
    opt = torch.optim.Adam([x], lr=0.01)
    for _ in range(20):
        opt.zero_grad()
        (-reward(x.clamp(0, 1), ["x"])).sum().backward()
        opt.step()
    after = reward.targets(x.detach().clamp(0, 1), ["x"])["jpeg_kb"]
    assert after < 0.8 * before


def test_batch_invariance_and_any_size():
    reward = load_reward("incompress")
    images = torch.rand(5, 3, 33, 70)
    batched = reward(images, ["x"] * 5)
    single = torch.cat([reward(images[i:i + 1], ["x"]) for i in range(5)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)
    for h, w in ((1, 1), (7, 13), (64, 64), (17, 200)):
        out = reward(torch.rand(2, 3, h, w), ["x", "x"])
        assert out.shape == (2,) and torch.isfinite(out).all()


def test_half_precision_input_scores_in_float32():
    reward = load_reward("compress")
    images = torch.rand(2, 3, 24, 24)
    out = reward(images.half(), ["x", "x"])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reward(images.half().float(), ["x", "x"]))


def test_targets_are_the_real_pillow_size():
    import io

    from alignkit.images import to_pil

    images = torch.rand(2, 3, 30, 41)
    kb = load_reward("compress").targets(images, ["x", "x"])["jpeg_kb"]
    for image, size in zip(images, kb):
        buf = io.BytesIO()
        to_pil(image).save(buf, format="JPEG", quality=95)
        assert size.item() == pytest.approx(buf.tell() / 1000)


@pytest.mark.parametrize("bad", [0, 101, 9.5, "high", True])
def test_bad_quality_is_one_line(bad):
    with pytest.raises(AlignkitError) as info:
        load_reward("compress", quality=bad)
    assert "\n" not in str(info.value) and "quality" in str(info.value)


def test_autocast_does_not_change_the_score():
    reward = load_reward("compress")
    images = torch.rand(2, 3, 32, 48)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        mixed = reward(images, ["x", "x"])
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, reward(images, ["x", "x"]))
