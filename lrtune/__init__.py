"""lrtune: learning-rate range finder and LR-schedule tuning for PyTorch."""

__version__ = "0.1.0"
