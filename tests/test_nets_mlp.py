"""nets.mlp: the dense bodies. Shapes for every activation, one linear map without hidden layers,
builders that read a NetSpec (the decoder mirrors the encoder's widths), and the lookup error of an
unknown activation."""

import math

import pytest
import torch

from vaekit.errors import ConfigError
from vaekit.nets import NetSpec, build_decoder, build_encoder
from vaekit.nets.mlp import ACTIVATIONS, MLP, activation, mlp_decoder, mlp_encoder


def linear_widths(net: MLP) -> list[tuple[int, int]]:
    """(in_features, out_features) of each Linear layer of ``net``, input first."""
    return [(m.in_features, m.out_features) for m in net.net if isinstance(m, torch.nn.Linear)]


def test_mlp_builders_read_the_widths_and_activation_of_the_spec():
    spec = NetSpec(hidden=(6, 3), activation="tanh")
    enc = build_encoder("mlp", (1, 2, 2), 4, spec)
    dec = build_decoder("mlp", 4, (1, 2, 2), spec)
    assert isinstance(enc, MLP) and isinstance(dec, MLP)
    widths = [m.out_features for m in enc.net if isinstance(m, torch.nn.Linear)]
    assert widths == [6, 3, 4]
    assert [m.out_features for m in dec.net if isinstance(m, torch.nn.Linear)] == [3, 6, 4]  # mirrored
    assert all(type(m) is not torch.nn.ReLU for m in enc.net)
    assert dec(torch.randn(2, 4)).shape == (2, 1, 2, 2)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_mlp_shapes_for_every_activation(name):
    net = MLP((1, 2, 3), [5, 4], (2, 3), name)
    x = torch.randn(7, 1, 2, 3, requires_grad=True)
    y = net(x)
    assert y.shape == (7, 2, 3) and torch.isfinite(y).all()
    assert [type(m) for m in net.net if not isinstance(m, (torch.nn.Linear, torch.nn.Flatten))] == [
        ACTIVATIONS[name]
    ] * 2  # one after each hidden layer, none after the output
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert grad.shape == x.shape
    assert activation(name) is not activation(name)  # a fresh module each time


def test_no_hidden_layers_is_one_linear_map():
    """hidden = [] gives y = W x + b (with a Gaussian likelihood, the VAE is probabilistic PCA)."""
    net = MLP((4,), [], (3,))
    assert linear_widths(net) == [(4, 3)]
    x = torch.randn(5, 4)
    layer = net.net[1]
    torch.testing.assert_close(net(x), x @ layer.weight.T + layer.bias)


@pytest.mark.parametrize("hidden", [(), (7,), (6, 3, 5)])
def test_builders_give_the_documented_shapes_and_the_decoder_mirrors_the_encoder(hidden):
    spec = NetSpec(hidden=hidden, activation="elu")
    data_shape, latent_dim, param_shape = (1, 4, 4), 3, (2, 4, 4)
    enc = mlp_encoder(data_shape, 2 * latent_dim, spec)  # mean and log-variance
    dec = mlp_decoder(latent_dim, param_shape, spec)
    assert enc(torch.rand(6, *data_shape)).shape == (6, 2 * latent_dim)
    assert dec(torch.randn(6, latent_dim)).shape == (6, *param_shape)
    enc_widths = [math.prod(data_shape), *hidden, 2 * latent_dim]
    dec_widths = [latent_dim, *reversed(hidden), math.prod(param_shape)]
    assert linear_widths(enc) == list(zip(enc_widths[:-1], enc_widths[1:]))
    assert linear_widths(dec) == list(zip(dec_widths[:-1], dec_widths[1:]))


def test_unknown_activation_is_the_lookup_error():
    with pytest.raises(ConfigError, match=r"^unknown activation 'gleu' \(did you mean 'gelu'\?\); known: relu, tanh, "):
        MLP((4,), [3], (2,), "gleu")
    with pytest.raises(ConfigError, match=r"^unknown activation 'swish'; known: ") as err:
        build_encoder("mlp", (1, 2, 2), 4, NetSpec(activation="swish"))
    assert "\n" not in str(err.value)
