import pytest
import torch
import torch.nn.functional as F

from vlp.objectives.token_loss import token_cross_entropy


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_equals_pytorch_cross_entropy(smoothing: float) -> None:
    torch.manual_seed(0)
    logits = torch.randn(7, 50, requires_grad=True)
    targets = torch.randint(0, 50, (7,))
    result = token_cross_entropy(logits, targets, smoothing)
    reference = F.cross_entropy(logits, targets, label_smoothing=smoothing)
    # the same sums in another order: float32 rounding only
    torch.testing.assert_close(result.loss, reference, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(result.nll, F.cross_entropy(logits, targets).detach(), rtol=1e-6, atol=1e-6)
    (grad,) = torch.autograd.grad(result.loss, logits)
    (expected,) = torch.autograd.grad(reference, logits)
    torch.testing.assert_close(grad, expected, rtol=1e-6, atol=1e-7)


def test_bf16_logits_give_the_loss_of_their_float32_upcast_and_their_own_argmax() -> None:
    torch.manual_seed(1)
    logits = torch.randn(64, 300).bfloat16()
    logits[0, 3] = logits[0, 10] = 9.0  # a tie: argmax takes the first index
    targets = torch.randint(0, 300, (64,))
    targets[0] = 10
    targets[1:20] = logits[1:20].argmax(-1)
    result = token_cross_entropy(logits, targets)
    assert result.loss.dtype == torch.float32
    # nll_loss's mean and Tensor.mean may sum the 64 rows in different orders: float32 rounding only
    torch.testing.assert_close(result.loss, F.cross_entropy(logits.float(), targets), rtol=1e-6, atol=1e-6)
    expected = (logits.argmax(-1) == targets).float().mean()
    assert torch.equal(result.accuracy, expected)
    assert 19 / 64 <= float(result.accuracy) < 1.0 and not bool(logits[0].argmax() == 10)
