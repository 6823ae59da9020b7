"""SESS: its home is the method plugin ``camkit_plugins.methods.sess`` (methods ``"<method>+sess"``); this
module keeps the function and its building blocks importable from ``camkit.sess``."""

from camkit_plugins.methods.sess import (
    SessSettings,
    SlidingWindows,
    explain_sess,
    gaussian_smooth,
    resize_operator,
    scaled_size,
    window_starts,
)

__all__ = ["SessSettings", "SlidingWindows", "explain_sess", "gaussian_smooth", "resize_operator", "scaled_size",
           "window_starts"]
