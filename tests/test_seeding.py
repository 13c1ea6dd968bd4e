"""seeding: derived seeds are pure, in range, and distinct across streams and indices."""

import torch

from vaekit.seeding import EPOCH, EVAL_CHUNK, STEP, derive_seed


def test_pure_and_in_the_range_torch_accepts():
    a = derive_seed(7, STEP, 123, 0)
    assert a == derive_seed(7, STEP, 123, 0)
    assert 0 <= a < 2**63
    torch.Generator().manual_seed(a)  # accepted as is


def test_every_element_of_the_path_matters_and_streams_do_not_collide():
    seeds = {
        derive_seed(s, stream, i, shard)
        for s in (0, 1)
        for stream in (STEP, EPOCH, EVAL_CHUNK)
        for i in range(50)
        for shard in (0, 1)
    }
    assert len(seeds) == 2 * 3 * 50 * 2
    assert derive_seed(0, STEP, 1, 2) != derive_seed(0, STEP, 2, 1)  # order matters


def test_negative_indices_are_allowed_and_distinct():
    assert derive_seed(0, EPOCH, -1) != derive_seed(0, EPOCH, 1)
    assert 0 <= derive_seed(-5, -1) < 2**63


def test_nearby_seeds_give_unrelated_streams():
    x = torch.stack(
        [torch.rand(1000, generator=torch.Generator().manual_seed(derive_seed(s, STEP, 0))) for s in (0, 1)]
    )
    assert abs(torch.corrcoef(x)[0, 1]) < 0.1
