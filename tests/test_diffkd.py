"""Golden values and analytic checks for DiffKD (methods/diffkd.py).

The golden numbers were computed once in float64 with numpy straight from the formulas (linear betas
``linspace(1e-4, 0.02, 1000)`` and their cumulative product, the DDIM update, the adaptive-noise mix, the forward
process, the epsilon MSE, the 1x1-conv autoencoder with an eval-mode BatchNorm, the temperature KL),
independently of the implementation, and are changed only deliberately. The implementation was also compared
with the authors' modules (hunto/DiffKD) on equal weights and random draws outside this repository: equal to
float32 rounding.
"""

from __future__ import annotations

import pytest
import torch

from kdbench.method import Batch, discover_methods, hyperparameters
from kdbench.methods.diffkd import (
    AutoEncoder,
    DiffKD,
    DiffusionBranch,
    NoiseAdapter,
    adapt_noise,
    compress,
    ddim_denoise,
    ddim_step,
    ddim_timesteps,
    diffusion_loss,
    feature_loss,
    linear_alphas_cumprod,
    q_sample,
)
from kdbench.methods.kd import kd_loss
from kdbench.models import create_network

F64 = torch.float64
X = torch.tensor([[0.5, -1.2, 0.3], [2.0, 0.1, -0.7]], dtype=F64)
E = torch.tensor([[0.1, 0.4, -0.9], [-0.3, 1.1, 0.2]], dtype=F64)
FMAP = torch.tensor([[[[0.5, 2.0]], [[-1.2, 0.1]], [[0.3, -0.7]]],
                     [[[0.1, -0.3]], [[0.4, 1.1]], [[-0.9, 0.2]]]], dtype=F64)  # (B=2, C=3, H=1, W=2)

GOLDEN_ALPHA_BAR = {0: 0.9999, 1: 0.9997800920720721, 100: 0.8951415908975365, 400: 0.19357200966664662,
                    999: 4.035829765375676e-05}
GOLDEN_DDIM_STEP = [[0.5665355453733298, -1.653041406959765, 0.7799554743196577],  # a_t 0.6 -> a_prev 0.9
                    [2.5870004137505718, -0.38173130640795117, -0.9489951906190413]]
GOLDEN_ADAPT = [[0.2, 0.0, -0.6], [1.54, 0.3, -0.52]]  # gamma = (0.25, 0.8)
GOLDEN_Q_SAMPLE = [[0.5009749993749687, -1.1959399984999253, 0.29098499962498175],  # t = (0, 400)
                   [0.6105323760423493, 1.0318115124673437, -0.12837506264782983]]
GOLDEN_DIFFUSION = 0.5290901666906241  # eps_hat(x, t) = 0.5 x + 0.001 t, t = (0, 400)
GOLDEN_FEATURE = 1.8766666666666667    # mean (X - E)^2
GOLDEN_AE_HIDDEN = [[[[0.7287822627004412, -0.5939377893429831]], [[0.01856841077168428, 1.87002112459821]]],
                    [[[-1.3091864100775756, -0.6527253472115798]], [[0.7028009354467046, 0.18962654194043937]]]]
GOLDEN_AE_REC = 1.884158221137988
GOLDEN_KL = {1.0: 0.8279007072132595, 2.0: 0.9040074243923555}  # tau^2 KL(softmax(E/tau) || softmax(X/tau))


# ---------------------------------------------------------------------------------------------- golden values


def test_linear_schedule_golden() -> None:
    alphas = linear_alphas_cumprod(1000)
    assert alphas.dtype == F64 and alphas.shape == (1000,)
    for t, value in GOLDEN_ALPHA_BAR.items():
        assert alphas[t].item() == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize(("steps", "expected"), [(5, ([400, 300, 200, 100, 0], 100)), (4, ([375, 250, 125, 0], 125)),
                                                 (1, ([0], 500)), (500, (list(range(499, -1, -1)), 1))])
def test_ddim_timesteps_are_the_official_second_half(steps: int, expected: tuple[list[int], int]) -> None:
    assert ddim_timesteps(1000, steps) == expected


@pytest.mark.parametrize("steps", [0, 501])
def test_ddim_timesteps_refuse_impossible_counts(steps: int) -> None:
    with pytest.raises(ValueError, match="inference_steps"):
        ddim_timesteps(1000, steps)


def test_ddim_step_golden() -> None:
    torch.testing.assert_close(ddim_step(X, E, 0.6, 0.9), torch.tensor(GOLDEN_DDIM_STEP, dtype=F64),
                               rtol=1e-12, atol=1e-12)


def test_adapt_noise_golden() -> None:
    out = adapt_noise(X, E, torch.tensor([0.25, 0.8], dtype=F64))
    torch.testing.assert_close(out, torch.tensor(GOLDEN_ADAPT, dtype=F64), rtol=1e-12, atol=1e-12)


def test_q_sample_golden() -> None:
    out = q_sample(X, E, torch.tensor([0, 400]), linear_alphas_cumprod())
    torch.testing.assert_close(out, torch.tensor(GOLDEN_Q_SAMPLE, dtype=F64), rtol=1e-12, atol=1e-12)


def test_diffusion_loss_golden() -> None:
    def eps_hat(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * x + 0.001 * t[:, None].to(x)

    loss = diffusion_loss(eps_hat, X, E, torch.tensor([0, 400]), linear_alphas_cumprod())
    assert loss.item() == pytest.approx(GOLDEN_DIFFUSION, rel=1e-12)


def test_feature_loss_golden() -> None:
    assert feature_loss(X, E).item() == pytest.approx(GOLDEN_FEATURE, rel=1e-12)


def _linear_ae() -> AutoEncoder:
    ae = AutoEncoder(3, 2).double().eval()
    with torch.no_grad():
        ae.encoder[0].weight.copy_(torch.tensor([[0.2, -0.5, 1.0], [0.7, 0.3, -0.4]], dtype=F64)[:, :, None, None])
        ae.encoder[0].bias.copy_(torch.tensor([0.1, -0.2], dtype=F64))
        bn = ae.encoder[1]
        bn.running_mean.copy_(torch.tensor([0.05, -0.1], dtype=F64))
        bn.running_var.copy_(torch.tensor([1.5, 0.8], dtype=F64))
        bn.weight.copy_(torch.tensor([1.2, 0.9], dtype=F64))
        bn.bias.copy_(torch.tensor([-0.3, 0.25], dtype=F64))
        ae.decoder.weight.copy_(torch.tensor([[0.6, -0.2], [0.1, 0.9], [-0.8, 0.4]], dtype=F64)[:, :, None, None])
        ae.decoder.bias.copy_(torch.tensor([0.0, 0.05, -0.1], dtype=F64))
    return ae


def test_autoencoder_golden() -> None:
    hidden, rec = compress(_linear_ae(), FMAP)
    torch.testing.assert_close(hidden, torch.tensor(GOLDEN_AE_HIDDEN, dtype=F64), rtol=1e-12, atol=1e-12)
    assert rec.item() == pytest.approx(GOLDEN_AE_REC, rel=1e-12)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_logit_term_golden(tau: float) -> None:
    # the logit branch's term is kdbench's kd_loss on the refined logits (official KLDivergence, batchmean, tau^2)
    assert kd_loss(X, E, tau).item() == pytest.approx(GOLDEN_KL[tau], rel=1e-12)


# ---------------------------------------------------------------------------------------------- analytic checks


def test_ddim_step_at_alpha_one_returns_its_input() -> None:
    torch.testing.assert_close(ddim_step(X, E, 1.0, 1.0), X, rtol=0, atol=1e-15)


def test_ddim_step_with_the_true_noise_recovers_the_clean_sample() -> None:
    alphas = linear_alphas_cumprod()
    x_t = q_sample(X, E, torch.tensor([400, 400]), alphas)
    torch.testing.assert_close(ddim_step(x_t, E, float(alphas[400]), 1.0), X, rtol=0, atol=1e-12)


def test_ddim_chain_with_an_oracle_denoiser_lands_on_the_clean_sample() -> None:
    # deterministic DDIM keeps x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps when the model returns eps: the official
    # five-step chain from t = 400 ends exactly at x0
    alphas = linear_alphas_cumprod()
    timesteps, stride = ddim_timesteps(1000, 5)
    x_start = q_sample(X, E, torch.full((2,), timesteps[0]), alphas)
    out = ddim_denoise(lambda x, t: E, x_start, alphas, timesteps, stride)
    torch.testing.assert_close(out, X, rtol=0, atol=1e-12)


def test_zero_noise_path_returns_the_feature() -> None:
    # gamma = 1: no noise is mixed in; alpha_bar = 1 everywhere: the chain is the identity
    noise = torch.randn_like(X)
    torch.testing.assert_close(adapt_noise(X, noise, torch.ones(2, dtype=F64)), X, rtol=0, atol=0)
    ones = torch.ones(1000, dtype=F64)
    out = ddim_denoise(lambda x, t: torch.randn_like(x), X, ones, *ddim_timesteps(1000, 5))
    torch.testing.assert_close(out, X, rtol=0, atol=1e-15)


def test_feature_loss_zero_when_denoised_equals_teacher() -> None:
    assert feature_loss(E.clone(), E).item() == 0.0


def test_identity_autoencoder_reconstructs_exactly() -> None:
    ae = AutoEncoder(3, 3).double().eval()
    with torch.no_grad():
        ae.encoder[0].weight.copy_(torch.eye(3)[:, :, None, None])
        ae.encoder[0].bias.zero_()
        ae.encoder[1].running_var.fill_(1 - ae.encoder[1].eps)  # the eval BN is then the identity
        ae.decoder.weight.copy_(torch.eye(3)[:, :, None, None])
        ae.decoder.bias.zero_()
    hidden, rec = compress(ae, FMAP)
    torch.testing.assert_close(hidden, FMAP, rtol=0, atol=1e-15)
    assert rec.item() == pytest.approx(0.0, abs=1e-28)


@pytest.mark.parametrize(("kernel", "shape"), [(3, (4, 16, 3, 3)), (1, (4, 16, 1, 1))])
def test_noise_adapter_gives_one_weight_in_the_unit_interval_per_item(kernel: int, shape: tuple[int, ...]) -> None:
    gamma = NoiseAdapter(16, kernel)(torch.randn(shape))
    assert gamma.shape == (4,) and bool(((gamma > 0) & (gamma < 1)).all())


def test_branch_is_the_composition_of_its_pieces() -> None:
    torch.manual_seed(0)
    branch = DiffusionBranch(6, 12, kernel_size=3, ae_channels=8).double()
    s, t = torch.randn(4, 6, 3, 3, dtype=F64), torch.randn(4, 12, 3, 3, dtype=F64)
    noise, train_noise = torch.randn(4, 8, 3, 3, dtype=F64), torch.randn(4, 8, 3, 3, dtype=F64)
    train_t = torch.tensor([0, 17, 500, 999])
    out = branch(s, t, noise=noise, train_noise=train_noise, train_t=train_t)
    # the same random draws in the official order (start noise, training noise, training timesteps) from the seed
    torch.manual_seed(5)
    seeded = branch(s, t)
    torch.manual_seed(5)
    draws = torch.randn(4, 8, 3, 3, dtype=F64), torch.randn(4, 8, 3, 3, dtype=F64), torch.randint(0, 1000, (4,))
    again = branch(s, t, noise=draws[0], train_noise=draws[1], train_t=draws[2])
    torch.testing.assert_close(seeded.refined, again.refined, rtol=0, atol=0)
    # by hand
    target, rec = compress(branch.autoencoder, t)
    x = branch.project(s)
    gamma = branch.noise_adapter(x)
    x = ddim_denoise(branch.denoiser, adapt_noise(x, noise, gamma), branch.alphas_cumprod, [400, 300, 200, 100, 0],
                     100)
    torch.testing.assert_close(out.refined, branch.out_proj(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.target, target)
    torch.testing.assert_close(out.reconstruction, rec)
    torch.testing.assert_close(out.diffusion, diffusion_loss(branch.denoiser, target, train_noise, train_t,
                                                             branch.alphas_cumprod))


# ---------------------------------------------------------------------------------------------- the method


def _pair(**kwargs: object) -> tuple:
    torch.manual_seed(0)
    student = create_network("kdb_cnn_nano", num_classes=4, in_chans=1)
    teacher = create_network("kdb_cnn_small", num_classes=4, in_chans=1).eval().requires_grad_(False)
    return student, teacher, DiffKD(student, teacher, num_classes=4, **kwargs)


def _losses(student, teacher, method, labeled: bool = True) -> dict[str, torch.Tensor]:
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    batch = Batch(x=x, y=torch.arange(8) % 4 if labeled else None, index=torch.arange(8))
    return method.losses(batch, student(x, taps=method.needs.student_taps), teacher(x, taps=method.needs.teacher_taps))


def test_registered_with_the_official_defaults() -> None:
    assert discover_methods().get("diffkd") is DiffKD
    defaults = {name: p.default for name, p in hyperparameters(DiffKD).items()}
    assert defaults == {"weight": 1.0, "ce": 1.0, "tau": 1.0, "use_ae": True, "ae_channels": 1024, "kernel_size": 3,
                        "inference_steps": 5, "num_train_timesteps": 1000, "logit_branch": True, "stage": -1}


def test_terms_and_taps() -> None:
    student, teacher, method = _pair(ae_channels=16)
    assert method.needs.student_taps == ("stage2",) and method.needs.teacher_taps == ("stage2",)
    assert not method.needs.labels
    terms = _losses(student, teacher, method)
    assert set(terms) == {"feature_kd", "feature_diffusion", "feature_ae", "logit_kd", "logit_diffusion", "ce"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in terms.values())
    assert "ce" not in _losses(student, teacher, method, labeled=False)
    student, teacher, method = _pair(use_ae=False, logit_branch=False)
    assert set(_losses(student, teacher, method)) == {"feature_kd", "feature_diffusion", "ce"}
    assert method.feature_branch.autoencoder is None and method.logit_branch is None


def test_weight_scales_every_diffkd_term_but_not_ce() -> None:
    student, teacher, method = _pair(ae_channels=16)
    torch.manual_seed(3)
    base = _losses(student, teacher, method)
    method.weight = 2.0
    torch.manual_seed(3)
    doubled = _losses(student, teacher, method)
    for name, value in base.items():
        factor = 1.0 if name == "ce" else 2.0
        assert doubled[name].item() == pytest.approx(factor * value.item(), rel=1e-5)


def test_ae_channels_default_and_half_of_the_teacher() -> None:
    assert _pair()[2].feature_branch.autoencoder.encoder[0].out_channels == 1024
    assert _pair(ae_channels=None)[2].feature_branch.autoencoder.encoder[0].out_channels == 32  # 64 // 2


def test_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="kernel_size"):
        _pair(kernel_size=5)
    with pytest.raises(ValueError, match="at least 8"):
        _pair(ae_channels=4)
    with pytest.raises(ValueError, match="tau"):
        _pair(tau=0.0)


def test_predict_is_the_student_logits() -> None:
    student, _, method = _pair(ae_channels=16)
    out = student(torch.randn(2, 1, 8, 8))
    assert method.predict(torch.zeros(2, 1, 8, 8), out) is out.logits


def test_gradients_reach_the_student_and_every_module_never_the_teacher() -> None:
    student, teacher, method = _pair(ae_channels=16)
    terms = _losses(student, teacher, method)
    sum(terms.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    for name, p in method.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in teacher.parameters())


def test_what_each_term_trains() -> None:
    # the feature term trains the student through the whole chain (projection, noise adapter, denoiser, output
    # projection) but not the autoencoder: its latent is a detached target, the reconstruction alone trains it
    student, teacher, method = _pair(ae_channels=16)
    terms = _losses(student, teacher, method)
    terms["feature_kd"].backward(retain_graph=True)
    branch = method.feature_branch
    for module in (branch.project, branch.noise_adapter, branch.denoiser, branch.out_proj):
        assert all(p.grad is not None for p in module.parameters())
    assert all(p.grad is None for p in branch.autoencoder.parameters())
    assert student.model.stages[-1][1].weight.grad is not None
    method.zero_grad(set_to_none=True)
    student.zero_grad(set_to_none=True)
    terms["feature_diffusion"].backward(retain_graph=True)
    assert all(p.grad is None for p in student.parameters())
    assert all(p.grad is None for p in branch.autoencoder.parameters())
    assert all(p.grad is not None for p in branch.denoiser.parameters())
    method.zero_grad(set_to_none=True)
    terms["feature_ae"].backward()
    assert all(p.grad is not None for p in branch.autoencoder.parameters())
    assert all(p.grad is None for p in student.parameters())
