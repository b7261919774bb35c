"""The benchmark suite (``forgetkit bench``): grids of methods × forget splits × seeds on a prepared run or
the user's files, robustness attacks per cell, a leaderboard (Markdown, CSV, JSON), plots and an HTML report.

``config`` (what to run), ``sources`` (prepared run or user files), ``runner`` (the cached grid),
``attacks`` (quantization, relearning, prompt attack), ``leaderboard``, ``plots``, ``report``, ``command``.
"""
