"""The robustness score against hand-computed cases."""

from __future__ import annotations

import math
import warnings

import pytest
import timm
import torch
from torchvision.transforms import ColorJitter

from trainables.transferability import (
    PAPER_JITTER,
    RobustnessProbe,
    make_views,
    negative_partners,
    robustness_from_features,
    robustness_of_encoder,
    view_seed,
)

SQRT_HALF = 1 / math.sqrt(2)


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (2, [1, 0]),
        (3, [1, 0, 2]),  # odd: the middle image is its own partner
        (4, [1, 0, 3, 2]),
        (5, [1, 0, 4, 3, 2]),
        (6, [1, 0, 5, 4, 3, 2]),
    ],
)
def test_negative_pairing_is_the_papers(n: int, expected: list[int]) -> None:
    assert negative_partners(n).tolist() == expected


def test_pairing_needs_two_images() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        negative_partners(1)


# q, k of 4 images in 2D; pairing pi = [1, 0, 3, 2]
Q4 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
K4 = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 1.0], [-1.0, 1.0]])


@pytest.mark.parametrize(
    ("distance", "margin", "expected"),
    [
        # cosine: pos = [0, 1-1/sqrt2, 0, 2], neg = [1-1/sqrt2, 1, 1, 1]
        ("cosine", 0.5, [0.5 - (1 - SQRT_HALF), 0.0, 0.0, 1.5]),
        ("cosine", 0.0, [0.0, 0.0, 0.0, 1.0]),
        ("cosine", 1.0, [SQRT_HALF, (1 - SQRT_HALF), 0.0, 2.0]),
        # mse (the paper's "l2"): pos = [0, 0.5, 0, 4], neg = [0.5, 1, 2, 2]
        ("mse", 0.5, [0.0, 0.0, 0.0, 2.5]),
        ("mse", 1.0, [0.5, 0.5, 0.0, 3.0]),
    ],
)
def test_per_image_scores_by_hand(distance: str, margin: float, expected: list[float]) -> None:
    scores = robustness_from_features(Q4, K4, distance=distance, margin=margin)
    assert scores.shape == (4,)
    assert torch.allclose(scores, torch.tensor(expected, dtype=torch.float64), atol=1e-12)


def test_pearson_distance_by_hand() -> None:
    x, y, z, w = [1.0, 2, 3], [2.0, 4, 6], [3.0, 2, 1], [1.0, 3, 2]
    # corr(x,y)=1, corr(w,z)=-0.5, corr(x,z)=-1, corr(w,y)=0.5
    # pos = [0, 1.5], neg = [2, 0.5]
    scores = robustness_from_features(
        torch.tensor([x, w]), torch.tensor([y, z]), distance="pearson", margin=0.5
    )
    assert torch.allclose(scores, torch.tensor([0.0, 1.5], dtype=torch.float64), atol=1e-12)


def test_indistinguishable_features_score_the_margin() -> None:
    same = torch.ones(6, 5)
    for distance in ("cosine", "mse", "pearson"):
        if distance == "pearson":
            same = torch.arange(30.0).view(6, 5) % 5  # identical non-constant rows
        scores = robustness_from_features(same, same.clone(), distance=distance, margin=0.3)
        assert torch.allclose(scores, torch.full((6,), 0.3, dtype=torch.float64))


def test_unknown_distance_and_shape_mismatch_are_refused() -> None:
    with pytest.raises(KeyError, match="cosine"):
        robustness_from_features(Q4, K4, distance="l1")
    with pytest.raises(ValueError, match="N x D"):
        robustness_from_features(Q4, K4[:3])


def _images(n: int = 6, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    grey = torch.rand(n, 1, size, size, generator=generator)
    return grey.expand(-1, 3, -1, -1).clone()


def test_paper_views_are_torchvision_color_jitter_with_one_draw_per_view() -> None:
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    produced = make_views(images, mode="paper", seed=7)
    assert not torch.equal(produced[0], produced[1])
    for view in (0, 1):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(view_seed(7, view))
            reference = ColorJitter(**PAPER_JITTER)(images)  # one draw for the whole batch
        assert torch.allclose(produced[view], reference, atol=1e-6)


def test_views_are_seeded_and_leave_the_global_rng_alone() -> None:
    images = _images()
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = make_views(images, mode="per_image", seed=3)
    assert torch.equal(torch.rand(3), expected_next)
    second = make_views(images, mode="per_image", seed=3)
    other = make_views(images, mode="per_image", seed=4)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[0], other[0])


def test_paper_mode_shares_one_draw_and_per_image_mode_does_not() -> None:
    flat = torch.full((4, 3, 8, 8), 0.5)  # brightness is the only op that moves a flat grey image
    paper, _ = make_views(flat, mode="paper", seed=0)
    per_image, _ = make_views(flat, mode="per_image", seed=0)
    assert len({float(img.mean()) for img in paper}) == 1
    assert len({round(float(img.mean()), 6) for img in per_image}) == 4


def test_odd_number_of_images_warns() -> None:
    with pytest.warns(UserWarning, match="odd number"):
        RobustnessProbe(_images(5), mean=(0, 0, 0), std=(1, 1, 1))


@pytest.fixture(scope="module")
def tiny_encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet10t", pretrained=False, num_classes=0).eval()


def test_score_does_not_depend_on_batch_chunking(tiny_encoder: torch.nn.Module) -> None:
    images = _images(8)
    results = [
        robustness_of_encoder(tiny_encoder, images, mean=(0.5,) * 3, std=(0.25,) * 3, batch_size=size)
        for size in (1, 3, 8, 64)
    ]
    for result in results[1:]:
        assert result.robustness == pytest.approx(results[0].robustness, abs=1e-6)
        assert result.robustness_pos == pytest.approx(results[0].robustness_pos, abs=1e-6)
    assert results[0].n_images == 8


def test_score_is_reproducible_and_restores_train_mode(tiny_encoder: torch.nn.Module) -> None:
    images = _images(6)
    probe = RobustnessProbe(images, mean=(0.5,) * 3, std=(0.25,) * 3, level=-1, pooled=False)
    tiny_encoder.train()
    first = probe.score(tiny_encoder)
    assert tiny_encoder.training
    second = probe.score(tiny_encoder)
    assert first == second
    assert 0.0 <= first.robustness <= 0.5 + 2.0
    # R = mean(max(0, pos - neg + m)) >= pos_mean - neg_mean + m by convexity of max
    assert first.robustness >= first.robustness_pos - first.robustness_neg + 0.5 - 1e-9


def test_level_selects_the_feature_map(tiny_encoder: torch.nn.Module) -> None:
    from trainables.models import encoder_features

    images = _images(2, size=64)
    with torch.no_grad():
        assert encoder_features(tiny_encoder, images, -1, True).shape == (2, 512)
        assert encoder_features(tiny_encoder, images, -2, True).shape == (2, 256)
        assert encoder_features(tiny_encoder, images, -2, False).shape == (2, 256 * 4 * 4)


def test_probe_refuses_fewer_than_two_images() -> None:
    with pytest.raises(ValueError, match="at least 2"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        RobustnessProbe(_images(1), mean=(0, 0, 0), std=(1, 1, 1))
