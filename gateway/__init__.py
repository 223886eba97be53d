"""order-gateway: a resilient gateway in front of the order, payment and availability backends."""
