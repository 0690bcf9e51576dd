"""The methods give the same loss on the Triton loss head (interpreter on CPU) as on the PyTorch reference."""

import copy

import pytest
import torch
import torch.nn.functional as F

from tests.methods.methods_helpers import make_batch, small_config, state_at
from vicc_fast.config import KernelBackend, MethodName
from vicc_fast.methods import build_method

pytest.importorskip("triton")


@pytest.mark.parametrize("name", [MethodName.vicc, MethodName.goca])
def test_triton_backend_matches_torch(name):
    torch.manual_seed(0)
    cfg = small_config(name=name)
    cfg.method.goca.proto_reg_init_steps = 5
    m_torch = build_method(cfg)
    phase = [p for p in m_torch.phases() if p.frozen_stream is not None or name is MethodName.goca][0]
    m_torch.train()
    m_torch.setup_phase(phase)
    m_torch.queue.queue.copy_(F.normalize(torch.randn_like(m_torch.queue.queue), dim=-1))
    m_torch.queue.filled = m_torch.queue.length  # a full queue: its rows join the assignment
    m_tri = copy.deepcopy(m_torch)
    m_tri.backend = KernelBackend.triton.value
    m_tri.cfg = copy.deepcopy(cfg)
    m_tri.cfg.kernels.backend = KernelBackend.triton
    batch = make_batch(B=4)
    state = state_at(phase, phase.queue_start_epoch)
    a = m_torch.loss(batch, state)["loss"]
    b = m_tri.loss(batch, state)["loss"]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(m_torch.queue.queue, m_tri.queue.queue)  # enqueue through either backend
    assert m_tri.queue.ptr == m_torch.queue.ptr
