"""Benchmarks of KHaR against MMSA's baselines (Tables 1-3, Figure 4, speed); see README.md."""
