"""raystudy: Ray-distributed studies of loss-landscape geometry."""
__version__ = "0.1.0"
