"""vaekit.traverse: offsets with 0 in the middle, units ranked by activity, one coordinate moved
per row, and the middle column the decoded posterior mean."""

import pytest
import torch

from vaekit.config import ModelConfig
from vaekit.errors import VaekitError
from vaekit.evaluate import unit_activity
from vaekit.models.vae import build_vae
from vaekit.traverse import SPAN, latent_traversal, rank_units, traversal_offsets, traverse_codes


def _vae(**fields):
    torch.manual_seed(0)
    return build_vae(ModelConfig(hidden=[16], latent_dim=4, **fields), (1, 4, 4))


def _scale_means(vae, factors):
    """Multiply the encoder's posterior means by ``factors`` [D]: Var_x E[z_j|x] scales by factor_j^2."""
    last = [m for m in vae.encoder.body.modules() if isinstance(m, torch.nn.Linear)][-1]
    D = len(factors)
    with torch.no_grad():
        last.weight[:D] *= torch.tensor(factors)[:, None]
        last.bias[:D] *= torch.tensor(factors)


def test_offsets_are_odd_symmetric_and_exactly_zero_in_the_middle():
    off = traversal_offsets(9)
    assert off.shape == (9,) and off[4].item() == 0.0
    assert off[0].item() == -SPAN and off[-1].item() == SPAN
    torch.testing.assert_close(off, -off.flip(0), rtol=0, atol=0)
    torch.testing.assert_close(off.diff(), torch.full((8,), 0.75))
    for steps in (1, 2, 4):
        with pytest.raises(VaekitError, match="odd number of steps >= 3"):
            traversal_offsets(steps)


def test_units_are_ranked_by_the_variance_of_their_posterior_means():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(500, 4, generator=g) * torch.tensor([0.1, 2.0, 0.0, 1.0])
    order, activity = rank_units(means)
    assert order.tolist() == [1, 3, 0, 2]
    torch.testing.assert_close(activity, means.double().var(0)[order])
    assert activity[-1].item() == 0.0  # a collapsed unit comes last


def test_each_row_moves_its_own_coordinate_by_offset_times_std():
    centre = torch.tensor([0.5, -1.0, 2.0])
    dims, std, off = torch.tensor([2, 0]), torch.tensor([0.5, 2.0]), traversal_offsets(5)
    z = traverse_codes(centre, dims, std, off)
    assert z.shape == (2, 5, 3)
    torch.testing.assert_close(z[0, :, 2], 2.0 + 0.5 * off)
    torch.testing.assert_close(z[1, :, 0], 0.5 + 2.0 * off)
    assert torch.equal(z[0, :, :2], centre[:2].expand(5, 2)) and torch.equal(z[1, :, 1:], centre[1:].expand(5, 2))


def test_traversal_shape_order_and_middle_column():
    """[dims, steps, *data_shape]; rows in the order of unit activity over the data; the middle
    column is E[x|z] at the example's posterior mean; a row's offsets are +-3 prior std."""
    vae = _vae()
    _scale_means(vae, [0.01, 10.0, 1.0, 0.1])  # activity ordered 1, 2, 3, 0 by construction
    x = torch.rand(64, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    tr = latent_traversal(vae, x, index=5, n_dims=3, steps=7)
    assert tr.images.shape == (3, 7, 1, 4, 4)
    assert tr.dims.tolist() == [1, 2, 3]
    mu = vae.encode(x)[0]
    torch.testing.assert_close(tr.activity, unit_activity(mu)[tr.dims])
    torch.testing.assert_close(tr.centre, mu[5])
    mean_image = vae.decode_to_x(mu[5:6])[0]
    for row in tr.images:
        torch.testing.assert_close(row[3], mean_image, rtol=0, atol=1e-6)
    torch.testing.assert_close(tr.std, torch.ones(3))  # the standard-normal prior's std
    z_end = mu[5].clone()
    z_end[2] += 3.0
    torch.testing.assert_close(tr.images[1, -1], vae.decode_to_x(z_end[None])[0], rtol=0, atol=1e-6)
    assert latent_traversal(vae, x, index=0, n_dims=99, steps=3).dims.shape == (4,)  # at most D rows


def test_a_two_layer_vae_traverses_the_layer_its_decoder_reads():
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=[16], latent_dim=5, stochastic_layers=[3, 2], layer_hidden=[8])
    vae = build_vae(cfg, (1, 4, 4))
    x = torch.rand(32, 1, 4, 4)
    torch.manual_seed(2)
    tr = latent_traversal(vae, x, index=0, n_dims=10, steps=3)
    assert sorted(tr.dims.tolist()) == [0, 1, 2] and tr.images.shape == (3, 3, 1, 4, 4)
    assert (tr.std > 0).all()  # the Monte-Carlo std of the chain's marginal over z_1


def test_an_index_outside_the_data_is_one_line():
    with pytest.raises(VaekitError, match="example index 9 is outside the 4 examples"):
        latent_traversal(_vae(), torch.rand(4, 1, 4, 4), index=9, n_dims=2, steps=3)
