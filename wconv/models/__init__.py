"""The models of the paper's experiments (Sect. 4), built with plain torch convs and weighted on request.

    >>> from wconv import models
    >>> net = models.build("resnet56", alpha=1.15)          # CIFAR-100 ResNet-56, every 3×3 conv weighted
    >>> den = models.build("nafnet", kernel_size=5, alpha=(0.5, 0.9))

See docs/models.md for what each model follows and which of its convs are weighted.
"""

from wconv.models.registry import available, build, check_options, init_weights, options, task_of
from wconv.models import cifar, denoise, efficientnet, gmlp, small, snn  # noqa: F401  (they register the models)

__all__ = ["available", "build", "check_options", "init_weights", "options", "task_of"]
