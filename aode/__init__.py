"""AoDE: Average of Domain Experts, continual learning for speech recognition.

Plantinga, Yoo, Girma, Dhir, "Parameter Averaging is All You Need to Prevent Forgetting",
IEEE SLT 2024. One module per concern; see docs/architecture.md.
"""

__version__ = "0.1.0"
