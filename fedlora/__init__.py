"""fedlora: private federated fine-tuning of LoRA adapters.

The shared core imported by every role (``server``, ``clients``, ``strategies``): models and
LoRA, adapter serialisation, site data, typed configuration and the run directory.
"""

__version__ = "0.1.0"
