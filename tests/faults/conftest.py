"""Fault scenarios: one workload of real events and its offline reference, shared by all."""
from __future__ import annotations

import pytest
from faultkit import MAX_TOKENS, make_workload, reference_states


@pytest.fixture(scope="session")
def state_encoder(model_dir):
    """The encoder the fault workers run (FP32, short texts: see faultkit), for the reference."""
    from inference.encoder import Encoder

    return Encoder(model_dir, variant="fp32", device="cpu", max_tokens=MAX_TOKENS)


@pytest.fixture(scope="session")
def workload(mi_dataset):
    """822 real events of 200 users on the 60 most reviewed items; every 10th a review with text."""
    return make_workload(mi_dataset, users=200)


@pytest.fixture(scope="session")
def reference(state_encoder, workload):
    """Each user's state after one uninterrupted pass over ``workload`` (the equality target)."""
    return reference_states(state_encoder, workload)
