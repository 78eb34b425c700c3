"""fastps.train.models: parameter counts against hand-computed values, output shapes, and seeded
initialisation that leaves the global RNG alone."""

import pytest
import torch

from fastps.train.models import MODELS, build, lenet5, logistic, mlp


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_mlp_784_128_128_128_10_parameter_count():
    model = mlp((1, 28, 28), 10)
    assert count(model) == 784 * 128 + 128 + 128 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10
    assert count(model) == 134_794
    assert [m.out_features for m in model if isinstance(m, torch.nn.Linear)] == [128, 128, 128, 10]
    assert count(mlp((1, 8, 8), 10, hidden=(32,))) == 64 * 32 + 32 + 32 * 10 + 10


def test_lenet5_parameter_counts():
    conv1_gray = 1 * 6 * 5 * 5 + 6  # 156
    conv1_rgb = 3 * 6 * 5 * 5 + 6  # 456
    rest = (6 * 16 * 5 * 5 + 16) + (16 * 5 * 5 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    assert rest == 2416 + 48120 + 10164 + 850
    assert count(lenet5((1, 28, 28), 10)) == conv1_gray + rest == 61_706
    assert count(lenet5((3, 32, 32), 10)) == conv1_rgb + rest == 62_006
    assert lenet5((1, 28, 28), 10)[0].padding == (2, 2)
    assert lenet5((3, 32, 32), 10)[0].padding == (0, 0)


def test_logistic_parameter_counts():
    assert count(logistic((1, 28, 28), 10)) == 784 * 10 + 10 == 7850
    assert count(logistic((1, 8, 8), 10)) == 64 * 10 + 10 == 650
    assert count(logistic((3, 32, 32), 10)) == 3072 * 10 + 10 == 30_730


@pytest.mark.parametrize(
    "name, shape, classes",
    [("mlp", (1, 28, 28), 10), ("mlp", (1, 8, 8), 10), ("lenet", (1, 28, 28), 10),
     ("lenet", (3, 32, 32), 10), ("logreg", (1, 8, 8), 10), ("logreg", (3, 32, 32), 7)],
)  # fmt: skip
def test_output_shape_is_batch_by_classes(name, shape, classes):
    model = build(name, shape, classes)
    with torch.no_grad():
        out = model(torch.zeros(5, *shape))
    assert tuple(out.shape) == (5, classes) and out.dtype == torch.float32


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_gives_identical_init_and_the_global_rng_is_untouched(name):
    shape = (3, 32, 32) if name == "lenet" else (1, 28, 28)
    state = torch.random.get_rng_state()
    a, b, c = build(name, shape, 10, seed=4), build(name, shape, 10, seed=4), build(name, shape, 10)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match=r"build: unknown model 'resnet' \(expected one of: "
                       r"lenet, logreg, mlp\)"):  # fmt: skip
        build("resnet", (1, 28, 28), 10)
    with pytest.raises(ValueError, match=r"lenet5: input 1x8x8 is too small"):
        lenet5((1, 8, 8), 10)
    with pytest.raises(ValueError, match=r"lenet5: input_shape must be \(C, H, W\)"):
        lenet5((784,), 10)
    with pytest.raises(ValueError, match="mlp: classes must be an int >= 2 .got 1"):
        mlp((784,), 1)
    with pytest.raises(ValueError, match="logistic: input_shape must be positive sizes"):
        logistic((0, 28, 28), 10)
