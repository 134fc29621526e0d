"""KHaR's network, one module per part of §3.3-3.6."""
