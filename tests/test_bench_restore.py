"""bench/restore_finetune.py: the trainable copy of dlib's network and the degradations."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import restore_finetune as rf  # noqa: E402

from facecluster.embed.dlib_net import load_dlib_resnet  # noqa: E402


def test_student_starts_as_the_shipped_network_and_trains_only_its_first_layers():
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 150, 150)).astype(np.float32))
    with torch.inference_mode():
        ref = load_dlib_resnet()(x.clone())
    s = rf._student(3)
    with torch.no_grad():
        got = s(x)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    trained = {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("blocks") else "")
               for n, p in s.named_parameters() if p.requires_grad}
    assert trained == {"stem", "blocks.0", "blocks.1", "blocks.2"}


def test_degrade_is_a_pure_function_of_the_generator():
    chip = np.random.default_rng(1).integers(0, 256, (150, 150, 3), np.uint8)
    a = [rf.degrade(chip, np.random.default_rng(7), light=True) for _ in range(2)]
    assert a[0].shape == (150, 150, 3) and a[0].dtype == np.uint8
    np.testing.assert_array_equal(a[0], a[1])
    plain = [rf.degrade(chip, np.random.default_rng(s)).tobytes() for s in range(5)]
    assert plain == [rf.degrade(chip, np.random.default_rng(s)).tobytes() for s in range(5)]
    assert len(set(plain)) == 5  # each draw its own degradation
