"""fcgan-studies: hyperparameter studies of fully connected GANs, tracked in MLflow."""

__version__ = "0.1.0"
