"""Caption keys: a 64-bit hash of a caption's token-id row, computed on the host.

Keys join the three places a caption meets: the training batch, the online encoder's cache and the
precomputed table. They are computed from the loader's CPU tensor, never from a device tensor: a
``.cpu()`` on a CUDA tensor would make the host wait for the forward pass at every step.
"""
import hashlib

import numpy as np
import torch


class DeviceTokensError(ValueError):
    """Token ids on an accelerator: reading them would synchronise the host with the device."""


def token_rows(tokens) -> np.ndarray:
    """Token ids ``[B, ctx]`` as a contiguous int32 numpy array; refuses tensors that live on a device."""
    if isinstance(tokens, np.ndarray):
        return np.ascontiguousarray(tokens.astype(np.int32, copy=False))
    tokens = torch.as_tensor(tokens)
    if tokens.device.type != "cpu":
        raise DeviceTokensError(
            f"caption token ids are on {tokens.device}; keys are computed from the loader's CPU tensor "
            "(the patched training loop passes it under registry.BATCH_TOKENS) so that no step waits "
            "for the device")
    return np.ascontiguousarray(tokens.numpy().astype(np.int32, copy=False))


def token_keys(tokens) -> np.ndarray:
    """uint64 keys of token-id rows (blake2b of the int32 ids); identical captions share a key."""
    rows = token_rows(tokens)
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little") for row in rows),
        dtype=np.uint64, count=len(rows),
    )
