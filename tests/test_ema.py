"""The exponential moving average of the weights that sampling uses (Ho et al. 2020, App. B)."""

import copy

import torch

from gcg.train import update_ema


def test_update_ema_moves_each_average_one_minus_rate_of_the_way_to_the_weights():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    emas = {0.9: copy.deepcopy(model), 0.5: copy.deepcopy(model)}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.train()(torch.randn(8, 3))  # moves the BatchNorm running statistics (buffers)
    update_ema(emas, model)
    for rate, ema in emas.items():
        for name, p in model.named_parameters():
            expected = rate * before[name] + (1 - rate) * p.detach()  # theta_ema <- rate theta_ema + (1 - rate) theta
            torch.testing.assert_close(ema.get_parameter(name), expected, msg=f"rate {rate}: {name}")
        for name, b in model.named_buffers():
            torch.testing.assert_close(ema.get_buffer(name), b, rtol=0, atol=0)  # buffers are copied


def test_update_ema_at_rate_zero_copies_and_at_rate_one_keeps():
    model = torch.nn.Linear(2, 2)
    emas = {0.0: copy.deepcopy(model), 1.0: copy.deepcopy(model)}
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    update_ema(emas, model)
    torch.testing.assert_close(emas[0.0].weight, model.weight)
    torch.testing.assert_close(emas[1.0].weight, start)
