"""The data-making stages: critique-and-revise (critique), the AI judge (judge, diagnostics,
length_control), the two commands that drive them over run folders (generate, label), best-of-N
sampling (bon), and their settings (config)."""
