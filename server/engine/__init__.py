"""The subscription engine: one read per channel per due tick, fanned out to viewers."""
