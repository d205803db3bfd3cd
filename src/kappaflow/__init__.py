"""kappaflow: autoscaling streaming analytics in the Kappa architecture."""

__version__ = "0.1.0"
