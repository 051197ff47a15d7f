"""Operations: Prometheus metrics made from the hub's counters, and log set-up."""
