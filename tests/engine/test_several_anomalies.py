"""Several anomalies per image: drawn, placed and solved together; where they meet, stacked (the default)
or kept apart."""

import pytest
import torch
from conftest import assert_same_pixels, assert_same_record, without_solver_diagnostics

from cai_aug import CAI
from cai_aug.engine import rng
from cai_aug.engine.cai import ANOTHER
from cai_aug.io.demo_data import demo_images

MARGIN = 8


def _sequential(bank, images, keys, slots, quotas):
    """The construction this replaces: one anomaly after the other, each into the result so far, with the
    image's own foreground (estimated once on the normal image) and the union of the masks."""
    one = CAI(bank, seed=0, anomalies=1, margin=MARGIN, quotas=quotas)
    foreground = one.estimate_foreground(images)
    union, steps = torch.zeros_like(images[:, :1]), []
    for slot in range(slots):
        step = one(images, keys=keys if slot == 0 else rng.derive(keys, ANOTHER, slot), foregrounds=foreground)
        images, union = step.images, torch.maximum(union, step.masks)
        steps.append(step)
    return images, union, steps


def _both(bank, count, size, quotas, overlap):
    images = demo_images(count, size, seed=5)
    keys = rng.sample_keys(0, list(range(count)))
    together = CAI(bank, seed=0, anomalies=3, margin=MARGIN, quotas=quotas, overlap=overlap)(images, keys=keys)
    return together, _sequential(bank, images, keys, 3, quotas)


@pytest.fixture(scope="module")
def sparse(demo_bank):
    """Small anomalies on larger images, kept apart: most land apart anyway."""
    return _both(demo_bank, 16, 192, "0:0:1", "apart")


@pytest.fixture(scope="module")
def crowded(demo_bank):
    """The default mix on small images, kept apart: later draws mostly land on earlier ones."""
    return _both(demo_bank, 6, 112, "4:3:3", "apart")


@pytest.fixture(scope="module")
def stacked(demo_bank):
    """The default mix and the default overlap rule on small images: many anomalies meet."""
    return _both(demo_bank, 12, 112, "4:3:3", "stack")


def _first_draws(steps, i):
    """Every anomaly of image ``i`` was made at its first draw by the one-after-the-other construction."""
    return all(step.info[i]["attempts"] == 1 and step.info[i]["label"] for step in steps)


def _same_decisions(together, steps, i):
    slots = [together.info[i], *together.info[i]["more"]]
    return all(
        without_solver_diagnostics({k: v for k, v in entry.items() if k != "more"})
        == without_solver_diagnostics({**step.info[i], "label": entry["label"]})
        for entry, step in zip(slots, steps)
    )


def test_stacked_anomalies_equal_injections_one_after_the_other(stacked):
    together, (images, union, steps) = stacked
    compared = met = 0
    for i in range(images.shape[0]):
        if not _first_draws(steps, i):  # a redraw is stacked on the later anomalies already made
            continue
        compared += 1
        met += not _apart([step.info[i]["box"] for step in steps])
        assert_same_pixels(together.images[i], images[i], together.masks[i], union[i])
        assert _same_decisions(together, steps, i)
    assert compared >= 6 and met >= 3  # images whose anomalies meet were compared too


def test_a_stacked_anomaly_keeps_the_mask_of_the_one_below(stacked):
    together, (_, _, steps) = stacked
    for i in range(together.images.shape[0]):
        if _first_draws(steps, i):
            # every pixel masked by one step stays masked in the image's mask
            for step in steps:
                assert bool((together.masks[i] >= step.masks[i]).all())


def test_stack_layers_solve_a_meeting_anomaly_after_the_one_it_meets():
    from cai_aug.engine.cai import stack_layers

    # image 0: slot 1 meets slot 0, slot 2 meets slot 1 only; image 1: slot 1 meets slot 0, which is unplaced
    boxes = torch.tensor([[0, 0, 8, 8], [10, 10, 8, 8], [20, 20, 8, 8], [0, 0, 8, 8], [2, 2, 8, 8], [50, 50, 4, 4]])
    placed = torch.tensor([True, True, True, False, True, True])
    images = torch.tensor([0, 0, 0, 1, 1, 1])
    slots = torch.tensor([0, 1, 2, 0, 1, 2])
    assert stack_layers(boxes, placed, images, slots, 2, gap=3).tolist() == [0, 1, 2, -1, 0, 0]
    # farther apart than the gap: all in one layer
    assert stack_layers(boxes, placed, images, slots, 2, gap=2).tolist() == [0, 0, 0, -1, 0, 0]


def _apart(boxes):
    """No two boxes come within 2 (MARGIN // 2 + 1) + 1 pixels: their regions (each within MARGIN // 2 + 1
    of its box) are then at least two pixels apart."""
    gap = 2 * (MARGIN // 2 + 1) + 1
    for i, (t1, l1, h1, w1) in enumerate(boxes):
        for t2, l2, h2, w2 in boxes[i + 1 :]:
            if t1 < t2 + h2 + gap and t2 < t1 + h1 + gap and l1 < l2 + w2 + gap and l2 < l1 + w1 + gap:
                return False
    return True


def test_anomalies_kept_apart_equal_injections_one_after_the_other_where_regions_are_apart(sparse):
    together, (images, union, steps) = sparse
    compared = 0
    for i in range(images.shape[0]):
        # every anomaly kept its first draw there, and no two came near each other
        if not (_first_draws(steps, i) and _apart([step.info[i]["box"] for step in steps])):
            continue
        compared += 1
        assert_same_pixels(together.images[i], images[i], together.masks[i], union[i])
        assert _same_decisions(together, steps, i)
    assert compared >= 2  # the comparison is not empty


@pytest.mark.parametrize("case", ["sparse", "crowded"])
def test_kept_anomalies_of_an_image_stay_apart(case, request):
    together, (images, _, steps) = request.getfixturevalue(case)
    for entry in together.info:
        boxes = [slot["box"] for slot in [entry, *entry["more"]] if slot["label"]]
        assert _apart(boxes), boxes
    # where the one-after-the-other construction put anomalies on each other, they were redrawn apart
    overlapping = [
        i for i in range(images.shape[0]) if not _apart([s.info[i]["box"] for s in steps if s.info[i]["label"]])
    ]
    assert overlapping and any((together.images[i] - images[i]).abs().max() > 1e-2 for i in overlapping)


@pytest.mark.parametrize("case", ["crowded", "stacked"])
def test_labels_and_masks_agree_with_several_anomalies(case, request):
    together, _ = request.getfixturevalue(case)
    assert torch.equal(together.labels, (together.masks.flatten(1).sum(1) > 0).float())
    assert all(len(entry["more"]) == 2 for entry in together.info)


def test_a_draw_too_close_to_another_anomaly_is_drawn_again_clear_of_it():
    from cai_aug.engine.location import boxes_meet, pattern_boxes, place_pattern

    keys = rng.sample_keys(1, list(range(64)))
    foreground = torch.ones(64, 1, 64, 64, dtype=torch.bool)
    bbox = torch.tensor([[0, 0, 8, 8]]).expand(64, 4)
    ratio = torch.ones(64, dtype=torch.float64)
    free = place_pattern(keys, foreground, bbox, ratio, ratio)
    other = torch.tensor([[24, 24, 8, 8]]).expand(64, 1, 4)
    placed = place_pattern(keys, foreground, bbox, ratio, ratio, avoid=(other, torch.ones(64, 1, dtype=torch.bool), 9))
    boxes = pattern_boxes(placed.centre, placed.height, placed.width)
    assert placed.found.all() and not boxes_meet(boxes, other[:, 0], 9).any()
    first_clear = ~boxes_meet(pattern_boxes(free.centre, free.height, free.width), other[:, 0], 9)
    assert 0 < first_clear.sum() < 64  # some first draws were clear (and kept), some were redrawn
    assert torch.equal(placed.centre[first_clear], free.centre[first_clear])


def test_a_draw_with_no_clear_centre_is_not_placed():
    from cai_aug.engine.location import place_pattern

    keys = rng.sample_keys(1, [0, 1])
    foreground = torch.ones(2, 1, 32, 32, dtype=torch.bool)
    bbox = torch.tensor([[0, 0, 8, 8]]).expand(2, 4)
    ratio = torch.ones(2, dtype=torch.float64)
    everywhere = torch.tensor([[0, 0, 32, 32]]).expand(2, 1, 4)
    placed = place_pattern(keys, foreground, bbox, ratio, ratio, avoid=(everywhere, torch.tensor([[True], [False]]), 1))
    assert placed.found.tolist() == [False, True]


def test_overlap_rule_gap_keeps_the_solved_regions_two_pixels_apart():
    from cai_aug.engine.cai import overlap_gap
    from cai_aug.engine.injection import blend_region

    # Omega of a full 10x10 pattern grows by margin // 2 + 1 = 5 at most, so boxes the rule's gap apart
    # leave at least one free pixel between their regions and a second one beyond it
    pattern = torch.zeros(1, 1, 60, 60, dtype=torch.bool)
    pattern[0, 0, 20:30, 20:30] = True
    region = blend_region(pattern, MARGIN)[0, 0]
    rows, cols = region.any(1).nonzero()[:, 0], region.any(0).nonzero()[:, 0]
    grown = max(20 - int(rows[0]), int(rows[-1]) - 29, 20 - int(cols[0]), int(cols[-1]) - 29)
    assert grown == MARGIN // 2 + 1
    assert overlap_gap(MARGIN) >= 2 * grown + 1


def test_the_gpu_code_paths_give_the_cpu_result(demo_bank, monkeypatch):
    """The batched gathers and scatters a GPU uses (crop, masked paste, one canvas group), run on the CPU."""
    from cai_aug.engine import cai as engine
    from cai_aug.engine import resample

    images = demo_images(6, 128, seed=2)
    keys = rng.sample_keys(0, list(range(images.shape[0])))
    expected = CAI(demo_bank, seed=0)(images, keys=keys)
    monkeypatch.setattr(resample, "_per_sample", lambda tensor: False)
    monkeypatch.setattr(
        engine,
        "_size_groups",
        lambda placed, placement, device: [None] if bool(placed.all()) else [placed.nonzero()[:, 0]],
    )
    got = CAI(demo_bank, seed=0)(images, keys=keys)
    assert_same_pixels(got.images, expected.images, got.masks, expected.masks)
    assert torch.equal(got.labels, expected.labels)
    for got_record, expected_record in zip(got.info, expected.info, strict=True):
        assert_same_record(got_record, expected_record)
