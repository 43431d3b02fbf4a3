"""Runnable demos (``taylorc demo NAME``): real PDEs solved with taylorc, checked against known solutions."""
