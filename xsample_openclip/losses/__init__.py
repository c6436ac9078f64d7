"""The X-Sample losses (pure math, no I/O): ``XSampleLoss`` (softmax, ``--loss xsample``) and
``XSampleSigLipLoss`` (sigmoid, ``--loss xsample-siglip``), with their target graphs and fused kernels."""
from .sigmoid import XSampleSigLipLoss
from .softmax import XSampleLoss

__all__ = ["XSampleLoss", "XSampleSigLipLoss"]
