"""qin-lightning: QIN (Quadratic Interest Network) for multimodal CTR prediction, in PyTorch Lightning."""

__version__ = "0.1.0"
