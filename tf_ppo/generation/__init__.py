"""Generation: sampling (Philox noise, temperature, top-k / top-p) and the KV-cached decoding loop."""
