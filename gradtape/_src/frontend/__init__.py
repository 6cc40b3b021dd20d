"""The user-facing autodiff API on top of the ops: GradientTape, custom_gradient, and the
explanations of missing gradients."""
