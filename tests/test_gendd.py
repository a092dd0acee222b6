"""GenDD, part by part: schedule, respacing, forward process and posterior, loss terms, head init,
tokenization, contraction, mixup, guidance, samplers (with an epsilon oracle), a learning test, and the fast
prediction variants: the one-step x0 estimate, the distilled linear predictor, the flow-matching head (with an
exact velocity oracle)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdbench.methods.gendd.diffusion import (
    GaussianDiffusion,
    Schedule,
    cosine_alpha_bar,
    cosine_betas,
    space_timesteps,
)
from kdbench.methods.gendd.flow import RectifiedFlow
from kdbench.methods.gendd.head import DiffusionHead, timestep_embedding
from kdbench.methods.gendd.method import beta2_at, contract, feature_mixup, split_tokens
from kdbench.methods.gendd.predictor import apply_linear_map, fit_linear_map, linear_map_statistics, one_step_x0

# ---------------------------------------------------------------------------------------------- schedule


def test_cosine_schedule_matches_closed_form_and_caps_betas() -> None:
    betas = cosine_betas(1000)
    alpha_bar = np.cumprod(1 - betas)
    closed = np.cos(((np.arange(1, 1001) / 1000) + 0.008) / 1.008 * math.pi / 2) ** 2 / \
        np.cos(0.008 / 1.008 * math.pi / 2) ** 2
    uncapped = betas < 0.999
    assert np.max(np.abs(alpha_bar[uncapped] - closed[uncapped])) < 1e-6
    assert betas.max() == pytest.approx(0.999) and betas[-1] == pytest.approx(0.999)
    assert (betas > 0).all() and np.all(np.diff(betas) >= 0)
    assert float(cosine_alpha_bar(0.0)) == pytest.approx(math.cos(0.008 / 1.008 * math.pi / 2) ** 2)
    # the numerics GENDD's sampler meets at its first step: alpha_bar(999) is about 2.4e-9
    assert 1e-9 < alpha_bar[999] < 1e-8


def test_respacing_keeps_the_right_timesteps() -> None:
    hundred = space_timesteps(1000, 100)
    assert len(hundred) == 100 and hundred[:4] == [0, 10, 20, 30] and hundred[-1] == 999
    sixty_four = space_timesteps(1000, 64)
    # stride 999/63 = 15.857...: round(15.857) = 16, round(31.714) = 32, round(47.571) = 48
    assert sixty_four[:4] == [0, 16, 32, 48] and sixty_four[-1] == 999 and len(sixty_four) == 64
    assert space_timesteps(1000, 1000) == list(range(1000))
    diffusion = GaussianDiffusion()
    respaced = diffusion.sampling_schedule(100)
    assert respaced.timesteps.tolist() == hundred
    assert torch.allclose(respaced.alphas_cumprod, diffusion.train_schedule.alphas_cumprod[hundred], rtol=1e-12)
    started = diffusion.sampling_schedule(16, start_step=950)
    assert started.timesteps[-1] == 950 and started.timesteps[0] == 0 and started.num_steps == 16


def _fixed():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)


def test_q_sample_and_posterior_match_their_formulas() -> None:
    diffusion = GaussianDiffusion()
    x0, noise = _fixed()
    t = torch.tensor([0, 500, 999])
    ab = np.cumprod(1 - cosine_betas(1000))
    b = cosine_betas(1000)
    x_t = diffusion.q_sample(x0, t, noise)
    for row, step in enumerate(t.tolist()):
        expected = math.sqrt(ab[step]) * x0[row] + math.sqrt(1 - ab[step]) * noise[row]
        assert torch.allclose(x_t[row], expected, atol=1e-12)
    mean, var, _ = diffusion.q_posterior(diffusion.train_schedule, x0, x_t, t)
    for row, step in enumerate(t.tolist()):
        ab_prev = ab[step - 1] if step > 0 else 1.0
        c1 = math.sqrt(ab_prev) * b[step] / (1 - ab[step])
        c2 = math.sqrt(1 - b[step]) * (1 - ab_prev) / (1 - ab[step])
        assert torch.allclose(mean[row], c1 * x0[row] + c2 * x_t[row], atol=1e-10)
        assert float(var[row]) == pytest.approx((1 - ab_prev) / (1 - ab[step]) * b[step], rel=1e-10, abs=1e-30)


def test_learned_range_variance_interpolates_between_posterior_and_beta() -> None:
    diffusion = GaussianDiffusion()
    s = diffusion.train_schedule
    x_t = torch.zeros(2, 3, dtype=torch.float64)
    t = torch.tensor([10, 10])
    out = torch.cat([torch.zeros(2, 3, dtype=torch.float64), torch.tensor([[-1.0] * 3, [1.0] * 3])], dim=1)
    log_var = diffusion.p_mean_variance(s, out, x_t, t)["log_variance"]
    assert torch.allclose(log_var[0], s.posterior_log_variance_clipped[10].expand(3))
    assert torch.allclose(log_var[1], s.log_betas[10].expand(3))


def test_vlb_term_trains_only_the_variance() -> None:
    diffusion = GaussianDiffusion()
    x0 = torch.randn(6, 4) * 0.5
    t = torch.tensor([0, 1, 10, 200, 700, 999])
    output = torch.randn(6, 8, requires_grad=True)
    losses = diffusion.training_losses(lambda x, tt: output, x0, t)
    losses["vb"].sum().backward(retain_graph=True)
    assert torch.count_nonzero(output.grad[:, :4]) == 0, "no VLB gradient on the epsilon output"
    assert output.grad[:, 4:].abs().sum() > 0, "the VLB trains the variance output"
    output.grad = None
    losses["mse"].sum().backward()
    assert torch.count_nonzero(output.grad[:, 4:]) == 0 and output.grad[:, :4].abs().sum() > 0
    assert torch.allclose(losses["loss"], losses["mse"] + losses["vb"])


def test_mse_term_is_mean_over_dims_per_row() -> None:
    diffusion = GaussianDiffusion(learn_sigma=False)
    x0, noise = torch.randn(2, 4), torch.randn(2, 4)
    eps_hat = torch.randn(2, 4)
    losses = diffusion.training_losses(lambda x, t: eps_hat, x0, torch.tensor([3, 900]), noise=noise)
    assert torch.allclose(losses["loss"], ((noise - eps_hat) ** 2).mean(dim=1))


# ---------------------------------------------------------------------------------------------- head


def test_zero_init_head_outputs_zero() -> None:
    head = DiffusionHead(token_dim=8, cond_dim=5, num_tokens=3, width=32, depth=2)
    out = head(torch.randn(7, 8), torch.randint(0, 1000, (7,)), torch.randn(7, 5), torch.randint(0, 3, (7,)))
    assert out.shape == (7, 16) and torch.count_nonzero(out) == 0
    assert head.token_embed.weight.std() > 0.5, "token embedding keeps its N(0, 1) default"
    assert DiffusionHead(8, 5, 3, 32, 2, learn_sigma=False).out_channels == 8


def test_timestep_embedding_formula() -> None:
    emb = timestep_embedding(torch.tensor([0.0, 10.0]), dim=4, max_period=10000.0)
    # frequencies 1 and 10000^(-1/2) = 0.01: [cos(t), cos(0.01 t), sin(t), sin(0.01 t)]
    expected = torch.tensor([[1.0, 1.0, 0.0, 0.0], [math.cos(10), math.cos(0.1), math.sin(10), math.sin(0.1)]])
    assert torch.allclose(emb, expected, atol=1e-6)


def _trained_head(seed: int = 0) -> DiffusionHead:
    torch.manual_seed(seed)
    head = DiffusionHead(token_dim=4, cond_dim=3, num_tokens=2, width=16, depth=1)
    for p in head.parameters():  # leave zero init so every branch matters
        torch.nn.init.normal_(p, std=0.3)
    return head


def test_cfg_scale_one_is_the_conditional_prediction_and_scale_two_extrapolates() -> None:
    head = _trained_head()
    x, t, c, idx = torch.randn(5, 4), torch.randint(0, 1000, (5,)), torch.randn(5, 3), torch.randint(0, 2, (5,))
    assert torch.allclose(head.forward_with_cfg(x, t, c, idx, 1.0), head(x, t, c, idx))
    cond, uncond = head(x, t, c, idx), head(x, t, torch.zeros_like(c), idx)
    guided = head.forward_with_cfg(x, t, c, idx, 2.0)
    assert torch.allclose(guided[:, :4], uncond[:, :4] + 2.0 * (cond[:, :4] - uncond[:, :4]), atol=1e-4)
    assert torch.allclose(guided[:, 4:], cond[:, 4:], atol=1e-4), "variance from the conditional branch"


# ---------------------------------------------------------------------------------------------- method parts


def test_tokenization_round_trips_and_orders_tokens() -> None:
    feature = torch.arange(2 * 192, dtype=torch.float32).reshape(2, 192)
    tokens = split_tokens(feature, 64)
    assert tokens.shape == (6, 64)
    for b in range(2):
        for i in range(3):
            assert torch.equal(tokens[b * 3 + i], feature[b, 64 * i: 64 * i + 64])
    assert torch.equal(tokens.reshape(2, -1), feature), "the tokens of an item are its feature, in order"
    assert torch.equal(split_tokens(feature, 192), feature), "token_dim = D is the whole-vector head"
    with pytest.raises(ValueError, match="multiple"):
        split_tokens(feature, 100)


def test_contraction_formula_and_identity() -> None:
    g = torch.Generator().manual_seed(0)
    f_t, weight = torch.randn(3, 6, generator=g), torch.randn(4, 6, generator=g)
    y = torch.tensor([0, 3, 1])
    expected = 0.3 * f_t + 0.7 * weight[y]
    assert torch.allclose(contract(f_t, y, weight, 0.7), expected)
    soft = torch.tensor([[0.5, 0.5, 0, 0], [0, 0, 0, 1.0], [0, 1.0, 0, 0]])
    assert torch.allclose(contract(f_t, soft, weight, 0.7)[1:], expected[1:])
    assert torch.allclose(contract(f_t, soft, weight, 0.7)[0], 0.3 * f_t[0] + 0.7 * (weight[0] + weight[1]) / 2)
    assert torch.equal(contract(f_t, y, weight, 0.0), f_t)
    assert torch.equal(contract(f_t, None, weight, 0.9), f_t)


def test_feature_mixup_uses_one_weight_and_permutation() -> None:
    z, target = torch.randn(4, 3), torch.randn(4, 5)
    perm = torch.tensor([2, 0, 3, 1])
    mz, mt = feature_mixup(z, target, 0.25, perm)
    assert torch.allclose(mz, 0.25 * z + 0.75 * z[perm]) and torch.allclose(mt, 0.25 * target + 0.75 * target[perm])


def test_beta2_ramp() -> None:
    assert beta2_at(0, 100, 0.95) == pytest.approx(0.95)
    assert beta2_at(99, 100, 0.95) == pytest.approx(0.999)
    assert beta2_at(0, 100, 0.95) < beta2_at(50, 100, 0.95) < beta2_at(99, 100, 0.95)


# ---------------------------------------------------------------------------------------------- samplers


def _oracle(diffusion: GaussianDiffusion, x0: torch.Tensor):
    """The exact epsilon for a known target: eps = (x_t - sqrt(ab_t) x0) / sqrt(1 - ab_t), zero variance value."""
    ab = diffusion.train_schedule.alphas_cumprod

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = ab[t].to(x_t.dtype)[:, None]
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return torch.cat([eps, -torch.ones_like(eps)], dim=1)  # v = -1: the posterior variance

    return model


@pytest.mark.parametrize("steps", [4, 16, 100])
def test_ddim_with_an_epsilon_oracle_returns_the_target(steps: int) -> None:
    diffusion = GaussianDiffusion()
    x0 = torch.randn(5, 8, dtype=torch.float64)
    schedule = diffusion.sampling_schedule(steps)
    out = diffusion.sample(_oracle(diffusion, x0), torch.randn(5, 8, dtype=torch.float64), schedule, "ddim")
    assert torch.allclose(out, x0, atol=1e-4)


def test_ddpm_with_an_epsilon_oracle_ends_within_its_final_step_noise() -> None:
    diffusion = GaussianDiffusion()
    torch.manual_seed(0)
    x0 = torch.randn(200, 8, dtype=torch.float64)
    schedule = diffusion.sampling_schedule(100)
    out = diffusion.sample(_oracle(diffusion, x0), torch.randn(200, 8, dtype=torch.float64), schedule, "ddpm")
    # the last noisy step (index 1, t=10) adds posterior-variance noise; with the oracle the mean is exact,
    # so the error is that noise carried through the final deterministic step
    error = (out - x0).abs().max().item()
    sd_last = math.sqrt(float(schedule.posterior_variance[1]))
    assert error < 6 * sd_last * float(schedule.posterior_mean_coef2[0] + 1)
    assert torch.isfinite(out).all()


def test_temperature_zero_ddpm_is_the_posterior_mean_chain() -> None:
    diffusion = GaussianDiffusion()
    x0 = torch.randn(3, 4, dtype=torch.float64)
    schedule = diffusion.sampling_schedule(16)
    out = diffusion.sample(_oracle(diffusion, x0), torch.randn(3, 4, dtype=torch.float64), schedule, "ddpm",
                           temperature=0.0)
    assert torch.allclose(out, x0, atol=1e-4)


# ---------------------------------------------------------------------------------------------- learning


def test_head_learns_a_conditional_distribution() -> None:
    """SYNTHETIC: target | c ~ N(A c, diag(sigma^2)); after training, DDPM samples match mean and sd per dim."""
    torch.manual_seed(0)
    dims, cond_dim = 4, 2
    a = torch.tensor([[1.0, -0.5], [0.0, 1.0], [0.5, 0.5], [-1.0, 0.0]])
    sigma = torch.tensor([0.1, 0.2, 0.3, 0.15])
    head = DiffusionHead(token_dim=dims, cond_dim=cond_dim, num_tokens=1, width=64, depth=2)
    diffusion = GaussianDiffusion()
    optimizer = torch.optim.AdamW(head.parameters(), lr=2e-3, weight_decay=0.0)
    for _ in range(1500):
        c = torch.randn(256, cond_dim)
        target = c @ a.T + sigma * torch.randn(256, dims)
        idx = torch.zeros(256, dtype=torch.long)
        loss = diffusion.training_losses(lambda x, t, c=c, idx=idx: head(x, t, c, idx), target,
                                         torch.randint(0, 1000, (256,)))["loss"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    c = torch.tensor([[0.5, -1.0]]).repeat(2000, 1)
    idx = torch.zeros(2000, dtype=torch.long)
    schedule = diffusion.sampling_schedule(50, start_step=950)
    with torch.no_grad():
        samples = diffusion.sample(lambda x, t: head(x, t, c, idx), torch.randn(2000, dims), schedule, "ddpm")
    mean = (c[:1] @ a.T)[0]
    assert torch.allclose(samples.mean(0), mean, atol=0.1), (samples.mean(0), mean)
    assert torch.allclose(samples.std(0), sigma, atol=0.08, rtol=0.5), (samples.std(0), sigma)


def test_schedule_tables_are_consistent() -> None:
    s = Schedule(torch.from_numpy(cosine_betas(50)), torch.arange(50))
    assert torch.allclose(s.sqrt_recip_alphas_cumprod * s.sqrt_alphas_cumprod, torch.ones(50, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------- fast prediction


@pytest.mark.parametrize("start", [999, 600])
def test_one_step_estimate_equals_ddim_with_one_step_from_the_same_start(start: int) -> None:
    torch.manual_seed(0)
    head = DiffusionHead(token_dim=4, cond_dim=3, num_tokens=1, width=32, depth=2)
    for p in head.parameters():  # a non-trivial head (the DiT init zeroes the output layers)
        torch.nn.init.normal_(p, std=0.3)
    diffusion = GaussianDiffusion()
    c, idx = torch.randn(6, 3), torch.zeros(6, dtype=torch.long)

    def model(x, t):
        return head.forward_with_cfg(x, t, c, idx, 2.0)

    zeros = torch.zeros(6, 4)
    with torch.no_grad():
        ddim = diffusion.sample(model, zeros, diffusion.sampling_schedule(1, start_step=start), "ddim")
        one_step = one_step_x0(diffusion, model, zeros, start)
    assert torch.allclose(one_step, ddim, rtol=1e-5, atol=1e-5)
    assert one_step.abs().sum() > 0


def test_distilled_predictor_reproduces_linear_targets_and_reports_its_residual() -> None:
    torch.manual_seed(0)
    z = torch.randn(300, 5, dtype=torch.float64)
    weight, bias = torch.randn(5, 7, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    y = z @ weight + bias
    fitted = fit_linear_map(z, y, ridge=1e-10)
    # stated tolerance: the fitting targets within 1e-6 when they are a linear map of the condition
    assert torch.allclose(apply_linear_map(z, fitted), y, atol=1e-6)
    assert torch.allclose(fitted[0], weight, atol=1e-6) and torch.allclose(fitted[1], bias, atol=1e-6)
    noisy = fit_linear_map(z, y + 0.1 * torch.randn_like(y), ridge=1e-4)
    assert (apply_linear_map(z, noisy) - y).abs().max() < 0.1


def test_distilled_map_fitted_on_shards_equals_the_fit_on_their_union() -> None:
    """Under data-parallel training each rank fits from its shard's statistics summed over ranks: the map must
    be the one fitted on all rows (here two shards of unequal size, the sum standing for the all-reduce)."""
    torch.manual_seed(1)
    z, y = torch.randn(301, 4, dtype=torch.float64), torch.randn(301, 3, dtype=torch.float64)
    other = linear_map_statistics(z[200:], y[200:])
    sharded = fit_linear_map(z[:200], y[:200], ridge=1e-3, reduce=lambda stats: stats + other)
    whole = fit_linear_map(z, y, ridge=1e-3)
    # the closed form on centred data, written out: (Zc^T Zc + ridge n I)^-1 Zc^T Yc
    zc, yc = z - z.mean(0), y - y.mean(0)
    closed = torch.linalg.solve(zc.T @ zc + 1e-3 * len(z) * torch.eye(4, dtype=z.dtype), zc.T @ yc)
    for a, b in zip(sharded, whole, strict=True):
        assert torch.allclose(a, b, atol=1e-10)
    assert torch.allclose(whole[0], closed, atol=1e-10)
    assert torch.allclose(whole[1], y.mean(0) - z.mean(0) @ closed, atol=1e-10)


def test_flow_sampler_with_an_exact_velocity_oracle_reaches_its_target() -> None:
    flow = RectifiedFlow()
    x0 = torch.randn(5, 8, dtype=torch.float64)

    def oracle(x, t):  # on the straight path through x0, v = (x_t - x0) / t
        return (x - x0) / (t[:, None] / flow.time_scale)

    for steps in (1, 2, 8):
        out = flow.sample(oracle, torch.randn(5, 8, dtype=torch.float64), steps)
        assert torch.allclose(out, x0, atol=1e-10)


def test_flow_loss_is_the_velocity_mse_on_the_straight_path() -> None:
    flow = RectifiedFlow()
    x0, noise = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    seen = {}

    def model(x, tt):
        seen["x"], seen["t"] = x, tt
        return torch.zeros_like(x)

    loss = flow.training_losses(model, x0, t, noise)
    assert torch.allclose(seen["x"], (1 - t[:, None]) * x0 + t[:, None] * noise)
    assert torch.allclose(seen["t"], t * 1000)
    assert torch.allclose(loss["loss"], ((noise - x0) ** 2).mean(dim=1))


def test_gendd_variants_validate_and_run_from_one_trained_head() -> None:
    from kdbench.methods.gendd.method import GenDD
    from kdbench.models import create_network

    torch.manual_seed(0)
    student = create_network("kdb_cnn_nano", num_classes=4, in_chans=1)
    teacher = create_network("kdb_cnn_base", num_classes=4, in_chans=1).eval()
    sweep = ({"sampler": "x0"}, {"sampler": "ddim", "steps": 2, "cfg": 1.0}, {"sampler": "distilled", "ridge": 1e-3})
    method = GenDD(student, teacher, num_classes=4, width=32, mul=2, sample_steps=4, num_samples=2,
                   warm_start_epochs=0, eval_sweep=sweep)
    x = torch.randn(10, 1, 8, 8)
    method.after_training(student, lambda: iter([(x[:6], None), (x[6:], None)]))
    assert method.distill_fit["items"] == 10 and method.distill_fit["relative_residual"] < 1
    variants = method.extra_evaluations()
    assert list(variants) == ["x0-Kx1-cfgdefault-tdefault", "ddim-2x1-cfg1.0-tdefault", "distilled"]
    out = student(x)
    for predict in variants.values():
        assert predict(x, out).shape == (10, 4)
    record = method.extras()["diagnostics"]
    assert record["sweep_settings"]["x0-Kx1-cfgdefault-tdefault"] == {"sampler": "x0", "steps": 1, "samples": 1,
                                                                      "cfg": 2.0, "start_step": 999}
    with pytest.raises(ValueError, match="does not sample a diffusion head"):
        GenDD(student, teacher, num_classes=4, width=32, eval_sweep=({"sampler": "euler"},))
    with pytest.raises(ValueError, match="does not sample a flow head"):
        GenDD(student, teacher, num_classes=4, width=32, objective="flow", sampler="ddpm")
    flow = GenDD(student, teacher, num_classes=4, width=32, mul=2, objective="flow", sample_steps=2,
                 warm_start_epochs=0)
    assert flow.sampling.kind == "euler" and flow.head.out_channels == 64
    assert set(flow.losses(_batch(x), student(x), teacher(x))) == {"flow"}


def _batch(x):
    from kdbench.method import Batch

    return Batch(x, None, torch.arange(len(x)))


def test_gendd_names_moved_to_the_predictor_module_still_import_from_method() -> None:
    """The prediction side lives in methods/gendd/predictor.py; its public names are re-exported by method.py."""
    import kdbench.methods.gendd.method as method
    import kdbench.methods.gendd.predictor as predictor
    from kdbench.methods.gendd import GenDD

    for name in ("Sampling", "SAMPLERS", "PREDICTORS", "sweep_name", "one_step_x0", "linear_map_statistics",
                 "fit_linear_map", "apply_linear_map"):
        assert getattr(method, name) is getattr(predictor, name)
    assert GenDD is method.GenDD and issubclass(GenDD, predictor.GenDDPredictor)
