"""The dissection stage in-process, against ground truth built by hand or by a plain Python loop."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.stages.dissection import tally as d
from pipeline.stages.dissection import thresholds as th
from pipeline.stages.dissection.tally import LabelSpace, TallyPartial

CATS = ("object", "part", "scene")
IMAGE_RULES = {"union": "image", "resize": "bilinear"}  # the rules of earlier versions, that `_loop_tally` follows


def _space() -> LabelSpace:
    # unsorted on purpose; part 8 doubles as a number never used; scene labels are image-level
    numbers = [7, 1, 2, 3, 4, 5, 6, 8, 20, 21, 22]
    cats = ["part", "object", "object", "object", "object", "part", "part", "part", "scene", "scene", "scene"]
    return LabelSpace.from_labels(numbers, cats, CATS, [f"c{n}" for n in numbers])


def _random_world(seed: int, n: int, size: tuple[int, int]):
    """Random masks: object (1 plane, some foreign numbers), part (1-3 planes, repeats across planes,
    absent in some images), scene (image-level, absent in some images)."""
    rng = np.random.default_rng(seed)
    masks, labels = [], []
    for i in range(n):
        m = {"object": rng.choice([0, 1, 2, 3, 4, 5, 99], size=(1, *size)).astype(np.int32)}
        if i % 3:
            m["part"] = rng.choice([0, 5, 6, 7, 1], size=(int(rng.integers(1, 4)), *size)).astype(np.int32)
        masks.append(m)
        scenes = rng.choice([20, 21, 22, 4], size=int(rng.integers(0, 3)), replace=False)  # 4: an object number
        labels.append({"scene": tuple(int(x) for x in scenes)} if i % 4 else {})
    return masks, labels


def _torch_resize(fmap: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(fmap[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]


def _loop_tally(acts, thresholds, masks, labels, space, size, resize=_torch_resize) -> TallyPartial:
    """The straightforward version of the "image" rules: per image, per unit (every map upsampled), per label."""
    n, units = acts.shape[:2]
    t = TallyPartial.empty(units, space)
    s = size[0] * size[1]
    for i in range(n):
        present = {}  # label index -> bool mask [sh, sw]
        for c, name in enumerate(space.category_names):
            for number in labels[i].get(name, ()):
                hit = np.flatnonzero((space.numbers == number) & (space.category == c))
                if hit.size:
                    present[int(hit[0])] = np.ones(size, bool)
            planes = masks[i].get(name)
            if planes is None:
                continue
            for li in np.flatnonzero(space.category == c):
                if li not in present and (planes == space.numbers[li]).any():
                    present[li] = (planes == space.numbers[li]).any(axis=0)
        cats_here = {int(space.category[li]) for li in present}
        for li, mask in present.items():
            t.label_area[li] += mask.sum()
        for u in range(units):
            up = resize(acts[i, u], size)
            on = (up > float(thresholds[u])).numpy()
            t.unit_area[u] += on.sum()
            for c in cats_here:
                t.unit_cat[u, c] += on.sum()
            for li, mask in present.items():
                t.intersection[u, li] += (on & mask).sum()
    t.images = n
    assert s == size[0] * size[1]
    return t


def _assert_tally_equal(a: TallyPartial, b: TallyPartial) -> None:
    for key in ("intersection", "label_area", "unit_cat", "unit_area"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
    assert a.images == b.images


def test_label_space_sorts_and_looks_up_by_category():
    space = _space()
    assert space.numbers.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 20, 21, 22]
    assert space.names[6] == "c7" and space.category_names[space.category[6]] == "part"
    assert space.indices(0, np.array([1, 5, 0, 99, 4])).tolist() == [0, -1, -1, -1, 3]  # 5 is a part
    with pytest.raises(ValueError):
        LabelSpace.from_labels([1, 1], [0, 0], ["a"])


def test_iou_by_hand_three_images_two_categories_image_union():
    # 4x4 masks, acts at 4x4 (the upsampling is the identity), thresholds 0.5, acts in {0, 1}.
    space = LabelSpace.from_labels([1, 2, 5, 6], [0, 0, 1, 1], ("object", "scene"), ["tree", "car", "forest", "street"])
    acts = torch.zeros(3, 2, 4, 4)  # unit 1 never fires
    masks: list[dict] = [{}, {}, {}]
    # image 0: object in two planes; tree = plane0 rows 0-1 cols 0-1, plane1 (1,1),(1,2): tree area 5
    # (pixel (1,1) is tree in both planes and counts once); car = (3,3): area 1; scene: forest.
    # unit 0 on row 1 (4 pixels): I tree = (1,0),(1,1),(1,2) = 3, I forest = 4.
    m0 = np.zeros((2, 4, 4), np.int32)
    m0[0, :2, :2] = 1
    m0[1, 1, 1:3] = 1
    m0[1, 3, 3] = 2
    masks[0]["object"] = m0
    acts[0, 0, 1, :] = 1
    # image 1: no object masks at all; scene: street. unit 0 on (0,0),(0,1),(0,2): 3 pixels, I street = 3.
    # These 3 pixels must not count in Ucat[object].
    acts[1, 0, 0, :3] = 1
    # image 2: car = column 0 (4 pixels); no scene label. unit 0 on (0,0),(3,3): I car = 1; Ucat[scene] += 0.
    m2 = np.zeros((1, 4, 4), np.int32)
    m2[0, :, 0] = 2
    masks[2]["object"] = m2
    acts[2, 0, 0, 0] = acts[2, 0, 3, 3] = 1
    labels = [{"scene": (5,)}, {"scene": (6,)}, {"scene": ()}]
    t = d.compute_tally(acts, np.array([0.5, 0.5]), masks, labels, space, union="image")
    # A = tree 5, car 1 + 4 = 5, forest 16, street 16
    assert t.label_area.tolist() == [5, 5, 16, 16]
    # I (unit 0) = tree 3, car 1, forest 4, street 3
    assert t.intersection.tolist() == [[3, 1, 4, 3], [0, 0, 0, 0]]
    # Ucat (unit 0): object = 4 (img 0) + 2 (img 2) = 6; scene = 4 (img 0) + 3 (img 1) = 7
    assert t.unit_cat.tolist() == [[6, 7], [0, 0]]
    assert t.unit_area.tolist() == [9, 0] and t.images == 3
    # IoU: tree 3/(6+5-3) = 3/8, car 1/(6+5-1) = 1/10, forest 4/(7+16-4) = 4/19, street 3/(7+16-3) = 3/20
    res = d.finalize(t, np.array([0.5, 0.5], np.float32), space, top=5, layer="conv")
    np.testing.assert_allclose(res.iou, [[3 / 8, 1 / 10, 4 / 19, 3 / 20], [0, 0, 0, 0]], rtol=1e-7)
    c = res.concepts
    assert list(c["concept"]) == ["tree", "car", "forest", "street"] * 2  # unit 1: all 0, ties by number
    assert c["rank"].tolist() == [0, 1, 0, 1] * 2
    assert c["union"].tolist() == [8, 10, 19, 20, 5, 5, 16, 16]
    assert c["intersection"].tolist() == [3, 1, 4, 3, 0, 0, 0, 0]
    assert list(c["layer"]) == ["conv"] * 8 and c["threshold"].tolist() == [0.5] * 8
    u = res.units
    assert list(u["label"]) == ["tree", None] and list(u["category"]) == ["object", None]
    assert u["iou"][0] == np.float32(3 / 8) and u["interpretable"].tolist() == [True, False]


def test_iou_by_hand_netdissect_lite_rules():
    """The default rules on the same images plus one: a label counts in every plane it is in (twice at a
    pixel it marks twice), and a category's union term counts an image's activated pixels only when one
    of them lies on a label of the category (or the image has an image-level label of it)."""
    space = LabelSpace.from_labels([1, 2, 5, 6], [0, 0, 1, 1], ("object", "scene"), ["tree", "car", "forest", "street"])
    acts = torch.zeros(4, 2, 4, 4)
    m0 = np.zeros((2, 4, 4), np.int32)
    m0[0, :2, :2] = 1  # tree: 4 pixels in plane 0
    m0[1, 1, 1:3] = 1  # and 2 in plane 1, (1,1) again
    m0[1, 3, 3] = 2
    acts[0, 0, 1, :] = 1  # on (1,0) tree, (1,1) tree twice, (1,2) tree, (1,3) nothing
    acts[1, 0, 0, :3] = 1  # image 1: no masks, scene street
    m2 = np.zeros((1, 4, 4), np.int32)
    m2[0, :, 0] = 2
    acts[2, 0, 0, 0] = acts[2, 0, 3, 3] = 1  # (0,0) car
    m3 = np.zeros((1, 4, 4), np.int32)
    m3[0, 0, 0] = 1
    acts[3, 0, 3, 3] = 1  # image 3: fires only off its tree pixel
    masks = [{"object": m0}, {}, {"object": m2}, {"object": m3}]
    labels = [{"scene": (5,)}, {"scene": (6,)}, {"scene": ()}, {}]
    t = d.compute_tally(acts, np.array([0.5, 0.5]), masks, labels, space)
    assert t.label_area.tolist() == [4 + 2 + 1, 1 + 4, 16, 16]
    assert t.intersection.tolist() == [[4, 1, 4, 3], [0, 0, 0, 0]]
    # Ucat object: image 0 (4, on tree) + image 2 (2, on car); image 3's pixel lies on no object label
    # scene: image 0 (4, forest) + image 1 (3, street)
    assert t.unit_cat.tolist() == [[6, 7], [0, 0]] and t.unit_area.tolist() == [10, 0]
    res = d.finalize(t, np.array([0.5, 0.5], np.float32), space)
    np.testing.assert_allclose(res.iou[0], [4 / 9, 1 / 10, 4 / 19, 3 / 20], rtol=1e-7)
    assert res.units["label"][0] == "tree"
    old = d.compute_tally(acts, np.array([0.5, 0.5]), masks, labels, space, union="image")
    assert old.unit_cat[0].tolist() == [7, 7] and old.label_area[0] == 6 and old.intersection[0, 0] == 3


def test_best_label_ties_go_to_the_later_category_and_the_smaller_number():
    space = LabelSpace.from_labels([1, 2, 5, 6], [0, 0, 1, 1], ("object", "scene"), ["tree", "car", "forest", "street"])
    t = TallyPartial(intersection=np.array([[2, 2, 2, 1], [3, 2, 2, 2], [0, 0, 0, 0]]), label_area=np.array([4, 4, 4, 4]),
                     unit_cat=np.array([[4, 4], [4, 4], [0, 0]]), unit_area=np.array([4, 4, 0]), images=1)
    u = d.finalize(t, np.zeros(3, np.float32), space).units
    # unit 0: tree, car and forest tie at 2/6: object's best is tree (smaller number), then scene wins the tie
    assert list(u["label"]) == ["forest", "tree", None] and list(u["category"]) == ["scene", "object", None]


def test_planted_detectors():
    rng = np.random.default_rng(3)
    n, size = 60, (16, 16)
    space = LabelSpace.from_labels([1, 2, 3, 10, 11], ["object"] * 3 + ["scene"] * 2, ("object", "scene"),
                                   ["tree", "car", "sky", "beach", "forest"])
    masks, labels = [], []
    for i in range(n):
        m = np.zeros((2, *size), np.int32)
        m[0, :5] = 3  # sky on top
        y, x = rng.integers(5, 13, size=2)
        m[0, y:y + 3, x:x + 3] = 1  # a tree
        y, x = rng.integers(0, 14, size=2)
        m[1, y:y + 2, x:x + 2] = 2  # a car, in the second plane (may sit over the tree)
        masks.append({"object": m})
        labels.append({"scene": (10,) if i % 2 else (11,)})
    acts = torch.zeros(n, 4, *size)
    acts[:, 0] = torch.from_numpy(np.stack([(m["object"] == 1).any(0) for m in masks])).float()  # tree detector
    acts[:, 1] = torch.randn(n, *size)  # noise
    acts[1::2, 2] = 1.0  # fires on every pixel of beach images
    acts[:, 3] = torch.from_numpy(np.stack([(m["object"] == 2).any(0) for m in masks])).float()  # car detector
    p = th.compute_thresholds(acts, 0.005, n * size[0] * size[1])
    thr = th.finalize_thresholds(p)
    # A map that equals a mask ties at its maximum, so its top-quantile threshold is 1.0 and nothing is
    # `> 1`; the planted detectors get threshold 0.5 (the noise unit keeps its computed one).
    assert thr[0] == 1.0
    thr[[0, 2, 3]] = 0.5
    t = d.compute_tally(acts, thr, masks, labels, space)
    res = d.finalize(t, thr, space)
    u = res.units
    assert list(u["label"][[0, 2, 3]]) == ["tree", "beach", "car"]
    np.testing.assert_allclose(u["iou"][[0, 2, 3]], 1.0, atol=1e-6)
    assert u["interpretable"].tolist() == [True, False, True, True]
    assert u["iou"][1] < 0.04


def test_planted_detector_end_to_end_with_computed_threshold():
    # values inside the mask in (1, 2), 0 elsewhere; quantile (T + 1) / total makes the threshold
    # the largest background value (0), so exactly the T mask pixels are `> threshold`.
    rng = np.random.default_rng(4)
    n, size = 20, (8, 8)
    space = LabelSpace.from_labels([1, 2], [0, 0], ("object",), ["tree", "rock"])
    masks = [{"object": rng.choice([0, 1, 2], p=[0.8, 0.1, 0.1], size=(1, *size)).astype(np.int32)} for _ in range(n)]
    tree = np.stack([m["object"][0] == 1 for m in masks])
    acts = torch.from_numpy(tree * (1 + rng.random(tree.shape))).float()[:, None]
    total = n * size[0] * size[1]
    a, b, c = (th.compute_thresholds(acts[s:s + 7], (tree.sum() + 1) / total, total) for s in range(0, n, 7))
    thr = th.finalize_thresholds(th.merge_thresholds(th.merge_thresholds(a, b), c))
    assert thr[0] == 0.0
    res = d.finalize(d.compute_tally(acts, thr, masks, [{}] * n, space), thr, space)
    assert res.units["label"][0] == "tree" and res.units["iou"][0] == 1.0


def test_thresholds_exact_and_shard_independent():
    torch.manual_seed(0)
    acts = torch.randn(23, 5, 3, 4)
    acts[:, 4] = torch.round(acts[:, 4])  # many ties
    total = 23 * 12
    q = 0.05
    m = th.top_count(q, total)
    assert m == 14  # ceil(0.05 * 276) = ceil(13.8)
    everything = acts.transpose(0, 1).reshape(5, -1).numpy()
    expected = -np.sort(-everything, axis=1)[:, m - 1]
    one = th.finalize_thresholds(th.compute_thresholds(acts, q, total))
    np.testing.assert_array_equal(one, expected)
    assert th.compute_thresholds(acts, q, total).top.shape == (5, m)
    shards = [th.compute_thresholds(acts[s], q, total) for s in (slice(0, 2), slice(2, 13), slice(13, 23))]
    for order in itertools.permutations(range(3)):
        a, b, c = (shards[i] for i in order)
        left = th.merge_thresholds(th.merge_thresholds(a, b), c)
        right = th.merge_thresholds(a, th.merge_thresholds(b, c))
        np.testing.assert_array_equal(np.sort(left.top, axis=1), np.sort(right.top, axis=1))
        np.testing.assert_array_equal(th.finalize_thresholds(left), expected)
    empty = th.ThresholdPartial.empty(5, q, total)
    with_empty = th.merge_thresholds(empty, th.compute_thresholds(acts, q, total))
    np.testing.assert_array_equal(th.finalize_thresholds(with_empty), expected)
    # an image skipped: m follows the activations actually seen
    fewer = th.compute_thresholds(acts[:22], q, total)
    seen = -np.sort(-acts[:22].transpose(0, 1).reshape(5, -1).numpy(), axis=1)
    np.testing.assert_array_equal(th.finalize_thresholds(fewer), seen[:, th.top_count(q, 22 * 12) - 1])
    with pytest.raises(ValueError):
        th.finalize_thresholds(empty)


def test_pruning_floors_keep_thresholds_exact_and_partials_small():
    # shards dispatched after others only return values above the merged partial's floor, as the runner does
    torch.manual_seed(1)
    acts = torch.relu(torch.randn(60, 4, 6, 6))
    acts[:, 3] = torch.round(acts[:, 3] * 2) / 2  # ties at the threshold
    total, q = 60 * 36, 0.01
    everything = acts.transpose(0, 1).reshape(4, -1).numpy()
    expected = -np.sort(-everything, axis=1)[:, th.top_count(q, total) - 1]
    merged, kept = th.ThresholdPartial.empty(4, q, total), []
    for start in range(0, 60, 6):
        part = th.compute_thresholds(acts[start:start + 6], q, total, th.pruning_floor(merged))
        kept.append(part.top.shape[1])
        merged = th.merge_thresholds(merged, part)
    np.testing.assert_array_equal(th.finalize_thresholds(merged), expected)
    assert merged.count == total
    capacity = th.top_count(q, total)  # 22 values per unit, what an unpruned shard sends
    assert kept[0] == capacity and sum(kept[1:]) < 9 * capacity / 2  # later shards send much less
    # a floor above the true threshold would be wrong; one at it is fine (ties are kept by earlier shards)
    floor = th.pruning_floor(th.compute_thresholds(acts, q, total))
    assert (floor <= expected).all()


@pytest.mark.parametrize("q", [0.01, 0.3])
def test_streaming_top_values_equal_the_exact_quantile(q):
    # TopValues (what a worker runs over its batches) vs sorting everything, with ties and an outside floor
    torch.manual_seed(2)
    acts = torch.relu(torch.randn(40, 5, 4, 4))
    acts[:, 0] = 0.0  # a dead unit: its threshold is 0
    acts[:, 4] = torch.round(acts[:, 4] * 2) / 2
    total = 40 * 16
    everything = acts.transpose(0, 1).reshape(5, -1).numpy()
    expected = -np.sort(-everything, axis=1)[:, th.top_count(q, total) - 1]
    for floor in (None, th.pruning_floor(th.compute_thresholds(acts[30:], q, total))):
        top = th.TopValues(5, q, total, floor)
        for start in range(0, 40 if floor is None else 30, 3):  # uneven batches
            top.add(acts[start:min(start + 3, 40 if floor is None else 30)])
        part = top.result()
        if floor is not None:  # the images that gave the floor are merged in, as the runner merges shards
            part = th.merge_thresholds(part, th.compute_thresholds(acts[30:], q, total))
            part.count = total
        assert part.top.shape[1] <= part.capacity
        np.testing.assert_array_equal(th.finalize_thresholds(part), expected)


@pytest.mark.parametrize("source, size", [((5, 5), (12, 12)), ((4, 3), (16, 12)), ((9, 8), (6, 7))])
def test_vectorized_tally_equals_loop_and_shards(source, size):
    # 5 -> 12: a non-integer ratio; 4 -> 16: a power of two (as resnet maps to Broden masks); 9 -> 6: shrinking
    space = _space()
    n = 14
    torch.manual_seed(1)
    acts = torch.randn(n, 6, *source)
    acts[:, 5] = torch.relu(acts[:, 5])
    masks, labels = _random_world(2, n, size)
    thr = th.finalize_thresholds(th.compute_thresholds(acts, 0.08, n * source[0] * source[1]))
    bilinear = d.Bilinear.build(source, size)
    expected = _loop_tally(acts, thr, masks, labels, space, size, lambda fmap, _: bilinear.resize(fmap[None])[0])
    assert (expected.intersection > 0).mean() > 0.3 and (expected.unit_cat < expected.unit_area[:, None]).any()
    whole = d.compute_tally(acts, thr, masks, labels, space, **IMAGE_RULES)
    _assert_tally_equal(whole, expected)
    _assert_tally_equal(d.compute_tally(acts, thr, masks, labels, space, **IMAGE_RULES, chunk_elements=5 * size[0] * size[1]), expected)
    # union="image", resize="torch": F.interpolate on whole maps, against the loop with F.interpolate
    via_torch = _loop_tally(acts, thr, masks, labels, space, size)
    _assert_tally_equal(d.compute_tally(acts, thr, masks, labels, space, union="image", resize="torch"), via_torch)
    _assert_tally_equal(d.compute_tally(acts, thr, masks, labels, space, union="image", resize="torch", chunk_elements=1), via_torch)
    cuts = [(0, 3), (3, 9), (9, 14)]
    shards = [d.compute_tally(acts[a:b], thr, masks[a:b], labels[a:b], space, **IMAGE_RULES) for a, b in cuts]
    for order in itertools.permutations(range(3)):
        a, b, c = (shards[i] for i in order)
        _assert_tally_equal(d.merge_tally(d.merge_tally(a, b), c), expected)
        _assert_tally_equal(d.merge_tally(a, d.merge_tally(b, c)), expected)
    res = d.finalize(whole, thr, space, top=3)
    assert len(res.concepts["unit"]) == 6 * (3 + 3 + 3)
    ref, _ = d.iou_matrix(expected, space)
    np.testing.assert_allclose(res.iou, ref, rtol=1e-6)


@pytest.mark.parametrize("source, size", [((7, 7), (56, 56)), ((14, 14), (112, 112)), ((5, 5), (12, 12)),
                                          ((12, 9), (5, 7)), ((1, 1), (4, 4))])
def test_bilinear_matches_interpolate_and_cells_match_whole_maps(source, size):
    torch.manual_seed(2)
    x = torch.randn(300, *source) * 3
    bilinear = d.Bilinear.build(source, size)
    whole = bilinear.resize(x)
    ref = F.interpolate(x[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    assert (whole - ref).abs().max() <= 8 * torch.finfo(torch.float32).eps * x.abs().max()  # a few ulps
    thr = x.reshape(300, -1).quantile(0.9, dim=1)
    on = whole.reshape(300, -1) > thr[:, None]
    m, p = bilinear.on_pixels(x, thr, thr - thr.abs() * 1e-5)
    assert len(m) == on.sum()
    assert on[m, p].all()  # the same pixels, each once


def test_image_without_pixel_masks_needs_mask_size():
    space = _space()
    acts = torch.ones(2, 1, 2, 2)
    with pytest.raises(ValueError, match="mask_size"):
        d.compute_tally(acts, np.zeros(1), [{}, {}], [{"scene": (20,)}, {}], space)
    t = d.compute_tally(acts, np.zeros(1), [{}, {}], [{"scene": (20,)}, {}], space, mask_size=(3, 3))
    assert t.intersection[0, 8] == 9 and t.label_area[8] == 9 and t.unit_cat[0].tolist() == [0, 0, 9]


@pytest.mark.parametrize("quantile, chunk", [(0.005, 1 << 22), (0.05, 1 << 22), (0.3, 1 << 22), (1.0, 1 << 22), (0.05, 50)])
def test_bounded_memory_thresholds_equal_the_exact_ones(quantile, chunk):
    """Radix selection over float32 bit patterns (3 counting passes, shards merged by addition) finds
    exactly the m-th largest value: zeros, ties, all-negative units, -0.0 and +0.0 included; `chunk`
    50 keys the units one at a time."""
    from pipeline.stages.dissection import radix

    rng = np.random.default_rng(7)
    x = rng.normal(size=(30, 5, 4, 4)).astype(np.float32)
    x[:, 1] = np.maximum(x[:, 1], 0)
    x[:, 2] = np.round(x[:, 2])
    x[:, 3] = -np.abs(x[:, 3])
    x[:5, 4], x[5:10, 4] = 0.0, -0.0
    t = torch.as_tensor(x)
    exact = th.finalize_thresholds(th.compute_thresholds(t, quantile, x.shape[0] * 16))
    state = radix.start(5)
    for _ in radix.PASSES:
        parts = [radix.compute(t[s:s + 7], state, chunk) for s in range(0, 30, 7)]
        merged = parts[0]
        for part in parts[1:]:
            merged = radix.merge(merged, part)
        state = radix.select(state, merged, quantile)
    np.testing.assert_array_equal(radix.thresholds(state), exact)
    # by hand for one unit: the m-th largest of its 480 values
    m = th.top_count(quantile, 480)
    assert radix.thresholds(state)[0] == np.sort(x[:, 0].ravel())[::-1][m - 1]
