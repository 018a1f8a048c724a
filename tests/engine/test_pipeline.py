import pytest
import torch
from conftest import assert_same_pixels, assert_same_record

from cai_aug import CAI, AnomalyBank


@pytest.fixture(scope="module")
def cai(demo_bank):
    return CAI(demo_bank, seed=0)


def test_batch_result_has_documented_shapes_and_values(cai, demo_targets):
    result = cai(demo_targets)
    batch, _, height, width = demo_targets.shape
    assert result.images.shape == demo_targets.shape and result.images.dtype == torch.float32
    assert result.masks.shape == (batch, 1, height, width)
    assert set(result.masks.unique().tolist()) <= {0.0, 1.0}
    assert result.labels.shape == (batch,)
    assert len(result.info) == batch
    assert {"source_id", "source_class", "source_type", "synthesis_type", "R", "R_prime", "location"} <= set(
        result.info[0]
    )


def test_label_is_one_exactly_when_the_mask_is_not_empty(cai, demo_targets):
    result = cai(demo_targets)
    assert torch.equal(result.labels, (result.masks.flatten(1).sum(1) > 0).float())


def test_pixels_outside_the_solved_region_are_unchanged(cai, demo_targets):
    result = cai(demo_targets)
    for info, before, after in zip(result.info, demo_targets, result.images):
        if not info["label"]:
            continue
        y, x = info["location"]
        changed = (before - after).abs().amax(0) > 0
        rows, cols = torch.nonzero(changed, as_tuple=True)
        # everything that changed lies in the dilated pattern bbox around the centre
        assert (rows - y).abs().max() < 96 and (cols - x).abs().max() < 96
        assert changed.float().mean() < 0.9


def test_uint8_input_comes_back_as_uint8(cai, demo_targets):
    images = (demo_targets * 255).round().to(torch.uint8)
    result = cai(images)
    assert result.images.dtype == torch.uint8 and result.images.shape == images.shape


def test_single_image_comes_back_unbatched(cai, demo_targets):
    result = cai(demo_targets[0])
    assert result.images.shape == demo_targets[0].shape
    assert result.masks.shape == (1, *demo_targets.shape[-2:])
    assert result.labels.shape == ()


def test_grayscale_targets_work(cai, demo_targets):
    gray = demo_targets.mean(1, keepdim=True)
    result = cai(gray)
    assert result.images.shape == gray.shape and result.labels.sum() > 0


def test_same_seed_same_output_and_different_seed_different_output(demo_bank, demo_targets):
    keys = ["a.png", "b.png", "c.png", "d.png"]
    first = CAI(demo_bank, seed=5)(demo_targets, keys=keys)
    second = CAI(demo_bank, seed=5)(demo_targets, keys=keys)
    other = CAI(demo_bank, seed=6)(demo_targets, keys=keys)
    assert torch.equal(first.images, second.images) and torch.equal(first.masks, second.masks)
    assert not torch.equal(first.images, other.images)


def test_default_keys_give_fresh_anomalies_on_every_call(demo_bank, demo_targets):
    cai = CAI(demo_bank, seed=5)
    assert not torch.equal(cai(demo_targets).images, cai(demo_targets).images)


def test_sample_result_does_not_depend_on_batch_companions(demo_bank, demo_targets):
    cai = CAI(demo_bank, seed=1)
    keys = cai.sample_keys(["a", "b", "c", "d"])
    batch = cai(demo_targets, keys=keys)
    alone = cai(demo_targets[2:3], keys=keys[2:3])
    assert_same_record(batch.info[2], alone.info[0])
    to8 = lambda t: (t * 255).round()  # noqa: E731
    assert (to8(batch.images[2]) - to8(alone.images[0])).abs().max() <= 1
    assert (batch.masks[2] != alone.masks[0]).float().mean() <= 0.001


def test_no_valid_location_returns_the_image_unchanged_and_normal(demo_bank, demo_targets):
    tiny = torch.zeros(4, 1, 96, 96, dtype=torch.bool)
    tiny[:, :, 0, 0] = True  # a foreground only in the corner: no bbox can be centred there
    result = CAI(demo_bank, seed=0, max_attempts=2)(demo_targets, foregrounds=tiny)
    assert result.labels.sum() == 0
    assert torch.equal(result.images, demo_targets)
    assert result.masks.sum() == 0


def test_empty_difference_mask_is_labelled_normal(demo_bank, demo_targets):
    result = CAI(demo_bank, seed=0, threshold=0.999, max_attempts=1)(demo_targets)
    assert result.labels.sum() == 0 and result.masks.sum() == 0
    assert torch.equal(result.images, demo_targets)


def test_foreground_filter_keeps_background_pixels(demo_bank, demo_targets):
    foreground = torch.zeros(4, 1, 96, 96, dtype=torch.bool)
    foreground[:, :, 20:76, 20:76] = True
    result = CAI(demo_bank, seed=0)(demo_targets, foregrounds=foreground)
    assert torch.equal(result.images * ~foreground, demo_targets * ~foreground)
    assert (result.masks.bool() & ~foreground).sum() == 0


@pytest.mark.parametrize("switch", ["use_poisson", "use_stm", "use_ils"])
def test_ablation_switches_still_make_anomalies(demo_bank, demo_targets, switch):
    result = CAI(demo_bank, seed=0, **{switch: False})(demo_targets)
    assert result.labels.sum() >= 2


def test_mixed_mode_runs(demo_bank, demo_targets):
    assert CAI(demo_bank, seed=0, mode="mixed")(demo_targets).labels.sum() >= 2


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        (torch.zeros(2, 3, 64, 64, dtype=torch.int32), TypeError, "dtype"),
        (torch.zeros(2, 4, 64, 64), ValueError, "channels"),
        (torch.zeros(64, 64), ValueError, "shape"),
        (torch.full((1, 3, 64, 64), 2.0), ValueError, r"\[0, 1\]"),
        (torch.zeros(0, 3, 64, 64), ValueError, "empty"),
        (torch.zeros(1, 3, 8, 8), ValueError, "smaller than any usable pattern"),
        (torch.full((1, 3, 32, 32), float("nan")), ValueError, "NaN"),
    ],
)
def test_bad_input_is_a_clear_error(cai, images, error, match):
    with pytest.raises(error, match=match):
        cai(images)


def test_bad_arguments_are_clear_errors(demo_bank):
    with pytest.raises(ValueError, match="mode"):
        CAI(demo_bank, mode="weird")
    with pytest.raises(ValueError, match="quotas"):
        CAI(demo_bank, quotas=(1, 2))
    with pytest.raises(TypeError, match="AnomalyBank"):
        CAI("not a bank")


def test_wrong_number_of_keys_is_an_error(cai, demo_targets):
    with pytest.raises(ValueError, match="keys"):
        cai(demo_targets, keys=["a"])


def test_real_bank_on_real_targets():
    from conftest import shared_data_path

    from cai_aug.io.images import read_image, to_tensor

    bank = AnomalyBank.from_folder(shared_data_path("anomaly_bank"), classes=["hole"])
    folder = shared_data_path("targets", "deeppcb", "train", "good")
    paths = sorted(folder.glob("*.png"))[:4]
    images = torch.stack([to_tensor(read_image(p)) for p in paths])
    result = CAI(bank, seed=0, foreground="none")(images, keys=[p.name for p in paths])
    assert result.labels.sum() >= 3
    assert {info["source_class"] for info in result.info if info["label"]} == {"hole"}


def test_engine_pickles_for_dataloader_workers(cai, demo_targets):
    import pickle

    clone = pickle.loads(pickle.dumps(cai))
    keys = cai.sample_keys(["a", "b", "c", "d"])
    assert torch.equal(clone(demo_targets, keys=keys).images, cai(demo_targets, keys=keys).images)


def test_both_mode_solves_each_sample_as_its_drawn_mode_alone(demo_bank, demo_targets):
    keys = list(range(demo_targets.shape[0]))
    both = CAI(demo_bank, seed=0, mode="both", anomalies=1)(demo_targets, keys=keys)
    single = {
        mode: CAI(demo_bank, seed=0, mode=mode, anomalies=1)(demo_targets, keys=keys) for mode in ("normal", "mixed")
    }
    drawn = [info["poisson_mode"] for info in both.info]
    assert set(drawn) == {"normal", "mixed"}  # the demo batch draws both
    for i, mode in enumerate(drawn):
        assert_same_pixels(both.images[i], single[mode].images[i], both.masks[i], single[mode].masks[i])


def test_both_mode_draws_about_half_mixed_from_the_keys():
    from cai_aug.engine import rng
    from cai_aug.engine.injection import mixed_guidance

    keys = rng.sample_keys(3, list(range(4000)))
    share = mixed_guidance(keys, "both").float().mean().item()
    assert 0.47 < share < 0.53
    assert torch.equal(mixed_guidance(keys[:10], "both"), mixed_guidance(keys, "both")[:10])
    assert not mixed_guidance(keys, "normal").any() and mixed_guidance(keys, "mixed").all()


def test_grey_target_given_as_three_channels_gets_colour_only_without_grey_injection(demo_bank, demo_targets):
    grey = demo_targets[:, :1].expand(-1, 3, -1, -1).contiguous()
    kept = CAI(demo_bank, seed=0)(grey, keys=list(range(grey.shape[0])))
    coloured = CAI(demo_bank, seed=0, grey_injection=False)(grey, keys=list(range(grey.shape[0])))
    spread = lambda images: (images.amax(1) - images.amin(1)).max().item()  # noqa: E731
    assert spread(kept.images) == 0.0
    assert spread(coloured.images) > 0.05  # the demo bank's sources are coloured


def test_paper_preset_is_one_argument_away(demo_bank):
    from cai_aug import CAIConfig

    cai = CAI(demo_bank, preset="paper", seed=0)
    assert cai.config == CAIConfig.preset("paper")
    assert (cai.mode, cai.grey_injection, cai.atol) == ("normal", False, None)
    assert CAI(demo_bank, preset="paper", margin=4, seed=0).config == CAIConfig.preset("paper").replace(margin=4)
    with pytest.raises(ValueError, match="preset must be one of"):
        CAI(demo_bank, preset="papers", seed=0)
    with pytest.raises(ValueError, match="either config or preset"):
        CAI(demo_bank, CAIConfig(), preset="paper", seed=0)
