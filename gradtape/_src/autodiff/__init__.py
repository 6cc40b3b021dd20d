"""Reverse-mode machinery: per-thread tape state, recording, the reverse pass, fusion, the
GradientTape API, custom gradients and the explanations of missing gradients."""
