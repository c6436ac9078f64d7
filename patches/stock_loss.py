"""``--loss clip`` (the default): OpenCLIP 3.3.0's own loss selection, unchanged.

``create_loss`` picks ClipLoss, or SigLIP/CoCa/distillation from their own flags, exactly as stock
OpenCLIP does; registering it keeps the registry the single way a loss is chosen.
"""


class ClipLossPlugin:
    """Entry point ``clip`` of the ``open_clip_train.losses`` group."""

    name = "clip"

    @staticmethod
    def add_arguments(parser):
        """Stock losses are configured by OpenCLIP's own flags."""

    @staticmethod
    def validate(args):
        return []

    @staticmethod
    def build(args):
        import logging

        from . import stock_create_loss

        loss = stock_create_loss()(args)
        logging.info(f"Loss: clip (OpenCLIP's own selection): {type(loss).__name__}")
        return loss
