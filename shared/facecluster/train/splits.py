"""The project-wide identity split between training and validation.

Every trained method (GCN-V/E, Ada-NETS) trains only on *training* identities and reports
quality and picks thresholds on *validation* identities, so numbers are comparable across
methods and no method has seen the people it is scored on.

Rule: an identity is held out when ``sha256("facecluster-split-v3:" + identity)`` (first 8
bytes, big-endian, as a fraction of 2**64) is below ``VALIDATION_FRACTION`` = 0.3. The rule
depends on the identity *name only*, not on the set: glint18's 18 people also appear in LFW
under the same folder names, so a person is held out in both sets or in neither (no person
leaks from one set into the other's validation part).

What it gives (counted on ``../shared/data``):

* LFW: 1,760 of 5,749 identities held out (3,919 images; 527 of them with two or more images,
  2,686 images). George_W_Bush (530 images) is a training identity.
* glint18: 5 of 18 held out (Jennifer_Lopez, Keanu_Reeves, Simon_Cowell, Tom_Hanks,
  Victoria_Beckham; 1,650 images), 13 for training (5,619 images).
* ORL: s1, s9, s12, s14, s17, s20, s26, s28, s39 held out.

The salt "v3" was chosen among v1–v3 (all at 30 %) because v1 held out 10 of the 18 glint18
people and v2 only 2; v3 keeps about 30 % of both sets out. Do not change it: shipped weights
and the recorded validation numbers depend on it.
"""

from __future__ import annotations

import hashlib

import numpy as np

SALT = "facecluster-split-v3"
VALIDATION_FRACTION = 0.3


def identity_hash(identity: str) -> float:
    """Deterministic value in [0, 1) for an identity name."""
    digest = hashlib.sha256(f"{SALT}:{identity}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def is_validation_identity(set_name: str, identity: str) -> bool:
    """True when ``identity`` (a folder name of ``../shared/data/<set_name>``) is held out.

    ``set_name`` ("lfw", "glint18", "orl", ...) is accepted for clarity and future per-set
    rules; today the decision depends on the identity name only (see the module docstring)."""
    del set_name  # same person, same decision, whatever the set
    return identity_hash(str(identity)) < VALIDATION_FRACTION


def validation_mask(set_name: str, names: np.ndarray) -> np.ndarray:
    """(N,) bool: which rows (given their identity ``names``, (N,) str) are validation rows."""
    names = np.asarray(names)
    uniq, inv = np.unique(names, return_inverse=True)
    held = np.array([is_validation_identity(set_name, str(u)) for u in uniq], dtype=bool)
    return held[inv] if len(names) else np.zeros(0, bool)


__all__ = ["SALT", "VALIDATION_FRACTION", "identity_hash", "is_validation_identity", "validation_mask"]
