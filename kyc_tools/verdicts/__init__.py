"""kyc-edge tools: verdicts."""
