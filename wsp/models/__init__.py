"""Backbones (timm ResNeXt, registered variants), losses, the classifier LightningModule, the linear probe."""

from wsp.models import backbones as _register_variants  # noqa: F401  (registers wsp's timm variants)
