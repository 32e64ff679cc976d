"""kyc-edge tools: bench."""
