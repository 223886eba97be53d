"""Simulators of the order, payment and availability backends, with fault injection."""
